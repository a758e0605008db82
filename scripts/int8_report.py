#!/usr/bin/env python3
"""INT8 against FP32, kiln against ONNX Runtime: accuracy and latency in one run.

For each model: kiln FP32 and kiln INT8 (calibrated on the model's calibration samples),
ONNX Runtime FP32 and ONNX Runtime INT8 (its own ``quantize_static`` QDQ model from the same
calibration samples, per-channel, ``reduce_range`` as ONNX Runtime advises for AVX2, after
its advised ``quant_pre_process`` at opset 13), and kiln running that same QDQ file
(``kiln_qdq``: the pre-quantized path, imported as int8 kernels). The
labelled models (``compiler.testing.int8_data``: digits, ppocr_cls, ppocr_rec) report test
accuracy; the light-zoo models (squeezenet, resnet50: seeded random weights, no labels)
report latency and INT8-vs-FP32 top-1 agreement only. Kiln's FP32 is built with ``--layout
auto`` (NCHW and NHWC timed, the faster kept: kiln's best FP32 here), its INT8 with the
target's INT8 layout (NHWC on x86). All latencies are at the same thread count, measured in
this process in alternating rounds (each runner's p50 per round, the median over rounds), so
a noisy moment on a shared machine hits all four alike.

    python scripts/int8_report.py --models digits --json scripts/results/int8_report.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter

from compiler.benchmark import alternating_calls_p50_ms, onnxruntime_reference, write_result
from compiler.build import CompileOptions, compile_model
from compiler.quantization import Int8Options
from compiler.runtime import load
from compiler.testing.int8_data import ZOO_MODELS, zoo_case
from compiler.testing.int8_data import load as load_labelled


def ort_qdq(onnx_path: Path, out: Path, input_name: str, samples: list[np.ndarray]) -> Path:
    """ONNX Runtime's own static INT8 (QDQ) model of the same network and calibration data."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # What ONNX Runtime advises before quantize_static: without it, weights held in Constant
    # nodes (the PP-OCR exports) are quantized like activations (per tensor, uint8), and below
    # opset 13 there are no per-channel scales.
    model = onnx.load(onnx_path)
    if next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) < 13:
        model = onnx.version_converter.convert_version(model, 13)
    prepared = out.with_name(out.stem + "_prepared.onnx")
    quant_pre_process(model, str(prepared))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter({input_name: s} for s in samples)

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def report_model(name: str, workdir: Path, threads: int, runs: int, method: str, n_calibration: int,
                 weight_rounding: str = "gptq") -> dict:
    labelled = None
    if name in ZOO_MODELS:
        case = zoo_case(name, workdir, n_calibration)
        path, input_name, shape = case.onnx_path, case.input_name, case.input_shape
        calibration, test = case.calibration, case.test_inputs
    else:
        labelled = load_labelled(name, workdir / name, n_calibration=n_calibration)
        path, input_name, shape = labelled.onnx_path, labelled.input_name, labelled.input_shape
        calibration, test = labelled.calibration, labelled.test_inputs
    shapes = {input_name: tuple(shape)}
    t0 = time.perf_counter()
    fp32_report = compile_model(path, workdir / f"{name}_fp32.so", CompileOptions(input_shapes=shapes,
                                                                                 conv_layout="auto"))
    t1 = time.perf_counter()
    report = compile_model(path, workdir / f"{name}_int8.so", CompileOptions(
        input_shapes=shapes, precision="int8", int8=Int8Options(calibration=calibration, method=method,
                                                        weight_rounding=weight_rounding)))
    t2 = time.perf_counter()
    batches = [calibration[i:i + shape[0]] for i in range(0, len(calibration) - shape[0] + 1, shape[0])]
    qdq = ort_qdq(path, workdir / f"{name}_qdq.onnx", input_name, batches)
    t3 = time.perf_counter()
    compile_model(qdq, workdir / f"{name}_kiln_qdq.so", CompileOptions(input_shapes=shapes))
    t4 = time.perf_counter()

    fp32 = load(workdir / f"{name}_fp32.so", threads=threads)
    int8 = load(workdir / f"{name}_int8.so", threads=threads)
    kiln_qdq = load(workdir / f"{name}_kiln_qdq.so", threads=threads)
    ort_fp32 = onnxruntime_reference(path, threads)
    ort_int8 = onnxruntime_reference(qdq, threads)
    runners = {
        "fp32": lambda x: next(iter(fp32.run({input_name: x}).values())),
        "int8": lambda x: next(iter(int8.run({input_name: x}).values())),
        "ort_fp32": lambda x: ort_fp32.session.run(None, {input_name: x})[0],
        "ort_int8": lambda x: ort_int8.session.run(None, {input_name: x})[0],
        "kiln_qdq": lambda x: next(iter(kiln_qdq.run({input_name: x}).values())),
    }
    sample = np.ascontiguousarray(test[: shape[0]].reshape(shape), dtype=np.float32)
    row: dict = {"input_shape": list(shape), "threads": fp32.threads, "method": method,
                 "weight_rounding": weight_rounding,
                 "calibration_samples": report.int8.calibration.samples,
                 "layers_int8": report.int8.quantized, "layers": len(report.int8.layers),
                 "weight_bits": report.int8.plan.weight_bits,
                 "compile_fp32_s": round(t1 - t0, 1), "compile_int8_s": round(t2 - t1, 1),
                 "compile_kiln_qdq_s": round(t4 - t3, 1)}
    row.update(fp32_layout=fp32_report.conv_layout, fp32_layout_p50_ms=fp32_report.layout_p50_ms,
               int8_layout=int8.metadata.extra["conv_layout"])
    rounds = 5
    p50 = alternating_calls_p50_ms({key: lambda run=run: run(sample) for key, run in runners.items()},
                                   rounds=rounds, runs=max(1, runs // rounds))
    for key, ms in p50.items():
        row[f"{key}_ms"] = round(ms, 3)
    if labelled is not None:
        for key in ("fp32", "int8", "ort_fp32", "ort_int8", "kiln_qdq"):
            label = "fp32_accuracy" if key == "fp32" else "int8_accuracy" if key == "int8" else f"{key}_accuracy"
            row[label] = round(labelled.accuracy(runners[key]), 2)
        row["test_samples"] = len(labelled.test_labels)
        row["data"] = labelled.info
    else:  # random weights: no labels, only agreement of the INT8 top-1 with FP32
        agree = [int(np.argmax(runners["int8"](t[None])) == np.argmax(runners["fp32"](t[None]))) for t in test]
        row.update(fp32_accuracy=None, int8_accuracy=None, int8_top1_agreement=100.0 * float(np.mean(agree)))
    # The same QDQ file in kiln and in ONNX Runtime: how far apart (a rounding step at most).
    n = shape[0]
    checks = [np.ascontiguousarray(test[i:i + n].reshape(shape), dtype=np.float32)
              for i in range(0, min(len(test), 20 * n) - n + 1, n)]
    row["kiln_qdq_max_abs_vs_ort_int8"] = max(float(np.abs(runners["kiln_qdq"](x) - runners["ort_int8"](x)).max())
                                              for x in checks)
    row["int8_vs_fp32"] = round(row["int8_ms"] / row["fp32_ms"], 3)
    row["int8_vs_ort_int8"] = round(row["int8_ms"] / row["ort_int8_ms"], 3)
    print(f"{name}: {json.dumps(row)}", file=sys.stderr)
    return row


def markdown(rows: dict[str, dict]) -> str:
    def acc(v):
        return "–" if v is None else f"{v:.1f}"

    lines = ["| model | FP32 acc | INT8 acc | ORT INT8 acc | kiln FP32 ms | kiln INT8 ms | INT8/FP32 | "
             "ORT FP32 ms | ORT INT8 ms | ORT's QDQ in kiln: acc | ms |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in rows.items():
        lines.append(f"| {name} | {acc(r['fp32_accuracy'])} | {acc(r['int8_accuracy'])} | "
                     f"{acc(r.get('ort_int8_accuracy'))} | {r['fp32_ms']:.2f} | {r['int8_ms']:.2f} | "
                     f"{r['int8_vs_fp32']:.2f} | {r['ort_fp32_ms']:.2f} | {r['ort_int8_ms']:.2f} | "
                     f"{acc(r.get('kiln_qdq_accuracy'))} | {r['kiln_qdq_ms']:.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits", help="comma list of digits, ppocr_cls, ppocr_rec, "
                                                           "squeezenet, resnet50")
    parser.add_argument("--json", required=True, help="where to write the results")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--method", default="percentile", choices=["minmax", "percentile", "entropy"])
    parser.add_argument("--calibration", type=int, default=100, help="calibration samples per model")
    parser.add_argument("--weight-rounding", default="gptq", choices=["gptq", "nearest"],
                        help="how kiln's INT8 build rounds its weights (kiln compile --weight-rounding)")
    parser.add_argument("--workdir", help="keep the models and libraries here (default: a temp dir)")
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="kiln-int8-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            rows[name] = report_model(name, workdir, args.threads, args.runs, args.method, args.calibration,
                                      args.weight_rounding)
    write_result(args.json, "int8_report", [{"model": name, **row} for name, row in rows.items()])
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
