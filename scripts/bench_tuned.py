#!/usr/bin/env python3
"""Tuned vs untuned vs ONNX Runtime, in one process, timed in alternating rounds.

Compiles the model twice (default schedules only, and with the tuning records of ``--db``),
then times the two libraries and ONNX Runtime round by round (A, B, ORT, A, B, ORT, …) so
that a noisy moment on a shared machine hits all three alike. Reports the median over rounds
of each one's p50, the tuned/untuned ratio (the "a partially tuned model is never slower" check) and the ratios
to ONNX Runtime. Writes JSON. With ``--int8-plan`` (a ``kiln quantize`` plan, the one
``kiln tune --int8-plan`` tuned) both builds are INT8 from that plan; ONNX Runtime runs the
float32 model.

    python scripts/bench_tuned.py squeezenet.onnx --db tuning/ --threads 2 --rounds 30 \
        --tuned-with "kiln tune --budget 10m" --out result.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from compiler.benchmark import alternating_calls_p50_ms, onnxruntime_reference, write_result
from compiler.build import compile_model
from compiler.reference import max_abs_diff
from compiler.runtime import load


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--db", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--runs", type=int, default=10, help="timed calls per library per round")
    parser.add_argument("--tuned-with", default=None,
                        help="how --db was tuned, kept in the result (e.g. 'kiln tune --budget 10m --space kiln')")
    parser.add_argument("--int8-plan", default=None, help="an INT8 plan (.kq): compare INT8 builds from it")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    int8 = {"precision": "int8", "int8_plan": args.int8_plan} if args.int8_plan else {}
    with tempfile.TemporaryDirectory(prefix="kiln-bench-tuned-") as tmp:
        untuned_so, tuned_so = Path(tmp) / "untuned.so", Path(tmp) / "tuned.so"
        compile_model(args.model, untuned_so, **int8)
        report = compile_model(args.model, tuned_so, db=args.db, **int8)
        untuned, tuned = load(untuned_so, threads=args.threads), load(tuned_so, threads=args.threads)
        ref = onnxruntime_reference(args.model, untuned.threads)
        inputs = untuned.random_inputs(seed=0)
        _, rel = max_abs_diff(tuned.run(inputs), ref.run(inputs))
        _, rel_untuned = max_abs_diff(tuned.run(inputs), untuned.run(inputs))
        calls = {"untuned": untuned.timed_call(inputs), "tuned": tuned.timed_call(inputs),
                 "onnxruntime": ref.timed_call(inputs)}
        p50 = alternating_calls_p50_ms(calls, rounds=args.rounds, runs=args.runs)
    row = {
        "model": Path(args.model).stem, "precision": "int8" if int8 else "fp32", "db": str(args.db),
        "tuned_with": args.tuned_with, "threads": untuned.threads,
        "tuned_kernels": report.tuned_kernels, "kernels": report.kernels,
        "untuned_p50_ms": round(p50["untuned"], 3), "tuned_p50_ms": round(p50["tuned"], 3),
        "onnxruntime_p50_ms": round(p50["onnxruntime"], 3),
        "tuned_vs_untuned": round(p50["tuned"] / p50["untuned"], 3),
        "tuned_vs_onnxruntime": round(p50["tuned"] / p50["onnxruntime"], 3),
        "untuned_vs_onnxruntime": round(p50["untuned"] / p50["onnxruntime"], 3),
        "tuned_max_rel_diff": rel, "tuned_vs_untuned_max_rel_diff": rel_untuned, "runs_each": args.rounds * args.runs,
    }
    write_result(args.out, "bench_tuned", [row])
    print(json.dumps(row, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
