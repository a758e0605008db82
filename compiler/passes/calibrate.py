"""INT8 calibration: run the FP32 model over sample inputs and choose activation ranges.

Expects the Relax module as the quantization step will see it (after kiln's
simplification steps: batch-norm folded, weights constant) and calibration samples.
Builds a host copy of that module whose ``main`` also returns every tensor a quantizable
layer reads (``compiler.passes.int8_layers``), runs it over the samples with kiln's own
default schedules (no other runtime needed), and keeps one histogram per tensor (and, with
``per_channel_depthwise``, one per channel of each depthwise conv's input).
Guarantees one ``TensorRange`` per layer (uint8; zero point 0 when the tensor was never
negative, e.g. after ReLU; per-channel thresholds for depthwise inputs when asked) with the
clipping threshold chosen by the method:

- ``minmax``: the largest magnitude seen;
- ``percentile``: the given percentile of magnitudes (default 99.99);
- ``entropy``: the threshold whose 8-bit quantized histogram is closest to the float
  one in KL divergence (TensorRT's calibrator);
- ``mse``: the threshold with the least expected squared error, rounding inside plus
  clipping outside (as ONNX Runtime's and PyTorch's MSE/"histogram" observers).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from targets.errors import InputError
from targets.library_format import TensorSpec
from compiler.passes.gptq import ConvWindow, HessianSum
from compiler.passes.int8_layers import Layer, find_layers, main_bindings

log = logging.getLogger(__name__)

METHODS = ("minmax", "percentile", "entropy", "mse")
BINS = 2048


@dataclass
class TensorRange:
    """The calibrated range of one layer input, quantized as uint8 (asymmetric where needed).

    A tensor never seen negative (after ReLU) gets zero point 0, so zero padding stays
    exact and a ReLU before it is the quantize's own clip. A tensor with negative values
    (hard-swish, residual sums, the input image) maps [low, high] onto 0..255 with a
    zero point: twice the resolution of symmetric int8 when the negative side is small,
    and the int8 kernels take uint8 activations (``schedules/rules/int8.py``).
    """

    signed: bool  # seen negative: needs a zero point
    threshold: float  # magnitudes above are clipped
    minimum: float
    maximum: float
    channels: tuple["TensorRange", ...] | None = None  # per channel (NCHW axis 1): depthwise layer inputs

    @property
    def dtype(self) -> str:
        return "uint8"

    @property
    def low(self) -> float:
        return max(-self.threshold, self.minimum) if self.signed else 0.0

    @property
    def high(self) -> float:
        return min(self.threshold, self.maximum) if self.signed else self.threshold

    @property
    def scale(self) -> float:
        return max(self.high - self.low, 1e-12) / 255.0

    @property
    def zero_point(self) -> int:
        return int(np.clip(np.round(-self.low / self.scale), 0, 255))

    def channel_scales(self) -> np.ndarray:
        return np.array([c.scale for c in self.channels], dtype=np.float32)

    def channel_zero_points(self) -> np.ndarray:
        return np.array([c.zero_point for c in self.channels], dtype=self.dtype)


class Histogram:
    """A running histogram of |x| over [0, edge]; the edge grows and old counts are re-binned."""

    def __init__(self, bins: int = BINS) -> None:
        self.counts = np.zeros(bins, dtype=np.float64)
        self.edge = 0.0
        self.minimum = np.inf
        self.maximum = -np.inf

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float32).ravel()
        if values.size == 0 or not np.all(np.isfinite(values)):
            raise InputError("calibration produced NaN or Inf inside the model; check the calibration data")
        self.minimum = min(self.minimum, float(values.min()))
        self.maximum = max(self.maximum, float(values.max()))
        magnitude = np.abs(values)
        top = float(magnitude.max())
        if top > self.edge:
            self._grow(top)
        if self.edge == 0.0:
            self.counts[0] += magnitude.size
            return
        hist, _ = np.histogram(magnitude, bins=len(self.counts), range=(0.0, self.edge))
        self.counts += hist

    def _grow(self, edge: float) -> None:
        if self.edge > 0 and self.counts.any():
            width = self.edge / len(self.counts)
            centers = (np.arange(len(self.counts)) + 0.5) * width
            index = np.minimum((centers / edge * len(self.counts)).astype(np.int64), len(self.counts) - 1)
            self.counts = np.bincount(index, weights=self.counts, minlength=len(self.counts)).astype(np.float64)
        self.edge = edge

    @property
    def bin_width(self) -> float:
        return self.edge / len(self.counts)

    def percentile(self, q: float) -> float:
        cumulative = np.cumsum(self.counts)
        if cumulative[-1] == 0:
            return 0.0
        index = int(np.searchsorted(cumulative, cumulative[-1] * q / 100.0))
        return min(index + 1, len(self.counts)) * self.bin_width

    def entropy_threshold(self, levels: int) -> float:
        """TensorRT's KL-divergence threshold for ``levels`` quantization bins."""
        counts = self.counts
        if counts.sum() == 0 or self.edge == 0:
            return self.edge
        best, best_kl = len(counts), np.inf
        for i in range(levels, len(counts) + 1, 4):
            reference = counts[:i].copy()
            reference[-1] += counts[i:].sum()  # outliers are clipped into the last bin
            nonzero = counts[:i] != 0
            # Merge the i bins into `levels` groups, then spread each group's mass back
            # evenly over its non-empty bins: the distribution 8-bit codes can represent.
            groups = np.minimum((np.arange(i) * levels) // i, levels - 1)
            group_mass = np.bincount(groups, weights=counts[:i], minlength=levels)
            group_size = np.bincount(groups, weights=nonzero.astype(np.float64), minlength=levels)
            expanded = np.where(nonzero, group_mass[groups] / np.maximum(group_size[groups], 1), 0.0)
            p = reference / reference.sum()
            q = expanded / max(expanded.sum(), 1e-30)
            mask = p > 0
            kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
            if kl < best_kl:
                best, best_kl = i, kl
        return (best + 0.5) * self.bin_width

    def mse_threshold(self, levels: int = 256) -> float:
        """The clipping threshold with the least expected squared error over ``levels`` codes.

        For a threshold t at each bin edge: values inside round with step s (error s^2/12
        each), values beyond t are clipped to it (error (|x| - t)^2). A tensor with
        negative values spreads its codes over [max(-t, min), min(t, max)].
        """
        counts = self.counts
        if counts.sum() == 0 or self.edge == 0:
            return self.edge
        width = self.bin_width
        centers = (np.arange(len(counts)) + 0.5) * width
        thresholds = (np.arange(len(counts)) + 1) * width

        def beyond(values: np.ndarray) -> np.ndarray:  # per threshold: the sum over the bins above it
            return np.concatenate([np.cumsum(values[::-1])[::-1][1:], [0.0]])

        # count, first and second moment of the values each threshold clips
        tail0, tail1, tail2 = beyond(counts), beyond(counts * centers), beyond(counts * centers**2)
        clipping = tail2 - 2 * thresholds * tail1 + thresholds**2 * tail0
        if self.minimum < 0.0:
            spans = np.minimum(thresholds, self.maximum) - np.maximum(-thresholds, self.minimum)
        else:
            spans = thresholds
        steps = np.maximum(spans, 1e-30) / (levels - 1)
        rounding = (counts.sum() - tail0) * steps**2 / 12.0
        return float(thresholds[int(np.argmin(clipping + rounding))])

    def to_range(self, method: str, percentile: float) -> TensorRange:
        signed = self.minimum < 0.0
        if method == "minmax":
            threshold = self.edge
        elif method == "percentile":
            threshold = self.percentile(percentile)
        elif method == "mse":
            threshold = self.mse_threshold()
        else:
            threshold = self.entropy_threshold(128 if signed else 256)
        threshold = min(max(threshold, 1e-8), self.edge) if self.edge > 0 else 1e-8
        return TensorRange(signed, float(threshold), float(self.minimum), float(self.maximum))


@dataclass
class CalibrationResult:
    """Ranges per layer name, and how the calibration went."""

    method: str
    ranges: dict[str, TensorRange]
    samples: int
    seconds: float
    histograms: dict[str, Histogram] = field(default_factory=dict, repr=False)
    fp32_outputs: list[np.ndarray] = field(default_factory=list, repr=False)  # first output per sample
    # per layer: its input tensor's mean over the samples, conv2d inputs in NCHW
    # (for ``QuantizationPlan.bias_correction``)
    input_means: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    # per layer: its input's second moment E[x xᵀ] per group (for GPTQ weight rounding, ``gptq``;
    # ``plan_int8`` takes them out once it has rounded the weights)
    hessians: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


def _as_batch(arrays: dict[str, np.ndarray], inputs: list[TensorSpec]) -> list[dict[str, np.ndarray]]:
    """Split one mapping name -> array into model-sized batches (a leading sample axis is allowed)."""
    missing = [spec.name for spec in inputs if spec.name not in arrays]
    if missing:
        raise InputError(f"calibration data has no array for input(s) {', '.join(missing)}; "
                         f"it has {', '.join(sorted(arrays)) or 'none'}")
    counts = set()
    per_input = {}
    for spec in inputs:
        value = np.asarray(arrays[spec.name])
        shape = tuple(spec.shape)
        if value.shape == shape:
            per_input[spec.name] = value[None]
        elif shape and shape[0] == 1 and value.shape == shape[1:]:  # one sample without its batch axis
            per_input[spec.name] = value[None, None]
        elif value.shape[1:] == shape:
            per_input[spec.name] = value
        elif shape and shape[0] == 1 and value.shape[1:] == shape[1:]:
            per_input[spec.name] = value[:, None]
        else:
            raise InputError(f"calibration array '{spec.name}' has shape {value.shape}; the model takes "
                             f"{shape} (or N x {shape} for N samples)")
        counts.add(per_input[spec.name].shape[0])
    if len(counts) != 1:
        raise InputError(f"calibration arrays have different sample counts: {sorted(counts)}")
    n = counts.pop()
    return [{spec.name: per_input[spec.name][i].astype(spec.dtype, copy=False) for spec in inputs}
            for i in range(n)]


def _read_file(path: Path, inputs: list[TensorSpec]) -> dict[str, np.ndarray]:
    if path.suffix not in (".npy", ".npz"):
        raise InputError(f"{path}: calibration data must be .npz (one array per input name) or .npy")
    from compiler.array_files import read_npy, read_npz

    if path.suffix == ".npy":
        if len(inputs) != 1:
            raise InputError(f"{path}: a .npy file feeds a one-input model; this one has {len(inputs)} "
                             "inputs (use .npz with one array per input name)")
        return {inputs[0].name: read_npy(path, "calibration data")}
    return read_npz(path, "calibration data")


def load_calibration(source, inputs: list[TensorSpec], limit: int | None = None) -> list[dict[str, np.ndarray]]:
    """Calibration samples as model-sized batches.

    ``source``: an ``.npz`` (one array per input name, optionally with a leading sample
    axis), an ``.npy`` (one-input models), a directory of those, the same as in-memory
    arrays (a dict, or one array), or an iterable of dicts / arrays. ``limit`` keeps the first samples only.
    """
    batches: list[dict[str, np.ndarray]] = []
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".npy", ".npz"))
            if not files:
                raise InputError(f"{path}: no .npy or .npz files for calibration")
        elif path.is_file():
            files = [path]
        else:
            raise InputError(f"calibration data {path}: no such file or directory")
        for file in files:
            batches += _as_batch(_read_file(file, inputs), inputs)
    elif isinstance(source, np.ndarray):
        if len(inputs) != 1:
            raise InputError("one calibration array feeds a one-input model; pass a dict name -> array")
        batches = _as_batch({inputs[0].name: source}, inputs)
    elif isinstance(source, dict):
        batches = _as_batch(source, inputs)
    elif isinstance(source, Iterable):
        for item in source:
            if isinstance(item, dict):
                batches += _as_batch(item, inputs)
            elif len(inputs) == 1:
                batches += _as_batch({inputs[0].name: item}, inputs)
            else:
                raise InputError("calibration items must be dicts name -> array for a multi-input model")
            if limit is not None and len(batches) >= limit:
                break
    else:
        raise InputError(f"calibration data must be a path or an iterable, not {type(source).__name__}")
    if not batches:
        raise InputError("calibration data holds no samples")
    return batches[:limit] if limit is not None else batches


def _exposing_module(mod, layers: list[Layer]):
    """A copy of ``mod`` whose ``main`` returns ``(original output, *distinct layer inputs)``."""
    import tvm
    from tvm import relax

    position: dict = {}  # distinct layer input -> its place among the extra outputs
    for layer in layers:
        position.setdefault(layer.data, len(position))

    @relax.expr_functor.mutator
    class _Expose(relax.PyExprMutator):
        def __init__(self, module):
            super().__init__(module)
            self.exposed: dict[int, relax.Var] = {}

        def visit_var_binding_(self, binding):
            value = self.visit_expr(binding.value)
            hit = position.get(binding.var)
            if hit is None and isinstance(binding.var, relax.DataflowVar):
                new_var = self.builder_.emit(value, binding.var.name)
            else:  # a layer input to expose, or already a block output
                new_var = self.builder_.emit_output(value, binding.var.name)
            if hit is not None:
                self.exposed[hit] = new_var
            self.set_var_remap(binding.var, new_var)

    func = mod["main"]
    mutator = _Expose(mod)
    new_func = mutator.visit_expr(func)
    params = {p: i for i, p in enumerate(func.params)}
    extra = []
    for data, i in position.items():
        if i in mutator.exposed:
            extra.append(mutator.exposed[i])
        else:  # a function parameter read directly by a layer
            extra.append(new_func.params[params[data]])
    body = new_func.body
    outputs = relax.Tuple([body.body, *extra])
    new_body = relax.SeqExpr(body.blocks, outputs)
    ret_ty = relax.TupleType([e.ty for e in [body.body, *extra]])
    exposing = relax.Function(new_func.params, new_body, ret_ty, is_pure=True, attrs=func.attrs)
    out = tvm.IRModule(dict(mod.functions_items()))
    out["main"] = exposing
    out = relax.transform.Normalize()(out)
    return out, [position[layer.data] for layer in layers]


def _as_nchw(values: np.ndarray, layer: Layer) -> np.ndarray:
    """A conv2d layer's input in NCHW (from its ``data_layout``); other layers' unchanged."""
    if layer.op != "conv2d":
        return values
    return values.transpose([layer.data_layout.index(c) for c in "NCHW"])


def _window(calls: dict, layer: Layer) -> ConvWindow | None:
    """A conv2d layer's window (from its call, ``calls``: binding var -> value); None for a matmul."""
    if layer.op != "conv2d":
        return None
    call = calls[layer.output]
    shape = layer.weight.value.shape
    return ConvWindow.of(call.attrs, (int(shape[layer.kernel_layout.index("H")]),
                                      int(shape[layer.kernel_layout.index("W")])))


def _columns(layer: Layer) -> int:
    """How many inputs each output of ``layer`` sums over: a conv2d's I*KH*KW, a matmul's K."""
    shape = [int(v) for v in layer.weight.value.shape]
    return int(np.prod(shape)) // shape[layer.weight_axis]


def first_output(result) -> np.ndarray:
    """The model's first output from a VM result (a model with several outputs returns nested tuples)."""
    while not hasattr(result, "numpy"):
        result = result[0]
    return result.numpy()


def calibrate(
    mod,
    inputs: list[TensorSpec],
    samples: list[dict[str, np.ndarray]],
    method: str = "entropy",
    percentile: float = 99.99,
    onnx_model=None,
    threads: int | None = None,
    per_channel_depthwise: bool = False,
    input_means: bool = False,
    hessians: bool = False,
) -> CalibrationResult:
    """Ranges of every quantizable layer's input of ``mod`` over ``samples`` (see module doc);
    with ``input_means`` also each layer input's mean tensor (``CalibrationResult.input_means``),
    with ``hessians`` each layer's input second moment (``CalibrationResult.hessians``)."""
    import tvm

    from compiler.pipeline import lowering_pipeline
    from compiler.runtime import configure_threads
    from targets.registry import resolve_target

    if method not in METHODS:
        raise InputError(f"calibration method '{method}' is unknown; use one of {', '.join(METHODS)}")
    if method == "percentile" and not 50.0 < percentile <= 100.0:
        raise InputError(f"percentile {percentile} is out of range (50, 100]")
    t0 = time.perf_counter()
    layers = find_layers(mod, onnx_model)
    if not layers:
        return CalibrationResult(method, {}, 0, 0.0)
    exposing, index = _exposing_module(mod, layers)
    host = resolve_target("host")
    with tvm.transform.PassContext(opt_level=3):
        lowered = lowering_pipeline(host)(exposing)
        executable = tvm.compile(lowered, host.tvm_target(), relax_pipeline=None)
    configure_threads(threads)
    device = tvm.cpu()
    vm = tvm.runtime.vm.VirtualMachine(executable, device)
    histograms = [Histogram() for _ in range(max(index) + 1)]
    # Depthwise layers may quantize their input per channel (exact with int32 accumulation):
    # their inputs also get one histogram per channel.
    channel_histograms = {index[layer.index]: [Histogram() for _ in range(int(layer.weight.value.shape[0]))]
                          for layer in layers if per_channel_depthwise and layer.depthwise}
    fp32_outputs = []
    sums: dict[int, np.ndarray] = {}  # exposed layer input -> sum over the samples
    calls = {b.var: b.value for b in main_bindings(mod)} if hessians else {}
    second_moments = {layer.name: HessianSum(_window(calls, layer), _columns(layer), len(samples))
                      for layer in layers} if hessians else {}
    for sample in samples:
        args = [tvm.runtime.tensor(np.ascontiguousarray(sample[spec.name]), device) for spec in inputs]
        result = vm["main"](*args)
        fp32_outputs.append(first_output(result[0]))
        exposed = [result[i + 1].numpy() for i in range(len(histograms))]
        for i, hist in enumerate(histograms):
            values = exposed[i]
            hist.add(values)
            for c, channel in enumerate(channel_histograms.get(i, ())):
                channel.add(values[:, c])
            if input_means:
                sums[i] = sums.get(i, 0.0) + values.astype(np.float64)
        for layer in layers if hessians else ():
            second_moments[layer.name].add(_as_nchw(exposed[index[layer.index]], layer))
    by_layer = {layer.name: histograms[index[layer.index]] for layer in layers}
    ranges = {name: hist.to_range(method, percentile) for name, hist in by_layer.items()}
    for layer in layers:
        per_channel = channel_histograms.get(index[layer.index])
        if per_channel is not None:
            channels = tuple(h.to_range(method, percentile) for h in per_channel)
            ranges[layer.name] = dataclasses.replace(ranges[layer.name], channels=channels)
    # conv2d inputs in NCHW: the layout may change between calibration and quantization
    means = {layer.name: _as_nchw(sums[index[layer.index]] / len(samples), layer)
             for layer in layers if index[layer.index] in sums}
    seconds = time.perf_counter() - t0
    log.info("calibrated %d layers over %d samples (%s) in %.1f s", len(ranges), len(samples), method, seconds)
    return CalibrationResult(method, ranges, len(samples), seconds, by_layer, fp32_outputs, means,
                             {name: moment.mean for name, moment in second_moments.items()})
