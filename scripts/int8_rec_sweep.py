#!/usr/bin/env python3
"""PP-OCR recognizer INT8 accuracy under different calibration settings (one compile each).

Loads the recognizer and its rendered lines (``scripts/int8_models.py``: 100 calibration,
200 test lines), compiles INT8 once per setting and reports the exact-string accuracy and
the misses. Takes about a minute per setting on an idle 2-core machine.

    python scripts/int8_rec_sweep.py --settings percentile,mse,p99.95 --out scripts/results/int8_rec_sweep.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compiler.build import CompileOptions, compile_model  # noqa: E402
from compiler.quantization import Int8Options  # noqa: E402
from compiler.runtime import load  # noqa: E402

SETTINGS = {
    "percentile": dict(method="percentile"),
    "mse": dict(method="mse"),
    "p99.9": dict(method="percentile", percentile=99.9),
    "p99.95": dict(method="percentile", percentile=99.95),
    "p99.999": dict(method="percentile", percentile=99.999),
    "first_last": dict(method="percentile", keep_fp32=("first", "last")),
    "w8": dict(method="percentile", weight_bits=8),
}


def main() -> None:
    from scripts.int8_models import load as load_labelled

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--workdir", default=None, help="where the model and data are cached (default: temporary)")
    parser.add_argument("--out", default="int8_rec_sweep.json")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="kiln-rec-sweep-"))
    model = load_labelled("ppocr_rec", workdir / "ppocr_rec", n_calibration=100)
    shapes = {model.input_name: tuple(model.input_shape)}
    result: dict = {"model": "ppocr_rec", "calibration_samples": len(model.calibration),
                    "test_lines": len(model.test_labels), "command": " ".join(sys.argv), "settings": {}}
    for name in args.settings.split(","):
        t0 = time.perf_counter()
        lib = workdir / f"rec_{name}.so"
        compile_model(model.onnx_path, lib, CompileOptions(input_shapes=shapes, precision="int8",
                                                            int8=Int8Options(calibration=model.calibration,
                                                                             **SETTINGS[name])))
        compiled = load(lib, threads=1)
        preds = model.predict(lambda x: next(iter(compiled.run({model.input_name: x}).values())))
        misses = [(i, p, y) for i, (p, y) in enumerate(zip(preds, model.test_labels)) if p != y]
        accuracy = 100.0 * (len(model.test_labels) - len(misses)) / len(model.test_labels)
        result["settings"][name] = {"int8_accuracy": accuracy, "misses": misses,
                                    "seconds": round(time.perf_counter() - t0, 1)}
        print(f"{name}: {accuracy:.1f} % ({len(misses)} misses)", file=sys.stderr)
    Path(args.out).write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n")


if __name__ == "__main__":
    main()
