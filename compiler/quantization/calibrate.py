"""INT8 calibration: run the FP32 model over sample inputs and choose activation ranges.

Expects the Relax module as the quantization step will see it (after kiln's simplification
steps: batch-norm folded, weights constant), calibration samples and a ``ModelRunner`` (the
caller's way to build and run a module on this machine). Runs a copy of the module whose
``main`` also returns every tensor a quantizable layer reads (``compiler.quantization.layers``)
over the samples, and feeds each tensor to a calibrator of the chosen method
(``compiler.quantization.calibrators``; with ``per_channel_depthwise``, one per channel of each
depthwise conv's input too). Guarantees one ``TensorRange`` per layer.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from compiler.quantization.calibrators import Calibrator, Histogram, TensorRange, check_method, create_calibrator
from compiler.quantization.gptq import ConvWindow, HessianSum
from compiler.quantization.layers import Layer, find_layers, main_bindings
from compiler.quantization.runner import ModelRunner
from targets.library_format import TensorSpec

log = logging.getLogger(__name__)


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
    runner: ModelRunner,
    method: str = "entropy",
    percentile: float = 99.99,
    onnx_model=None,
    per_channel_depthwise: bool = False,
    input_means: bool = False,
    hessians: bool = False,
) -> CalibrationResult:
    """Ranges of every quantizable layer's input of ``mod`` over ``samples`` (see module doc);
    with ``input_means`` also each layer input's mean tensor (``CalibrationResult.input_means``),
    with ``hessians`` each layer's input second moment (``CalibrationResult.hessians``)."""
    check_method(method, percentile)
    t0 = time.perf_counter()
    layers = find_layers(mod, onnx_model)
    if not layers:
        return CalibrationResult(method, {}, 0, 0.0)
    exposing, index = _exposing_module(mod, layers)
    run = runner.compile(exposing)
    calibrators = [create_calibrator(method, percentile) for _ in range(max(index) + 1)]
    # Depthwise layers may quantize their input per channel (exact with int32 accumulation):
    # their inputs also get one calibrator per channel.
    channel_calibrators: dict[int, list[Calibrator]] = {
        index[layer.index]: [create_calibrator(method, percentile) for _ in range(int(layer.weight.value.shape[0]))]
        for layer in layers if per_channel_depthwise and layer.depthwise}
    fp32_outputs = []
    sums: dict[int, np.ndarray] = {}  # exposed layer input -> sum over the samples
    calls = {b.var: b.value for b in main_bindings(mod)} if hessians else {}
    second_moments = {layer.name: HessianSum(_window(calls, layer), _columns(layer), len(samples))
                      for layer in layers} if hessians else {}
    for sample in samples:
        result = run([np.ascontiguousarray(sample[spec.name]) for spec in inputs])
        fp32_outputs.append(first_output(result[0]))
        exposed = [result[i + 1].numpy() for i in range(len(calibrators))]
        for i, calibrator in enumerate(calibrators):
            values = exposed[i]
            calibrator.collect(values)
            for c, channel in enumerate(channel_calibrators.get(i, ())):
                channel.collect(values[:, c])
            if input_means:
                sums[i] = sums.get(i, 0.0) + values.astype(np.float64)
        for layer in layers if hessians else ():
            second_moments[layer.name].add(_as_nchw(exposed[index[layer.index]], layer))
    by_layer = {layer.name: calibrators[index[layer.index]] for layer in layers}
    ranges = {name: calibrator.compute_range() for name, calibrator in by_layer.items()}
    for layer in layers:
        per_channel = channel_calibrators.get(index[layer.index])
        if per_channel is not None:
            channels = tuple(c.compute_range() for c in per_channel)
            ranges[layer.name] = dataclasses.replace(ranges[layer.name], channels=channels)
    # conv2d inputs in NCHW: the layout may change between calibration and quantization
    means = {layer.name: _as_nchw(sums[index[layer.index]] / len(samples), layer)
             for layer in layers if index[layer.index] in sums}
    seconds = time.perf_counter() - t0
    log.info("calibrated %d layers over %d samples (%s) in %.1f s", len(ranges), len(samples), method, seconds)
    histograms = {name: calibrator.histogram for name, calibrator in by_layer.items()}
    return CalibrationResult(method, ranges, len(samples), seconds, histograms, fp32_outputs, means,
                             {name: moment.mean for name, moment in second_moments.items()})
