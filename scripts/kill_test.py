#!/usr/bin/env python3
"""Tuning durability: SIGKILL ``kiln tune`` at random moments, check after each kill that no record is lost.

    python scripts/kill_test.py --kills 20 --out kill_test.json

Uses a small MatMul+Softmax model. After every kill: every complete line written
before it is still there, unchanged, and parses; at the end one more run resumes from
the records (they count toward ``--trials``).
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx

from compiler.benchmark import write_result
from compiler.testing.tuning import complete_lines, small_model
from schedules.database import DurableDatabase
from compiler.tune import TuneOptions, tune_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-delay", type=float, default=25.0,
                        help="each kill comes 0.5 s to this many seconds after the start (a smoke run: a few)")
    parser.add_argument("--out", default="kill_test.json")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="kiln-kill-") as tmp:
        model, db = Path(tmp) / "small.onnx", Path(tmp) / "db"
        onnx.save(small_model(), model)
        survived: list[str] = []
        lost = unreadable = 0
        history = []
        for kill in range(args.kills):
            proc = subprocess.Popen([sys.executable, "-m", "compiler", "tune", str(model), "--db", str(db),
                                     "--trials", "100000", "--trials-per-iter", "4", "--population", "64",
                                     "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            delay = rng.uniform(0.5, max(0.5, args.max_delay))  # from mid start-up to mid-batch
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            lines = complete_lines(db)
            lost += sum(1 for a, b in zip(survived, lines) if a != b) + max(0, len(survived) - len(lines))
            try:
                parsed = len(DurableDatabase(db)) if db.exists() else 0
            except Exception as err:  # the point of the test: count, don't stop
                parsed, unreadable = -1, unreadable + 1
                print(f"kill {kill}: database unreadable: {err}", file=sys.stderr)
            history.append({"kill": kill, "after_s": round(delay, 1), "records": len(lines), "parsed": parsed})
            print(json.dumps(history[-1]), file=sys.stderr)
            survived = lines
        report = tune_model(model, db, TuneOptions(trials=len(survived) + 4, trials_per_iter=4, population=64,
                                                    progress=False))
    summary = {"kills": args.kills, "max_delay_s": args.max_delay, "records_lost": lost,
               "unreadable_after_kill": unreadable,
               "records_at_end": len(survived), "resumed_trials_before": report.trials_before,
               "resume_counts_all_records": report.trials_before == len(survived)}
    write_result(args.out, "kill_test", history, summary)
    print(json.dumps(summary, indent=2))
    sys.exit(0 if lost == 0 and unreadable == 0 and summary["resume_counts_all_records"] else 1)


if __name__ == "__main__":
    main()
