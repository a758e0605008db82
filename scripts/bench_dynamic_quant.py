#!/usr/bin/env python3
"""Dynamically quantized models (ONNX Runtime's ``quantize_dynamic``): kiln's build of the
quantized file against kiln's FP32 build of the original and ONNX Runtime on both.

Models: a 4-block MLP (128 tokens, 768 → 3072 → 768, residual; a transformer's feed-forward
part) and the 2-layer bidirectional LSTM speech stack (``compiler.examples.recurrent_stack``),
both quantized with ``quantize_dynamic(weight_type=QInt8)``. Timing: alternating rounds, same
thread count. Agreement: max abs difference relative to the output scale against ONNX Runtime
on the same quantized file. Writes JSON, prints a table.

    python scripts/bench_dynamic_quant.py --threads 2 --out scripts/results/bench_dynamic_quant.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compiler.benchmark import alternating_calls_p50_ms, onnxruntime_reference, write_result
from compiler.build import compile_model
from compiler.examples import recurrent_stack
from compiler.reference import max_abs_diff
from compiler.runtime import load


def feed_forward_mlp(blocks: int = 4, tokens: int = 128, width: int = 768, hidden: int = 3072,
                     seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(blocks):
        inits += [numpy_helper.from_array((rng.normal(size=(width, hidden)) / np.sqrt(width)).astype(np.float32), f"w{i}a"),
                  numpy_helper.from_array((rng.normal(size=(hidden, width)) / np.sqrt(hidden)).astype(np.float32), f"w{i}b"),
                  numpy_helper.from_array(rng.uniform(-0.1, 0.1, hidden).astype(np.float32), f"b{i}")]
        nodes += [helper.make_node("MatMul", [x, f"w{i}a"], [f"h{i}"]), helper.make_node("Add", [f"h{i}", f"b{i}"], [f"hb{i}"]),
                  helper.make_node("Relu", [f"hb{i}"], [f"r{i}"]), helper.make_node("MatMul", [f"r{i}", f"w{i}b"], [f"o{i}"]),
                  helper.make_node("Add", [f"o{i}", x], [f"x{i}"])]
        x = f"x{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [tokens, width])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [tokens, width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="kiln-bench")
    model.ir_version = 8
    return model


MODELS = {"mlp": feed_forward_mlp, "lstm_bidirectional": lambda: recurrent_stack("LSTM")}
# --small: the same graphs, a fraction of the size (a smoke run: seconds, not minutes)
SMALL_MODELS = {"mlp": lambda: feed_forward_mlp(blocks=1, tokens=16, width=64, hidden=256),
                "lstm_bidirectional": lambda: recurrent_stack("LSTM", input_size=16, hidden=32, steps=20)}


def bench(name: str, threads: int, runs: int, rounds: int, workdir: Path, small: bool = False) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32_path, dq_path = workdir / f"{name}.onnx", workdir / f"{name}_dq.onnx"
    onnx.save((SMALL_MODELS if small else MODELS)[name](), fp32_path)
    quantize_dynamic(str(fp32_path), str(dq_path), weight_type=QuantType.QInt8)
    ops = sorted({f"{n.domain + '.' if n.domain else ''}{n.op_type}" for n in onnx.load(dq_path).graph.node
                  if "Integer" in n.op_type or "Dynamic" in n.op_type})
    libs = {}
    for label, path in (("dq", dq_path), ("fp32", fp32_path)):
        compile_model(path, workdir / f"{name}_{label}.so", target="host")
        libs[label] = load(workdir / f"{name}_{label}.so", threads=threads)
    inputs = libs["dq"].random_inputs(seed=0)
    ort_dq, ort_fp32 = onnxruntime_reference(dq_path, threads), onnxruntime_reference(fp32_path, threads)
    _, rel = max_abs_diff(libs["dq"].run(inputs), ort_dq.run(inputs))
    p50 = alternating_calls_p50_ms({"kiln_dq": libs["dq"].timed_call(inputs), "kiln_fp32": libs["fp32"].timed_call(inputs),
                                    "onnxruntime_dq": ort_dq.timed_call(inputs),
                                    "onnxruntime_fp32": ort_fp32.timed_call(inputs)}, rounds=rounds, runs=runs)
    row = {"model": name, "quantized_ops": ops, "max_rel_diff_vs_onnxruntime_dq": rel,
           **{f"{k}_p50_ms": round(v, 3) for k, v in p50.items()},
           "kiln_dq_vs_kiln_fp32": round(p50["kiln_dq"] / p50["kiln_fp32"], 2),
           "kiln_dq_vs_onnxruntime_dq": round(p50["kiln_dq"] / p50["onnxruntime_dq"], 2)}
    print(f"{name}: {row}", file=sys.stderr)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--small", action="store_true",
                        help="small versions of the models (1 MLP block of 16 x 64 -> 256 -> 64; LSTM hidden 32, "
                             "20 steps): checks that the script runs, measures nothing worth keeping")
    parser.add_argument("--out", default="bench_dynamic_quant.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kiln-dq-") as tmp:
        rows = [bench(n, args.threads, args.runs, args.rounds, Path(tmp), args.small) for n in args.models]
    write_result(args.out, "bench_dynamic_quant", rows, {"threads": args.threads, "small": args.small})
    print("| model | kiln int8 (ms) | kiln FP32 (ms) | ORT int8 (ms) | ORT FP32 (ms) | kiln int8 / kiln FP32 | "
          "kiln int8 / ORT int8 | rel diff vs ORT int8 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['model']} | {r['kiln_dq_p50_ms']:.2f} | {r['kiln_fp32_p50_ms']:.2f} | {r['onnxruntime_dq_p50_ms']:.2f} | "
              f"{r['onnxruntime_fp32_p50_ms']:.2f} | {r['kiln_dq_vs_kiln_fp32']:.2f}x | {r['kiln_dq_vs_onnxruntime_dq']:.2f}x | "
              f"{r['max_rel_diff_vs_onnxruntime_dq']:.1e} |")


if __name__ == "__main__":
    main()
