#!/usr/bin/env python3
"""Variable-length inputs: one library for a range of sizes against libraries compiled for
each exact size, and ONNX Runtime.

Cases: SqueezeNet with a symbolic batch (``?x3x224x224`` … here ``1..8``), the small CNN
with a symbolic width (``1x3x32x16..128``), the 2-layer bidirectional LSTM speech stack
with a symbolic number of steps (``16..400x1x80``) and a trained OCR recognizer (ddddocr's
CNN + BiLSTM, from its PyPI wheel: ``scripts/prepare_real_models.sh``) with a symbolic image
width (``1x1x64x64..512``). For each size (a middle one and the largest, plus
the smallest): compare with ONNX Runtime, compile the exact-size library (with and without
kiln's fusion rewrites, which symbolic builds skip), time them, the symbolic library and ONNX
Runtime in alternating rounds at the same thread count.
Writes JSON, prints a table.

    python scripts/bench_symbolic.py --threads 2 --out scripts/results/bench_symbolic.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from compiler.benchmark import alternating_calls_p50_ms, onnxruntime_reference, write_result
from compiler.build import compile_model
from compiler.examples import example_model
from compiler.frontend import parse_input_shapes
from compiler.real_models import REAL_MODELS, real_model_path
from compiler.reference import max_abs_diff
from compiler.runtime import load

CASES = {  # name: (example, --input-shape dims, symbolic axis, sizes timed)
    "squeezenet_batch": ("squeezenet", "1..8x3x224x224", 0, [1, 3, 8]),
    "tiny_width": ("tiny", "1x3x32x16..128", 3, [16, 45, 128]),
    "lstm_steps": ("lstm", "16..400x1x80", 0, [16, 80, 400]),
    "ddddocr_width": ("ddddocr", "1x1x64x64..512", 3, [64, 256, 512]),  # a real model (compiler.real_models)
}


def dynamic_onnx(name: str, dims: str) -> onnx.ModelProto:
    """The example (or real model) with its symbolic axes (and its outputs) marked dynamic, for ONNX Runtime."""
    model = onnx.load(real_model_path(name)) if name in REAL_MODELS else example_model(name)
    for axis, d in enumerate(dims.split("x")):
        if not d.isdigit():
            dim = model.graph.input[0].type.tensor_type.shape.dim[axis]
            dim.Clear()
            dim.dim_param = f"d{axis}"
    for out in model.graph.output:
        for dim in out.type.tensor_type.shape.dim:
            dim.Clear()
    return model


def bench(case: str, threads: int, runs: int, rounds: int, workdir: Path, quick: bool = False) -> list[dict]:
    name, dims, axis, sizes = CASES[case]
    sizes = sizes[:1] if quick else sizes
    model = dynamic_onnx(name, dims)
    inp = model.graph.input[0].name
    t0 = time.perf_counter()
    compile_model(model, workdir / "sym.so", target="host", input_shapes=parse_input_shapes([f"{inp}:{dims}"]))
    compile_s = time.perf_counter() - t0
    lib = load(workdir / "sym.so", threads=threads)
    ref = onnxruntime_reference(model, lib.threads)
    rows = []
    for size in sizes:
        shape = list(lib.inputs[0].example_shape())
        shape[axis] = size
        x = {inp: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
        _, rel = max_abs_diff(lib.run(x), ref.run(x))
        exact_path = workdir / f"exact_{size}.so"
        compile_model(model, exact_path, target="host", input_shapes={inp: tuple(shape)})
        exact = load(exact_path, threads=threads)
        # the same without kiln's fusion rewrites, which symbolic builds skip: where the gap comes from
        compile_model(model, workdir / f"exact_nofusion_{size}.so", target="host", input_shapes={inp: tuple(shape)},
                      fusion=False)
        exact_nofusion = load(workdir / f"exact_nofusion_{size}.so", threads=threads)
        p50 = alternating_calls_p50_ms({"symbolic": lib.timed_call(x), "exact": exact.timed_call(x),
                                        "exact_nofusion": exact_nofusion.timed_call(x),
                                        "onnxruntime": ref.timed_call(x)}, rounds=rounds, runs=runs)
        row = {"case": case, "input_shape": dims, "size": size, "symbolic_compile_s": round(compile_s, 1),
               "max_rel_diff": rel, **{f"{k}_p50_ms": round(v, 3) for k, v in p50.items()},
               "symbolic_vs_exact": round(p50["symbolic"] / p50["exact"], 2),
               "symbolic_vs_exact_nofusion": round(p50["symbolic"] / p50["exact_nofusion"], 2),
               "symbolic_vs_onnxruntime": round(p50["symbolic"] / p50["onnxruntime"], 2)}
        print(f"{case} @ {size}: {row}", file=sys.stderr)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="time the smallest size of each case only")
    parser.add_argument("--out", default="bench_symbolic.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kiln-sym-") as tmp:
        rows = [r for c in args.cases for r in bench(c, args.threads, args.runs, args.rounds, Path(tmp), args.quick)]
    write_result(args.out, "bench_symbolic", rows, {"threads": args.threads, "quick": args.quick})
    print("| case | --input-shape | size | symbolic (ms) | exact size (ms) | exact, no kiln fusion (ms) | ORT (ms) | "
          "symbolic / exact | symbolic / exact without fusion | max rel diff |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['case']} | `{r['input_shape']}` | {r['size']} | {r['symbolic_p50_ms']:.2f} | {r['exact_p50_ms']:.2f} | "
              f"{r['exact_nofusion_p50_ms']:.2f} | {r['onnxruntime_p50_ms']:.2f} | {r['symbolic_vs_exact']:.2f}x | "
              f"{r['symbolic_vs_exact_nofusion']:.2f}x | {r['max_rel_diff']:.1e} |")


if __name__ == "__main__":
    main()
