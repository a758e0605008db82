#!/usr/bin/env python3
"""PP-OCR recognizer INT8 accuracy under different calibration settings (one compile each).

Loads the recognizer and its rendered lines (``compiler.testing.int8_data``: 100 calibration,
200 test lines by default), compiles once per setting (``fp32`` is the FP32 build) and
reports the exact-string accuracy, the misses and the one-thread latency. The ``evaluate``
settings score mixed-precision candidates on validation lines (the calibration stream
continued; ``--validation-lines``), never on test lines. A minute per setting on an idle
2-core machine; an ``evaluate`` setting takes a few.

    python scripts/int8_rec_sweep.py --settings percentile,mse,p99.95 --out scripts/results/int8_rec_sweep.json
    python scripts/int8_rec_sweep.py --settings fp32,percentile,evaluate0 --test-lines 1000 --validation-lines 500 \
        --latency-rounds 5 --out scripts/results/int8_rec_mixed.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from compiler.benchmark import alternating_p50_ms, write_result
from compiler.build import CompileOptions, compile_model
from compiler.quantization import Int8Options
from compiler.runtime import load
from compiler.testing.int8_data import load as load_labelled

SETTINGS = {
    "fp32": None,  # the FP32 build: the accuracy every other setting is compared with
    "percentile": dict(method="percentile"),
    "per_channel_dw": dict(method="percentile", per_channel_depthwise=True),  # depthwise inputs per channel
    "mse": dict(method="mse"),
    "p99.9": dict(method="percentile", percentile=99.9),
    "p99.95": dict(method="percentile", percentile=99.95),
    "p99.999": dict(method="percentile", percentile=99.999),
    "first_last": dict(method="percentile", keep_fp32=("first", "last")),
    "w8": dict(method="percentile", weight_bits=8),
    "w8_last": dict(method="percentile", weight_bits=8, keep_fp32=("last",)),  # the CTC head in FP32
    "w8_first_last": dict(method="percentile", weight_bits=8, keep_fp32=("first", "last")),
    "last": dict(method="percentile", keep_fp32=("last",)),
    "bias_corr": dict(method="percentile", bias_correction=True),  # weight-rounding shift out of the biases
    "gptq": dict(method="percentile", weight_rounding="gptq"),  # weights rounded for least output error
    "w8_gptq": dict(method="percentile", weight_bits=8, weight_rounding="gptq"),
    "fp32_depthwise": dict(method="percentile", keep_fp32=("depthwise",)),  # depthwise convs stay FP32
    # Mixed precision: keep the most sensitive layers in FP32 until the INT8 build's top-1
    # agreement with FP32 on the calibration lines (per output position) reaches the target.
    "agree99.9": dict(method="percentile", min_agreement=99.9),
    "agree99.99": dict(method="percentile", min_agreement=99.99),
    # Mixed precision by read accuracy: keep the most sensitive layers in FP32 until the text read
    # from the validation lines (the calibration stream continued, --validation-lines; labels known:
    # they are rendered) is within the drop of FP32. The 200 test lines stay unseen.
    "evaluate0.5": dict(method="percentile", evaluate="validation lines", max_accuracy_drop=0.5),
    "evaluate0": dict(method="percentile", evaluate="validation lines", max_accuracy_drop=0.0),
}


def validation_accuracy(model):
    """``evaluate`` for the recognizer: percent of validation lines read exactly (``run`` -> logits)."""
    texts = model.info["calibration_texts"][:len(model.validation)]
    return lambda run: model.accuracy(run, model.validation, texts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--workdir", default=None, help="where the model and data are cached (default: temporary)")
    parser.add_argument("--test-lines", type=int, default=200,
                        help="test lines to score (the first 200 are the same for every count)")
    parser.add_argument("--validation-lines", type=int, default=100,
                        help="lines the evaluate settings score on: the 100 calibration lines and more from the "
                             "same stream (never test lines)")
    parser.add_argument("--latency-rounds", type=int, default=0,
                        help="afterwards, time every setting's library in this many alternating rounds (2 threads)")
    parser.add_argument("--out", default="int8_rec_sweep.json")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="kiln-rec-sweep-"))
    model = load_labelled("ppocr_rec", workdir / "ppocr_rec", n_test=args.test_lines,
                          n_calibration=max(100, args.validation_lines))
    model.validation = model.calibration[:args.validation_lines]
    model.calibration = model.calibration[:100]  # the first 100 lines: the same for every --validation-lines
    shapes = {model.input_name: tuple(model.input_shape)}
    result: dict = {"model": "ppocr_rec", "calibration_samples": len(model.calibration),
                    "validation_lines": len(model.validation), "test_lines": len(model.test_labels), "settings": {}}
    for name in args.settings.split(","):
        t0 = time.perf_counter()
        lib = workdir / f"rec_{name}.so"
        if SETTINGS[name] is None:
            options = CompileOptions(input_shapes=shapes)
        else:
            setting = dict(SETTINGS[name])
            if "evaluate" in setting:
                setting["evaluate"] = validation_accuracy(model)
            options = CompileOptions(input_shapes=shapes, precision="int8",
                                     int8=Int8Options(calibration=model.calibration, **setting))
        report = compile_model(model.onnx_path, lib, options)
        compiled = load(lib, threads=1)
        preds = model.predict(lambda x: next(iter(compiled.run({model.input_name: x}).values())))
        p50_ms = compiled.benchmark(20, {model.input_name: model.test_inputs[:1]}, warmup=2).p50_ms
        misses = [(i, p, y) for i, (p, y) in enumerate(zip(preds, model.test_labels)) if p != y]
        accuracy = 100.0 * (len(model.test_labels) - len(misses)) / len(model.test_labels)
        row = {"accuracy": accuracy, "misses": misses, "p50_ms_1_thread": round(p50_ms, 2)}
        if report.int8 is not None:
            row.update({"int8_layers": f"{report.int8.quantized}/{len(report.int8.layers)}",
                        "search_metric": report.int8.search_metric, "fp32_score": report.int8.fp32_score,
                        "search": report.int8.agreement_search, "kept_fp32": sorted(report.int8.plan.keep_fp32),
                        "probe_seconds": round(report.int8.probe_seconds, 1)})
        result["settings"][name] = {**row, "seconds": round(time.perf_counter() - t0, 1)}
        print(f"{name}: {accuracy:.1f} % ({len(misses)} misses)", file=sys.stderr)
    if args.latency_rounds:
        libs = {name: load(workdir / f"rec_{name}.so", threads=2) for name in result["settings"]}
        medians = alternating_p50_ms(libs, {model.input_name: model.test_inputs[:1]}, rounds=args.latency_rounds)
        for name, ms in medians.items():
            result["settings"][name]["alternating_p50_ms_2_threads"] = round(ms, 2)
        print(f"p50 (2 threads, alternating): { {name: round(ms, 2) for name, ms in medians.items()} }",
              file=sys.stderr)
    rows = [{"setting": name, **row} for name, row in result.pop("settings").items()]
    write_result(args.out, "int8_rec_sweep", rows, result)


if __name__ == "__main__":
    main()
