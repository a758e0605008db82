"""ONNX Runtime as the reference: same inputs, same thread count."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx

from compiler.runtime import LatencyStats, time_calls


class OnnxRuntimeReference:
    """An ONNX Runtime session (CPU unless ``providers`` say otherwise) pinned to ``threads`` intra-op threads.

    ``fixed``: inputs a kiln library was compiled with as constants (``--input-value``), fed
    to ONNX Runtime on every run (cast to the model's input types). ``providers``: ONNX
    Runtime's execution providers in order of preference, those not installed dropped
    (default: the CPU one only)."""

    def __init__(self, model: str | Path | onnx.ModelProto, threads: int, fixed: dict | None = None,
                 providers: Sequence[str] = ("CPUExecutionProvider",)):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else Path(model).read_bytes()
        available = ort.get_available_providers()
        self.session = ort.InferenceSession(data, opts, providers=[p for p in providers if p in available])
        self.output_names = [o.name for o in self.session.get_outputs()]
        types = {i.name: i.type for i in self.session.get_inputs()}
        dtypes = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
                  "tensor(int32)": np.int32, "tensor(bool)": np.bool_}
        self.fixed = {name: np.asarray(value, dtypes.get(types.get(name), None))
                      for name, value in (fixed or {}).items()}

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(None, {**self.fixed, **inputs})))

    def timed_call(self, inputs: dict[str, np.ndarray]) -> Callable[[], object]:
        """One session run on ``inputs``, its feed built once: what timing repeats
        (``CompiledModel.timed_call``'s counterpart)."""
        feed = {**self.fixed, **inputs}
        return lambda: self.session.run(None, feed)

    def benchmark(self, inputs: dict[str, np.ndarray], runs: int, warmup: int = 3) -> LatencyStats:
        return time_calls(self.timed_call(inputs), runs, warmup)


@dataclass(frozen=True)
class Comparison:
    """How kiln's outputs differ from the reference's.

    ``problems`` lists what makes the outputs disagree regardless of tolerance: an output
    missing on either side, a shape that differs, or a NaN/inf where the reference has a
    finite value (or a different non-finite value). ``max_abs``/``max_rel`` are over the
    positions where both sides are finite, and infinite when there is any problem, so that a
    ``max_rel <= tolerance`` check can never pass a broken output."""

    max_abs: float
    max_rel: float
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


def compare_outputs(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> Comparison:
    """Compare every reference output with kiln's output of the same name (see ``Comparison``)."""
    problems = [f"output {name!r} is missing from kiln's outputs" for name in ref if name not in ours]
    problems += [f"kiln has an output {name!r} that the reference does not" for name in ours if name not in ref]
    worst_abs, worst_rel = 0.0, 0.0
    for name, expected in ref.items():
        if name not in ours:
            continue
        got, expected = np.asarray(ours[name]), np.asarray(expected)
        if got.shape != expected.shape:
            problems.append(f"output {name!r} has shape {list(got.shape)}, the reference {list(expected.shape)}")
            continue
        got64, exp64 = got.astype(np.float64), expected.astype(np.float64)
        both_finite = np.isfinite(got64) & np.isfinite(exp64)
        # Non-finite positions must match exactly: NaN where the reference has NaN, the same inf.
        same_special = (np.isnan(got64) & np.isnan(exp64)) | (np.isinf(got64) & (got64 == exp64))
        bad = ~(both_finite | same_special)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            problems.append(f"output {name!r} has {int(bad.sum())} value(s) that are NaN/inf on one side only "
                            f"(first at {list(where)}: kiln {got64[where]}, reference {exp64[where]})")
            continue
        if both_finite.any():
            got64, exp64 = got64[both_finite], exp64[both_finite]
            diff = float(np.max(np.abs(got64 - exp64)))
            scale = float(np.max(np.abs(exp64)))
            worst_abs = max(worst_abs, diff)
            worst_rel = max(worst_rel, diff / scale if scale > 0 else diff)
    if problems:
        return Comparison(float("inf"), float("inf"), tuple(problems))
    return Comparison(worst_abs, worst_rel)


def max_abs_diff(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> tuple[float, float]:
    """(max abs difference, that difference relative to the reference's largest magnitude) over
    all outputs; both infinite on any problem ``compare_outputs`` finds (NaN, shape, missing)."""
    result = compare_outputs(ours, ref)
    return result.max_abs, result.max_rel
