#!/usr/bin/env python3
"""Recurrent layers: kiln against ONNX Runtime on speech-sized LSTM and GRU stacks.

The speed bar of recurrent support: 2 layers, input 80, hidden 256, 200 steps, batch 1, as
``compiler.examples.recurrent_stack`` builds them (PyTorch's export layout), bidirectional
and forward-only. Each model: compile for the host, check agreement with ONNX Runtime,
time both at the same thread count in alternating rounds (each runner's p50 over ``--runs``
calls, median over ``--rounds``). Writes JSON, prints a Markdown table.

    python scripts/bench_recurrent.py --threads 2 --out scripts/results/bench_recurrent.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from compiler.benchmark import alternating_calls_p50_ms, onnxruntime_reference, write_result
from compiler.build import compile_model
from compiler.examples import recurrent_stack
from compiler.reference import max_abs_diff
from compiler.runtime import load

CASES = {
    "lstm_bidirectional": dict(cell="LSTM", bidirectional=True),
    "gru_bidirectional": dict(cell="GRU", bidirectional=True),
    "lstm_forward": dict(cell="LSTM", bidirectional=False),
    "gru_forward": dict(cell="GRU", bidirectional=False),
}


def bench_case(name: str, threads: int, runs: int, rounds: int, workdir: Path) -> dict:
    model = recurrent_stack(**CASES[name], layers=2, input_size=80, hidden=256, steps=200, batch=1)
    lib_path = workdir / f"{name}.so"
    t0 = time.perf_counter()
    compile_model(model, lib_path, target="host")
    compile_s = time.perf_counter() - t0
    lib = load(lib_path, threads=threads)
    inputs = lib.random_inputs(seed=0)
    ref = onnxruntime_reference(model, lib.threads)
    diff, rel = max_abs_diff(lib.run(inputs), ref.run(inputs))
    p50 = alternating_calls_p50_ms({"kiln": lib.timed_call(inputs), "onnxruntime": ref.timed_call(inputs)},
                                   rounds=rounds, runs=runs)
    row = {"model": name, **CASES[name], "layers": 2, "input": 80, "hidden": 256, "steps": 200, "batch": 1,
           "compile_s": round(compile_s, 2), "max_abs_diff": diff, "max_rel_diff": rel,
           "kiln_p50_ms": round(p50["kiln"], 3), "onnxruntime_p50_ms": round(p50["onnxruntime"], 3),
           "ratio": round(p50["kiln"] / p50["onnxruntime"], 2), "runs_per_round": runs, "rounds": rounds}
    print(f"{name}: kiln {p50['kiln']:.2f} ms, onnxruntime {p50['onnxruntime']:.2f} ms, ratio {row['ratio']}x, "
          f"rel diff {rel:.2g}", file=sys.stderr)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(CASES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default="bench_recurrent.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kiln-rnn-") as tmp:
        rows = [bench_case(n, args.threads, args.runs, args.rounds, Path(tmp)) for n in args.models]
    write_result(args.out, "bench_recurrent", rows, {"threads": args.threads})
    print("| model | kiln p50 (ms) | ONNX Runtime p50 (ms) | kiln / ORT | max rel diff |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['model']} | {r['kiln_p50_ms']:.2f} | {r['onnxruntime_p50_ms']:.2f} | {r['ratio']:.2f}x | "
              f"{r['max_rel_diff']:.1e} |")


if __name__ == "__main__":
    main()
