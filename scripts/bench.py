#!/usr/bin/env python3
"""Benchmark kiln against ONNX Runtime on the light zoo, side by side in one process.

For each model: compile for the host (timed), check agreement with ONNX Runtime on the
same input, then time both at the same thread count (median of repeats). Writes a JSON
file and prints a Markdown table for the README.

    python scripts/bench.py --threads 2 --out bench.json [--models squeezenet resnet50] [--db DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from compiler.build import compile_model
from compiler.examples import LIGHT_ZOO_BENCH, example_model
from compiler.reference import OnnxRuntimeReference, max_abs_diff
from compiler.runtime import load
from targets.registry import resolve_target


def bench_model(name: str, threads: int, runs: int, ref_runs: int, db: str | None, workdir: Path,
                layout: str | None = None) -> dict:
    model = example_model(name)
    lib = workdir / f"{name}.so"
    t0 = time.perf_counter()
    report = compile_model(model, lib, target="host", db=db, conv_layout=layout)
    compile_s = time.perf_counter() - t0
    m = load(lib, threads=threads)
    inputs = m.random_inputs(seed=0)
    ref = OnnxRuntimeReference(model, m.threads)
    diff, rel = max_abs_diff(m.run(inputs), ref.run(inputs))
    ours = m.benchmark(runs, inputs, warmup=1)
    theirs = ref.benchmark(inputs, ref_runs)
    row = {
        "model": name,
        "kernels": report.kernels,
        "layout": report.conv_layout or layout or resolve_target("host").conv_layout,
        "layout_p50_ms": report.layout_p50_ms,
        "compile_s": round(compile_s, 2),
        "kiln_p50_ms": round(ours.p50_ms, 3),
        "onnxruntime_p50_ms": round(theirs.p50_ms, 3),
        "ratio": round(ours.p50_ms / theirs.p50_ms, 2),
        "max_abs_diff": diff,
        "max_rel_diff": rel,
        "kiln_runs": ours.runs,
        "onnxruntime_runs": theirs.runs,
    }
    print(f"{name}: kiln {ours.p50_ms:.2f} ms, onnxruntime {theirs.p50_ms:.2f} ms, "
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
    parser.add_argument("--runs", type=int, default=10, help="timed kiln runs per model")
    parser.add_argument("--ref-runs", type=int, default=50, help="timed ONNX Runtime runs per model")
    parser.add_argument("--db", help="tuning database to apply")
    parser.add_argument("--layout", choices=["NCHW", "NHWC", "auto"],
                        help="conv layout between kernels (auto: each model keeps the faster; default: the preset's)")
    parser.add_argument("--out", default="bench.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:
        rows = [bench_model(n, args.threads, args.runs, args.ref_runs, args.db, Path(tmp), args.layout)
                for n in args.models]
    geomean = float(np.exp(np.mean(np.log([r["ratio"] for r in rows]))))
    result = {
        "machine": {"cpu": _cpu_name(), "cores": len(__import__("os").sched_getaffinity(0)),
                    "python": platform.python_version()},
        "threads": args.threads,
        "db": args.db,
        "layout": args.layout,
        "rows": rows,
        "geomean_ratio": round(geomean, 2),
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(markdown(rows, geomean))


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
