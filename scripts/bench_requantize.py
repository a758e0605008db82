#!/usr/bin/env python3
"""INT8 requantization, float scale vs integer multiplier and shift, on built-in example models.

For each model: one INT8 build with ``requantize="float"`` (kiln's default) and one with
``"fixed_point"`` (``compiler/passes/fixed_point_requantize.py``), the same seeded
calibration (uniform [0, 1) inputs, ``compiler.testing.int8_data.zoo_case``, as
``scripts/int8_report.py`` uses for the zoo models);
both libraries timed in one process, alternating rounds in both orders (p50 per round,
median of rounds), and their outputs compared on seeded inputs. Writes JSON and prints a
Markdown table.

    python scripts/bench_requantize.py --models squeezenet,resnet50 --out scripts/results/bench_requantize.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from compiler.benchmark import both_orders_p50_ms, write_result
from compiler.build import CompileOptions, compile_model
from compiler.quantization import Int8Options
from compiler.runtime import load
from compiler.testing.int8_data import zoo_case

FORMS = ("float", "fixed_point")


def bench_model(name: str, workdir: Path, rounds: int, threads: int) -> dict:
    """Build ``name`` both ways, time and compare them (see the module docstring)."""
    case = zoo_case(name, workdir, 32)
    input_name = case.input_name
    libs = {}
    for form in FORMS:
        lib = workdir / f"{name}_{form}.so"
        compile_model(case.onnx_path, lib, CompileOptions(input_shapes={input_name: case.input_shape}, precision="int8",
                                                          int8=Int8Options(calibration=case.calibration, requantize=form)))
        libs[form] = load(lib, threads=threads)
    inputs = [{input_name: case.test_inputs[i:i + 1]} for i in range(8)]
    diffs, same_top1 = [], 0
    for x in inputs:
        a, b = (next(iter(libs[f].run(x).values())) for f in FORMS)
        diffs.append(float(np.abs(a - b).max()))
        same_top1 += int(a.reshape(-1).argmax() == b.reshape(-1).argmax())
    p50 = both_orders_p50_ms({form: lib.timed_call(inputs[0]) for form, lib in libs.items()}, rounds=rounds)
    return {"float_ms": round(p50["float"], 3), "fixed_point_ms": round(p50["fixed_point"], 3),
            "fixed_point_vs_float": round(p50["fixed_point"] / p50["float"], 3),
            "max_abs_diff": max(diffs), "same_top1": f"{same_top1}/{len(inputs)}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="squeezenet,resnet50")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds per order")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench_requantize.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="kiln-requantize-") as tmp:
        for name in args.models.split(","):
            rows.append({"model": name, **bench_model(name, Path(tmp), args.rounds, args.threads)})
            print(f"{name}: {rows[-1]}", file=sys.stderr)
    write_result(args.out, "bench_requantize", rows, {"threads": args.threads})
    print("| model | float ms | fixed-point ms | fixed / float | max abs diff | same top-1 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['model']} | {r['float_ms']} | {r['fixed_point_ms']} | {r['fixed_point_vs_float']} | "
              f"{r['max_abs_diff']:.2g} | {r['same_top1']} |")


if __name__ == "__main__":
    main()
