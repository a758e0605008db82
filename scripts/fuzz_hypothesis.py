#!/usr/bin/env python3
"""Property-based fuzzing of kiln's ONNX import with hypothesis; thousands of cases, crash-isolated.

Cases come from ``compiler/testing/onnx_strategies.py`` (random small graphs of supported and
unsupported operators and the built-in ``tiny`` model; dropped initializers, duplicate
names, unknown domains, huge and mismatched dims, wrong attribute types, external data,
names with line breaks; truncated, appended, inserted or flipped bytes). Only the
import/validate step runs (``compiler.frontend.import_onnx``), no building.

A worker subprocess runs hypothesis (generate phase only, seeded) under a memory limit
and logs each case before and after importing it. If the worker dies (segfault, memory)
or a case takes longer than ``--timeout``, the parent records ``crash``/``timeout``, keeps
that case's bytes, and starts a new worker with the next seed for the remaining count.

    python scripts/fuzz_hypothesis.py --examples 5000 --seed 0 --out scripts/results/fuzz_hypothesis.json

Outcomes: ``imported``, ``kiln_error:<Type>`` (one-line message), and the bugs:
``bad_message:<Type>`` (a kiln error whose message is empty or not one line),
``other_error:<Type>``, ``crash``, ``timeout``. Exit code 1 if any case is a bug.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

BAD_OUTCOMES = ("bad_message", "other_error", "crash", "timeout")


def worker(seed: int, count: int, log_path: Path, case_path: Path, memory_gb: float) -> None:
    """Run ``count`` hypothesis cases from ``seed``; one JSON line per started and finished case."""
    import resource

    limit = int(memory_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # a runaway allocation fails here, not the machine
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    from compiler.testing.onnx_strategies import FuzzCase, fuzz_cases, import_outcome

    work_dir = Path(tempfile.mkdtemp(prefix="kiln-hfuzz-"))
    with open(log_path, "a", encoding="utf-8") as log:

        @hypothesis_seed(seed)
        @settings(max_examples=count, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=fuzz_cases())
        def one(case: FuzzCase) -> None:
            case_path.write_text(json.dumps({"data": base64.b64encode(case.data).decode("ascii"),
                                             "input_shapes": case.input_shapes, "mutations": case.mutations,
                                             "as_proto": case.as_proto}))
            log.write(json.dumps({"started": True}) + "\n")
            log.flush()
            start = time.monotonic()
            outcome = import_outcome(case, work_dir)
            log.write(json.dumps({"outcome": outcome, "mutations": case.mutations,
                                  "seconds": round(time.monotonic() - start, 3)}) + "\n")
            log.flush()

        one()


def _read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:  # the worker died mid-line
            break
    return entries


def run(examples: int, seed: int, timeout: float, memory_gb: float, cases_dir: Path) -> dict:
    finished: list[dict] = []
    bad: list[dict] = []
    workers = 0
    start_time = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kiln-hfuzz-run-") as tmp:
        case_path = Path(tmp) / "current_case.json"
        while len(finished) < examples:
            log_path = Path(tmp) / f"worker{workers}.jsonl"
            stderr_path = Path(tmp) / f"worker{workers}.stderr"  # TVM's warnings, a crash's backtrace
            remaining = examples - len(finished)
            worker_seed = seed + workers
            workers += 1
            with open(stderr_path, "wb") as stderr:
                proc = subprocess.Popen([sys.executable, __file__, "--worker", str(worker_seed), str(remaining),
                                         str(log_path), str(case_path), str(memory_gb)], stderr=stderr)
            last_change, seen = time.monotonic(), -1
            while proc.poll() is None:
                time.sleep(0.5)
                size = log_path.stat().st_size if log_path.exists() else 0
                if size != seen:
                    seen, last_change = size, time.monotonic()
                elif time.monotonic() - last_change > timeout:
                    proc.kill()
                    proc.wait()
            entries = _read_log(log_path)
            done = [e for e in entries if "outcome" in e]
            finished.extend(done)
            for entry in done:
                if entry["outcome"].startswith(BAD_OUTCOMES):
                    bad.append(entry)
            in_flight = entries and "started" in entries[-1]
            if in_flight or (proc.returncode != 0 and not done):
                outcome = "timeout" if proc.returncode == -9 else f"crash (exit {proc.returncode})"
                saved = cases_dir / f"case_seed{worker_seed}_{len(done)}.json"
                cases_dir.mkdir(parents=True, exist_ok=True)
                if case_path.exists():
                    saved.write_text(case_path.read_text())
                entry = {"outcome": outcome, "case_file": str(saved), "worker_seed": worker_seed,
                         "stderr_tail": stderr_path.read_text(errors="replace")[-2000:]}
                finished.append(entry)
                bad.append(entry)
            elif proc.returncode != 0:
                raise SystemExit(f"worker (seed {worker_seed}) failed outside a case, exit {proc.returncode}:\n"
                                 + stderr_path.read_text(errors="replace")[-3000:])
            print(f"{len(finished)}/{examples} cases, {len(bad)} bad, {time.monotonic() - start_time:.0f} s",
                  flush=True)
    counts = Counter(e["outcome"].split(":")[0] if e["outcome"].startswith(("other_error", "crash"))
                     else e["outcome"] for e in finished)
    by_mutation: dict[str, Counter] = defaultdict(Counter)
    for entry in finished:
        for mutation in set(entry.get("mutations", ())):
            by_mutation[mutation][entry["outcome"].split(":")[0]] += 1
    return {
        "examples": len(finished), "seed": seed, "workers": workers, "timeout_s": timeout,
        "memory_limit_gb": memory_gb, "seconds": round(time.monotonic() - start_time, 1),
        "slowest_case_s": max((e.get("seconds", 0.0) for e in finished), default=0.0),
        "outcomes": dict(counts.most_common()),
        "cases_with_mutation": {m: dict(c.most_common()) for m, c in sorted(by_mutation.items())},
        "bad_cases": bad,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5]), float(sys.argv[6]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds one case may take")
    parser.add_argument("--memory-gb", type=float, default=4.0, help="address-space limit of the worker")
    parser.add_argument("--out", default="fuzz_hypothesis.json")
    parser.add_argument("--cases-dir", default=None, help="where crashing/hanging cases are kept "
                        "(default: next to --out)")
    args = parser.parse_args()
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    out = Path(args.out)
    cases_dir = Path(args.cases_dir) if args.cases_dir else out.with_name(out.stem + "_cases")
    from compiler.benchmark import write_result

    summary = run(args.examples, args.seed, args.timeout, args.memory_gb, cases_dir)
    rows = [{"outcome": outcome, "cases": count} for outcome, count in summary["outcomes"].items()]
    write_result(out, "fuzz_hypothesis", rows, {k: v for k, v in summary.items() if k != "outcomes"})
    print(json.dumps({k: summary[k] for k in ("examples", "seconds", "workers", "outcomes")}, indent=2))
    for entry in summary["bad_cases"][:20]:
        print(f"BAD {json.dumps({k: v for k, v in entry.items() if k != 'stderr_tail'})}")
    sys.exit(1 if summary["bad_cases"] else 0)


if __name__ == "__main__":
    main()
