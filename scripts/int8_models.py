#!/usr/bin/env python3
"""Print each labelled INT8 model's FP32 accuracy under ONNX Runtime (JSON lines).

The models and their data live in ``compiler.testing.int8_data`` (digits, ppocr_cls, ppocr_rec).

    python scripts/int8_models.py [digits ppocr_cls ppocr_rec] --workdir DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from compiler.testing.int8_data import MODEL_NAMES, load, onnxruntime_runner


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=list(MODEL_NAMES))
    ap.add_argument("--workdir", type=Path, default=Path("int8_work"))
    ap.add_argument("--n-test", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    for name in args.names:
        m = load(name, args.workdir, n_test=args.n_test)
        acc = m.accuracy(onnxruntime_runner(m, args.threads))
        print(json.dumps({"model": name, "onnx": str(m.onnx_path), "input": m.input_name,
                          "shape": list(m.input_shape), "calibration": len(m.calibration),
                          "test": len(m.test_inputs), "fp32_ort_accuracy": round(acc, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
