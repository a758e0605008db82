#!/usr/bin/env python3
"""One 3x3 conv (1x64x56x56 -> 64 channels, pad 1, bias, ReLU) four ways, at 1 and 2 threads.

* kiln int8: uint8 x int8 -> int32 conv + int32 bias + float rescale, ReLU, round, clip to
  uint8 (what kiln's quantizer emits), scheduled by ``Int8Tensorized`` (AVX2 intrinsic);
* kiln fp32: the float ONNX Conv + ReLU through kiln's pipeline (``ChannelVectorized``);
* ONNX Runtime fp32 on the same ONNX model;
* ONNX Runtime int8: that model quantized by ``onnxruntime.quantization.quantize_static``
  (QDQ, per-channel int8 weights with ``reduce_range``, uint8 activations).

TVM fixes its thread pool when it starts, so each thread count runs in its own worker
process. Within a worker the variants are timed in interleaved rounds (each round: every
variant ``--calls`` times; ``compiler.benchmark.alternating_rounds``) and the median over
rounds of the mean time per call is reported, so that load from other users of the machine
hits all variants alike. The JSON also has the process CPU time per call (at one thread: the
kernel's own time, however busy the machine) and the 1-minute load average before and after.

    python scripts/bench_int8_kernel.py [--threads 1 2] [--rounds 15] [--calls 20]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from compiler.benchmark import write_result

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "scripts" / "results" / "bench_int8_kernel.json"
C, F, SIZE, K = 64, 64, 56, 3


def onnx_conv(path: Path) -> np.ndarray:
    """Write the float Conv(3x3, pad 1) + ReLU model to ``path``; returns its weight."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((F, C, K, K)) * np.sqrt(2.0 / (C * K * K))).astype(np.float32)
    b = (rng.standard_normal(F) * 0.1).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])],
        "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, SIZE, SIZE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, F, SIZE, SIZE])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return w


def int8_module():
    """The quantized conv as kiln's quantizer writes it (7-bit per-channel weights, uint8 in/out)."""
    from tvm import relax

    rng = np.random.default_rng(0)
    w = rng.integers(-63, 64, (F, C, K, K)).astype("int8")
    bias = rng.integers(-2000, 2000, (1, F, 1, 1)).astype("int32")
    scale = (rng.random((1, F, 1, 1)) * 0.004 + 0.001).astype("float32")
    x = relax.Var("x", relax.TensorType((1, C, SIZE, SIZE), "uint8"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(w), padding=1, out_dtype="int32"))
            y = bb.emit(relax.op.multiply(relax.op.astype(relax.op.add(y, relax.const(bias)), "float32"),
                                          relax.const(scale)))
            y = bb.emit(relax.op.astype(relax.op.clip(relax.op.round(relax.op.nn.relu(y)), 0, 255), "uint8"))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def kiln_callable(mod, x: np.ndarray):
    """Compile ``mod`` with kiln's pipeline for the host; returns (call, rule counts)."""
    import tvm
    from tvm import relax

    from compiler.pipeline import build_pipeline
    from schedules.defaults import schedule_summary
    from targets.registry import resolve_target

    preset = resolve_target("host")
    with tvm.transform.PassContext(opt_level=3):
        lowered = build_pipeline(preset)(mod)
        ex = tvm.compile(lowered, preset.tvm_target(), relax_pipeline=None)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    main, arg = vm["main"], tvm.runtime.tensor(x)
    return (lambda: main(arg)), dict(schedule_summary(lowered))


def quantize_ort(fp32: Path, out: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(3)
            self.batches = iter([{"x": rng.random((1, C, SIZE, SIZE), dtype=np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def worker(threads: int, rounds: int, calls: int) -> dict:
    """Time every variant in this process (``TVM_NUM_THREADS`` already set by the parent)."""
    import tvm

    from compiler.benchmark import alternating_rounds, onnxruntime_reference
    from compiler.frontend import import_onnx

    rng = np.random.default_rng(1)
    x_f32 = rng.random((1, C, SIZE, SIZE), dtype=np.float32)
    x_u8 = rng.integers(0, 256, (1, C, SIZE, SIZE)).astype(np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        fp32, qdq = Path(tmp) / "conv.onnx", Path(tmp) / "conv_qdq.onnx"
        onnx_conv(fp32)
        quantize_ort(fp32, qdq)
        kiln_int8, int8_rules = kiln_callable(int8_module(), x_u8)
        kiln_fp32, fp32_rules = kiln_callable(import_onnx(fp32, {}).mod, x_f32)
        variants = {
            "kiln_int8": kiln_int8,
            "kiln_fp32": kiln_fp32,
            "onnxruntime_fp32": onnxruntime_reference(fp32, threads).timed_call({"x": x_f32}),
            "onnxruntime_int8_qdq": onnxruntime_reference(qdq, threads).timed_call({"x": x_f32}),
        }
        for call in variants.values():
            call()
        load_before = os.getloadavg()[0]
        per_round = alternating_rounds(variants, rounds, calls)
    return {
        "threads": threads,
        "tvm_threads": int(tvm.runtime.num_threads()),
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "median_ms": {k: round(float(np.median([r.mean_ms for r in v])), 3) for k, v in per_round.items()},
        "min_ms": {k: round(float(np.min([r.mean_ms for r in v])), 3) for k, v in per_round.items()},
        # CPU time of this process per call: at one thread, the kernel's own time even when other
        # jobs take the core away; at two threads it includes TVM's and ORT's spinning workers.
        "median_cpu_ms": {k: round(float(np.median([r.cpu_ms for r in v])), 3) for k, v in per_round.items()},
        "rules": {"kiln_int8": int8_rules, "kiln_fp32": fp32_rules},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.rounds, args.calls)))
        return
    results = []
    for n in args.threads:
        env = dict(os.environ, TVM_NUM_THREADS=str(n), TVM_BIND_THREADS="0")
        proc = subprocess.run([sys.executable, __file__, "--worker", str(n), "--rounds", str(args.rounds),
                               "--calls", str(args.calls)], env=env, capture_output=True, text=True, check=True)
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(row)
        med = row["median_ms"]
        print(f"{n} thread(s): " + ", ".join(f"{k} {v:.3f} ms" for k, v in med.items()), file=sys.stderr)
    write_result(args.out, "bench_int8_kernel", results, {
        "benchmark": f"conv2d 1x{C}x{SIZE}x{SIZE}, {F} filters 3x3, pad 1, bias + ReLU (int8: + requantize to uint8)",
        "rounds": args.rounds, "calls_per_round": args.calls})


if __name__ == "__main__":
    main()
