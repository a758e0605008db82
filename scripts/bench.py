#!/usr/bin/env python3
"""Benchmark kiln against ONNX Runtime on the light zoo, side by side in one process.

For each model: compile for the host (timed), check agreement with ONNX Runtime on the
same input, then time both at the same thread count in alternating rounds (kiln, ORT,
kiln, …; each runner's p50 over ``--runs`` calls, the median over ``--rounds`` rounds), so a
slow moment of this shared machine hits both. Writes a JSON file and prints a Markdown
table for the README.

    python scripts/bench.py --threads 2 --out bench.json [--models squeezenet resnet50] [--db DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from compiler.benchmark import alternating_calls_p50_ms, geometric_mean, onnxruntime_reference, write_result
from compiler.build import compile_model
from compiler.examples import LIGHT_ZOO_BENCH, example_model
from compiler.reference import max_abs_diff
from compiler.runtime import load
from targets.registry import resolve_target


def bench_model(name: str, threads: int, runs: int, rounds: int, db: str | None, workdir: Path,
                layout: str | None = None) -> dict:
    model = example_model(name)
    lib = workdir / f"{name}.so"
    t0 = time.perf_counter()
    report = compile_model(model, lib, target="host", db=db, conv_layout=layout)
    compile_s = time.perf_counter() - t0
    m = load(lib, threads=threads)
    inputs = m.random_inputs(seed=0)
    ref = onnxruntime_reference(model, m.threads)
    diff, rel = max_abs_diff(m.run(inputs), ref.run(inputs))
    p50 = alternating_calls_p50_ms({"kiln": m.timed_call(inputs), "onnxruntime": ref.timed_call(inputs)},
                                   rounds=rounds, runs=runs)
    row = {
        "model": name,
        "kernels": report.kernels,
        "layout": report.conv_layout or layout or resolve_target("host").conv_layout,
        "layout_p50_ms": report.layout_p50_ms,
        "compile_s": round(compile_s, 2),
        "kiln_p50_ms": round(p50["kiln"], 3),
        "onnxruntime_p50_ms": round(p50["onnxruntime"], 3),
        "ratio": round(p50["kiln"] / p50["onnxruntime"], 2),
        "max_abs_diff": diff,
        "max_rel_diff": rel,
        "runs_per_round": runs,
        "rounds": rounds,
    }
    print(f"{name}: kiln {p50['kiln']:.2f} ms, onnxruntime {p50['onnxruntime']:.2f} ms, "
          f"ratio {row['ratio']}x, rel diff {rel:.2g}, compile {compile_s:.1f} s", file=sys.stderr)
    return row


def markdown(rows: list[dict], geomean: float) -> str:
    lines = ["| model | layout | kernels | compile (s) | kiln p50 (ms) | ONNX Runtime p50 (ms) | kiln / ORT | max rel diff |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['layout']} | {r['kernels']} | {r['compile_s']} | {r['kiln_p50_ms']:.2f} | "
                     f"{r['onnxruntime_p50_ms']:.2f} | {r['ratio']:.2f}x | {r['max_rel_diff']:.1e} |")
    lines.append(f"| **geometric mean** | | | | | | **{geomean:.2f}x** | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=LIGHT_ZOO_BENCH)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10, help="timed calls per runner per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (kiln, ORT, kiln, …)")
    parser.add_argument("--db", help="tuning database to apply")
    parser.add_argument("--layout", choices=["NCHW", "NHWC", "NCHWc", "auto"],
                        help="conv layout between kernels (auto: each model keeps the faster; default: the preset's)")
    parser.add_argument("--out", default="bench.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:
        rows = [bench_model(n, args.threads, args.runs, args.rounds, args.db, Path(tmp), args.layout)
                for n in args.models]
    geomean = geometric_mean(r["ratio"] for r in rows)
    write_result(args.out, "bench", rows, {"threads": args.threads, "db": args.db, "layout": args.layout,
                                           "geomean_ratio": round(geomean, 2)})
    print(markdown(rows, geomean))


if __name__ == "__main__":
    main()
