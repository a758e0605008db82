#!/usr/bin/env python3
"""NCHW, NHWC and blocked NCHWc convolutions (``--layout``) on the light zoo, one process, alternating rounds.

For each model: compile it once per layout for the host (the importer's NCHW, converted to
NHWC, and channel-blocked NCHWc; ``compiler/passes/convert_conv_layout.py``), check each against
ONNX Runtime on the same input, then time the libraries in alternating rounds (NCHW, NHWC,
NCHWc, NCHW, …) at the same thread count. Writes JSON and prints a Markdown table.
``--compile-only`` builds the libraries into ``--workdir`` (e.g. while the machine is busy);
a later run with the same ``--workdir`` reuses them and only times.

    python scripts/layout_report.py --threads 2 --rounds 5 --out scripts/results/layout_report.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from compiler.benchmark import alternating_p50_ms, onnxruntime_reference, write_result
from compiler.build import CompileOptions, compile_model
from compiler.examples import LIGHT_ZOO_BENCH, example_model
from compiler.reference import max_abs_diff
from compiler.runtime import load
from targets.registry import CONV_LAYOUTS


def build(name: str, workdir: Path) -> dict[str, float]:
    """Compile ``name`` in every layout into ``workdir`` (kept if already there); compile seconds."""
    seconds = {}
    for layout in CONV_LAYOUTS:
        lib = workdir / f"{name}_{layout}.so"
        if not lib.exists():
            t0 = time.perf_counter()
            compile_model(example_model(name), lib, CompileOptions(conv_layout=layout))
            seconds[layout] = round(time.perf_counter() - t0, 1)
            print(f"{name} {layout}: compiled in {seconds[layout]} s", file=sys.stderr)
    return seconds


def compare(name: str, workdir: Path, threads: int, rounds: int, runs: int) -> dict:
    libs = {layout: load(workdir / f"{name}_{layout}.so", threads=threads) for layout in CONV_LAYOUTS}
    inputs = libs["NCHW"].random_inputs(seed=0)
    reference = onnxruntime_reference(example_model(name), threads).run(inputs)
    row: dict = {"model": name}
    for layout, lib in libs.items():
        row[f"{layout}_max_rel_diff"] = max_abs_diff(lib.run(inputs), reference)[1]
    for layout, ms in alternating_p50_ms(libs, inputs, rounds, runs).items():
        row[f"{layout}_p50_ms"] = round(ms, 3)
    for layout in CONV_LAYOUTS[1:]:
        row[f"{layout}_vs_NCHW"] = round(row[f"{layout}_p50_ms"] / row["NCHW_p50_ms"], 3)
    print(f"{name}: {json.dumps(row)}", file=sys.stderr)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(LIGHT_ZOO_BENCH))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=10, help="timed calls per library per round")
    parser.add_argument("--workdir", default="layout_libs")
    parser.add_argument("--compile-only", action="store_true")
    parser.add_argument("--out", default="layout_report.json")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    names = args.models.split(",")
    for name in names:
        build(name, workdir)
    if args.compile_only:
        return
    rows = [compare(name, workdir, args.threads, args.rounds, args.runs) for name in names]
    write_result(args.out, "layout_report", rows, {"threads": args.threads, "rounds": args.rounds, "runs": args.runs})
    others = CONV_LAYOUTS[1:]
    print("| model | " + " | ".join(f"{layout} p50 (ms)" for layout in CONV_LAYOUTS) + " | "
          + " | ".join(f"{layout} / NCHW" for layout in others) + " | max rel diff |")
    print("| --- |" + " ---: |" * (len(CONV_LAYOUTS) + len(others)) + " --- |")
    for r in rows:
        print(f"| {r['model']} | " + " | ".join(f"{r[f'{layout}_p50_ms']:.2f}" for layout in CONV_LAYOUTS) + " | "
              + " | ".join(f"{r[f'{layout}_vs_NCHW']:.2f}" for layout in others) + " | "
              + f"{max(r[f'{layout}_max_rel_diff'] for layout in CONV_LAYOUTS):.1e} |")


if __name__ == "__main__":
    main()
