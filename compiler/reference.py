"""ONNX Runtime as the reference: same inputs, same thread count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from compiler.runtime import LatencyStats, time_calls


class OnnxRuntimeReference:
    """An ONNX Runtime CPU session pinned to ``threads`` intra-op threads.

    ``fixed``: inputs a kiln library was compiled with as constants (``--input-value``), fed
    to ONNX Runtime on every run (cast to the model's input types)."""

    def __init__(self, model: str | Path | onnx.ModelProto, threads: int, fixed: dict | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else Path(model).read_bytes()
        self.session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]
        types = {i.name: i.type for i in self.session.get_inputs()}
        dtypes = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
                  "tensor(int32)": np.int32, "tensor(bool)": np.bool_}
        self.fixed = {name: np.asarray(value, dtypes.get(types.get(name), None))
                      for name, value in (fixed or {}).items()}

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(None, {**self.fixed, **inputs})))

    def benchmark(self, inputs: dict[str, np.ndarray], runs: int, warmup: int = 3) -> LatencyStats:
        feed = {**self.fixed, **inputs}
        return time_calls(lambda: self.session.run(None, feed), runs, warmup)


def max_abs_diff(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> tuple[float, float]:
    """(max abs difference, that difference relative to the reference's largest magnitude) over all outputs."""
    worst_abs, worst_rel = 0.0, 0.0
    for name, expected in ref.items():
        got = ours[name].reshape(expected.shape)
        diff = float(np.max(np.abs(got.astype(np.float64) - expected))) if expected.size else 0.0
        scale = float(np.max(np.abs(expected))) if expected.size else 0.0
        worst_abs = max(worst_abs, diff)
        worst_rel = max(worst_rel, diff / scale if scale > 0 else diff)
    return worst_abs, worst_rel
