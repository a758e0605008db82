"""ONNX Runtime as the reference: same inputs, same thread count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from compiler.runtime import LatencyStats, time_calls


class OnnxRuntimeReference:
    """An ONNX Runtime CPU session pinned to ``threads`` intra-op threads."""

    def __init__(self, model: str | Path | onnx.ModelProto, threads: int):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else Path(model).read_bytes()
        self.session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(None, inputs)))

    def benchmark(self, inputs: dict[str, np.ndarray], runs: int, warmup: int = 3) -> LatencyStats:
        return time_calls(lambda: self.session.run(None, inputs), runs, warmup)


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
