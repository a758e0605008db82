"""INT8 quantization: fake-quant insertion from calibration, and lowering to real int8 math.

Two passes, one form between them (the same form ONNX Runtime's QDQ models import to):

``insert_qdq(plan)`` expects a module after kiln's simplification steps and a
``QuantizationPlan`` from calibration. For every quantizable layer (``int8_layers``) not
kept in FP32 it quantizes the data input per tensor (uint8; zero point 0 when calibration
never saw a negative value) — per channel for depthwise convs calibrated so (one zero point,
each channel its own scale: channel c only meets weight c, so int32 accumulation stays
exact) — and the constant weight per output channel (symmetric int8, ``weight_bits`` wide;
rounded to nearest, or as the plan's ``rounded_weights`` say: GPTQ, ``compiler.passes.gptq``),
and feeds the layer dequantized copies.

``lower_qdq()`` expects ``conv2d``/``matmul`` calls whose inputs are
``dequantize(q, scale, zero_point)`` of an activation and of a constant weight
(from ``insert_qdq`` or from an imported QDQ model). It guarantees they become a
convolution / matmul of the int8 tensors with **int32 accumulation**, the activation
zero point corrected exactly (explicit zero-point padding plus a constant per-channel
term), a following constant bias added in int32, and one float multiply by
``scale_x * scale_w[c]`` back to float. Everything after the accumulation is elementwise, so
``FuseOps`` keeps it, any ReLU and the next layer's ``quantize`` inside the layer's
kernel: consecutive quantized layers exchange int8/uint8 tensors. ``fold_relu_into_quantize``
drops a ReLU whose only readers quantize to uint8 with zero point 0 (the clip already does it).
Both passes follow each conv's own layouts (NCHW/OIHW or NHWC/OHWI after ``ConvertConvLayout``).
``lower_qdq(channel_multiple=4)`` pads the input channels of ungrouped convs to a multiple of 4
(zero-point data, zero weights: the sums do not change), so RGB first layers reach the
dot-product kernels.

Requantization uses a float scale: on x86 and ARM with FMA the float multiply is one
instruction per lane and the results match ONNX Runtime's (which also requantizes in float).
``fixed_point_requantize`` turns it into an integer multiplier and shift where asked
(``QuantizationPlan.requantize``; measured slower on AVX2, README "INT8 and FP16").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import Constant

from compiler.passes.calibrate import TensorRange
from compiler.passes.int8_layers import emit_like, find_layers, op_name, use_counts

log = logging.getLogger(__name__)


@dataclass
class QuantizationPlan:
    """What to quantize and how: calibrated ranges per layer name, layers kept in FP32."""

    ranges: dict[str, TensorRange]
    keep_fp32: set[str] = field(default_factory=set)
    weight_bits: int = 8  # 7 where the int8 kernel's 16-bit intermediate could saturate (AVX2 without VNNI)
    onnx_model: object = None  # for layer names
    channel_multiple: int = 1  # conv input channels padded to a multiple of this (4 for x86 int8 kernels)
    signed_activations: bool = False  # int8 activations (zero points - 128): AArch64 sdot kernels
    # Subtract from each layer's bias (layers with a constant bias add) the mean output shift its
    # weight rounding causes on the mean calibration input (``input_means``, from calibration).
    bias_correction: bool = False
    input_means: dict[str, np.ndarray] = field(default_factory=dict)
    requantize: str = "float"  # float | fixed_point (integer multiplier and shift: ``fixed_point_requantize``)
    # nearest | gptq: round weights so each layer's output on its calibration inputs moves least
    # (``compiler.passes.gptq``, done once by ``plan_int8``)
    weight_rounding: str = "nearest"
    # layer name -> its integer weights and scales when not rounded to nearest: conv2d weights
    # in OIHW, matmul weights [K, N] (each layer's own layout is applied when inserted)
    rounded_weights: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


@dataclass
class LayerReport:
    """One layer's quantization, for ``kiln quantize-report``."""

    name: str
    op: str
    quantized: bool
    activation_dtype: str = ""
    activation_scale: float = 0.0
    activation_zero_point: int = 0
    threshold: float = 0.0
    seen_min: float = 0.0
    seen_max: float = 0.0
    weight_error: float = 0.0  # relative L2 error of the quantized weights
    activation_error: float = 0.0  # relative L2 error of the quantized input (from the histogram)
    measured_error: float | None = None  # model output error with only this layer INT8 (sensitivity probe)
    # GPTQ: the layer's relative output error on its calibration inputs from weight rounding alone,
    # with GPTQ's rounding and with nearest rounding
    output_error: float | None = None
    nearest_output_error: float | None = None


def quantize_weight(weight: np.ndarray, axis: int, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel quantization along ``axis``: (int8 values, float32 scales)."""
    qmax = 2 ** (bits - 1) - 1
    moved = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)
    scale = np.abs(moved).max(axis=1) / qmax
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    shape = [1] * weight.ndim
    shape[axis] = -1
    q = np.clip(np.round(weight / scale.reshape(shape)), -qmax, qmax).astype(np.int8)
    return q, scale


def weight_rounding_shift(layer, weight: np.ndarray, dequantized: np.ndarray, mean: np.ndarray,
                          attrs=None) -> np.ndarray:
    """Per output channel, the mean change of ``layer``'s output over its output positions when
    ``weight`` becomes ``dequantized`` and the input is ``mean`` (the calibration inputs' mean
    tensor, NCHW for conv2d; the layer is linear, so this is the expected change). A conv2d's
    ``attrs`` (strides, padding, dilation) place the window; padding reads zeros, as the int8
    kernel's zero point does."""
    error = dequantized.astype(np.float64) - weight.astype(np.float64)
    if layer.op != "conv2d":  # matmul weight [K, N]: every row of the input meets the same error
        return mean.reshape(-1, mean.shape[-1]).mean(axis=0) @ error
    x = mean.mean(axis=0)  # [C, H, W]
    error = error.transpose([layer.kernel_layout.index(c) for c in "OIHW"])  # [O, I/groups, KH, KW]
    out_channels, in_per_group, kh, kw = error.shape
    (sy, sx), (dy, dx) = [int(v) for v in attrs.strides], [int(v) for v in attrs.dilation]
    top, left, bottom, right = [int(v) for v in attrs.padding]
    x = np.pad(x, ((0, 0), (top, bottom), (left, right)))
    out_h, out_w = (x.shape[1] - dy * (kh - 1) - 1) // sy + 1, (x.shape[2] - dx * (kw - 1) - 1) // sx + 1
    # seen[c, ky, kx]: the mean input that window tap (ky, kx) of channel c meets over the output
    seen = np.stack([np.stack([x[:, ky * dy:ky * dy + sy * (out_h - 1) + 1:sy,
                                 kx * dx:kx * dx + sx * (out_w - 1) + 1:sx].mean(axis=(1, 2))
                               for kx in range(kw)], axis=-1) for ky in range(kh)], axis=-2)
    groups = x.shape[0] // in_per_group
    per_output = seen.reshape(groups, in_per_group, kh, kw)[np.arange(out_channels) // (out_channels // groups)]
    return (error * per_output).sum(axis=(1, 2, 3))


def _const(value, dtype: str | None = None) -> Constant:
    array = np.asarray(value)
    if dtype is not None:
        array = array.astype(dtype)
    return relax.const(array, str(array.dtype))


def activation_zero_points(rng: TensorRange, signed: bool, per_channel: bool = False) -> tuple[str, np.ndarray]:
    """(dtype, zero point(s)) of a quantized activation: calibration's uint8 range, or with
    ``signed`` the same steps as int8 (every value and zero point shifted by -128, so
    ``x_int8 - zp_int8 == x_uint8 - zp_uint8``: the same dequantized values)."""
    zeros = np.asarray(rng.channel_zero_points() if per_channel else rng.zero_point, rng.dtype)
    if signed and rng.dtype == "uint8":
        return "int8", (zeros.astype(np.int16) - 128).astype(np.int8)
    return rng.dtype, zeros


def conv_pad_width(attrs, layout: str, channels: tuple[int, int] = (0, 0)) -> list[int]:
    """``nn.pad`` widths (before, after per axis of ``layout``) for a conv2d's own spatial padding,
    plus ``channels`` (before, after) on its channel axis."""
    top, left, bottom, right = [int(p) for p in attrs.padding]
    per_axis = {"H": (top, bottom), "W": (left, right), "C": channels}
    return [w for axis in layout for w in per_axis.get(axis, (0, 0))]


PROBE_PARAM = "kiln_keep_fp32"  # the probe module's extra input: one bool per probed layer


def probed_layers(plan: QuantizationPlan, layers) -> list[str]:
    """Names of the layers ``insert_qdq(plan, probe=True)`` gives a switch, in mask order."""
    return [layer.name for layer in layers if layer.name not in plan.keep_fp32 and layer.name in plan.ranges]


def insert_qdq(plan: QuantizationPlan, probe: bool = False) -> tvm.transform.Pass:
    """Fake-quantize every planned layer (see module doc).

    ``probe=True`` builds a sensitivity probe instead: every planned layer computes both its
    quantized and its FP32 result, and ``main`` takes one more input, ``kiln_keep_fp32``
    (bool, one entry per layer in ``probed_layers`` order), that picks the FP32 result where
    set (after the layer's bias add, so the quantized bias still folds into int32). One build
    then answers "what if these layers stayed FP32" for any set as a build with those layers in
    ``keep_fp32`` would (same int8 kernels, same FP32 convs; kernels fused differently can
    round a requantized value the other way: relative output differences ~1e-5).
    """

    @tvm.transform.module_pass(opt_level=0, name="kiln.InsertQDQ")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        found = find_layers(mod, plan.onnx_model)
        layers = {layer.output: layer for layer in found}
        switch = {name: i for i, name in enumerate(probed_layers(plan, found))}
        mask = relax.Var(PROBE_PARAM, relax.TensorType([len(switch)], "bool")) if probe else None
        # The probe switches after a layer's bias add, which LowerQDQ folds into the int32 accumulator.
        bias_adds = _sole_bias_adds(mod["main"], set(layers)) if probe or plan.bias_correction else {}
        absorbed = {binding.var for binding in bias_adds.values()} if probe else set()

        @relax.expr_functor.mutator
        class _Insert(relax.PyExprMutator):
            def __init__(self, module):
                super().__init__(module)
                self.quantized_inputs: dict = {}  # original data var -> per-tensor dequantized var (shared)
                self.corrected_biases: dict = {}  # bias add var -> its bias minus the weight-rounding shift

            def visit_var_binding_(self, binding):
                if binding.var in absorbed:
                    return None  # emitted with its layer (probe)
                if binding.var in self.corrected_biases:
                    value = relax.op.add(self.visit_expr(binding.value.args[0]), self.corrected_biases[binding.var])
                    self.set_var_remap(binding.var, emit_like(self.builder_, value, binding.var))
                    return None
                layer = layers.get(binding.var)
                if layer is None or layer.name not in switch:
                    return super().visit_var_binding_(binding)
                call = binding.value
                rng = plan.ranges[layer.name]
                source = data = self.visit_expr(call.args[0])
                per_channel = rng.channels is not None and layer.depthwise
                attrs = call.attrs
                if per_channel and any(int(p) for p in attrs.padding):
                    # Each channel has its own zero point: pad in float (0.0 quantizes to each
                    # channel's zero point), so the int8 conv needs no padding value of its own.
                    data = self.builder_.emit(relax.op.nn.pad(data, conv_pad_width(attrs, layer.data_layout)))
                    attrs = _conv_attrs_without_padding(attrs)
                # A per-channel (possibly pre-padded) input is its depthwise layer's own: not shared.
                dq = None if per_channel else self.quantized_inputs.get(call.args[0])
                if dq is None:
                    dtype, zeros = activation_zero_points(rng, plan.signed_activations, per_channel)
                    if per_channel:  # depthwise: channel c only meets weights of channel c
                        scale, zero, axis = _const(rng.channel_scales()), _const(zeros), layer.channel_axis
                    else:
                        scale, zero, axis = _const(rng.scale, "float32"), _const(zeros), -1
                    q = self.builder_.emit(relax.op.quantize(data, scale, zero, axis=axis, out_dtype=dtype))
                    dq = self.builder_.emit(relax.op.dequantize(q, scale, zero, axis=axis, out_dtype="float32"))
                    if not per_channel:
                        self.quantized_inputs[call.args[0]] = dq
                weight = layer.weight.value.numpy()
                axis = layer.weight_axis
                rounded = plan.rounded_weights.get(layer.name)
                if rounded is None:
                    wq, wscale = quantize_weight(weight, axis, plan.weight_bits)
                else:
                    wq, wscale = rounded
                    if layer.op == "conv2d":  # OIHW -> this conv's kernel layout
                        wq = np.ascontiguousarray(wq.transpose(["OIHW".index(c) for c in layer.kernel_layout]))
                wdq = self.builder_.emit(relax.op.dequantize(
                    _const(wq), _const(wscale), _const(np.zeros(len(wscale), np.int8)), axis=axis,
                    out_dtype="float32"))
                new_value = relax.Call(call.op, [dq, wdq], attrs, call.ty_args)
                add = bias_adds.get(binding.var)
                corrected_bias = None
                if plan.bias_correction and add is not None and layer.name in plan.input_means:
                    shape = [1] * weight.ndim
                    shape[axis] = -1
                    shift = weight_rounding_shift(layer, weight, wq * wscale.reshape(shape),
                                                  plan.input_means[layer.name], call.attrs)
                    bias = add.value.args[1].value.numpy()
                    if bias.size == shift.size:
                        corrected_bias = _const((bias - shift.reshape(bias.shape)).astype(bias.dtype))
                        if mask is None:
                            self.corrected_biases[add.var] = corrected_bias
                if mask is None:
                    self.set_var_remap(binding.var, emit_like(self.builder_, new_value, binding.var))
                    return None
                quantized = self.builder_.emit(new_value)
                fp32 = self.builder_.emit(relax.Call(call.op, [source, self.visit_expr(call.args[1])],
                                                     call.attrs, call.ty_args))
                replaced = binding.var
                if add is not None:
                    bias = self.visit_expr(add.value.args[1])
                    quantized_bias = bias if corrected_bias is None else corrected_bias
                    quantized = self.builder_.emit(relax.op.add(quantized, quantized_bias))
                    fp32 = self.builder_.emit(relax.op.add(fp32, bias))
                    replaced = add.var
                keep = relax.op.take(mask, _const(switch[layer.name], "int64"), axis=0, mode="clip")
                self.set_var_remap(replaced, emit_like(self.builder_, relax.op.where(keep, fp32, quantized),
                                                        replaced))

        mutator = _Insert(mod)
        out = tvm.IRModule(dict(mod.functions_items()))
        main = mutator.visit_expr(mod["main"])
        if mask is not None:
            main = relax.Function([*main.params, mask], main.body, main.ret_ty, is_pure=True,
                                  attrs=main.attrs)
        out["main"] = main
        return relax.transform.Normalize()(out)

    return _pass


def _conv_attrs_without_padding(attrs):
    """The attributes of a conv2d call with its padding set to 0 (the input was padded already)."""
    return tvm.ir.make_node("relax.attrs.Conv2DAttrs", strides=attrs.strides, padding=[0, 0, 0, 0],
                            dilation=attrs.dilation, groups=attrs.groups, data_layout=attrs.data_layout,
                            kernel_layout=attrs.kernel_layout, out_layout=attrs.out_layout,
                            out_dtype=attrs.out_dtype)


def _sole_bias_adds(func: relax.Function, outputs: set) -> dict:
    """Layer output var -> the binding ``add(output, constant)`` that is its only use."""
    uses = use_counts(func)
    bindings = [b for block in func.body.blocks for b in block.bindings]
    adds = {}
    for b in bindings:
        if op_name(b.value) == "relax.add" and b.value.args[0] in outputs and uses.get(b.value.args[0]) == 1 \
                and isinstance(b.value.args[1], Constant):
            adds[b.value.args[0]] = b
    return adds


def _along(param: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """A quantization parameter shaped to broadcast against an ``ndim``-D tensor: one value as it
    is, a vector along ``axis``."""
    if param.ndim == 0 or ndim == 0:
        return param.reshape(())
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return param.reshape(shape)


class _ConstEval:
    """Values of constant sub-expressions the importer left unfolded (dequantize, reshape, …)."""

    def __init__(self, lookup) -> None:
        self.lookup = lookup

    def binding(self, expr):
        return self.lookup(expr) if isinstance(expr, relax.Var) else expr

    def value(self, expr) -> np.ndarray | None:
        expr = self.binding(expr)
        if isinstance(expr, Constant):
            return expr.value.numpy()
        op = op_name(expr)
        if op in ("relax.dequantize", "relax.quantize"):
            parts = [self.value(a) for a in expr.args]
            if any(p is None for p in parts):
                return None
            x, scale, zero = parts
            scale, zero = (_along(p.astype(np.float32), x.ndim, int(expr.attrs.axis)) for p in (scale, zero))
            if op == "relax.dequantize":
                return (x.astype(np.float32) - zero) * scale
            # a weight quantized at run time (ONNX Runtime's Constant-node weights)
            info = np.iinfo(np.dtype(str(expr.attrs.out_dtype)))
            q = np.rint(x.astype(np.float32) / scale) + zero
            return np.clip(q, info.min, info.max).astype(info.dtype)
        if op == "relax.reshape":
            inner = self.value(expr.args[0])
            return None if inner is None else inner.reshape([int(d) for d in expr.ty.shape.values])
        if op == "relax.permute_dims":
            inner = self.value(expr.args[0])
            axes = expr.attrs.axes
            return None if inner is None else np.transpose(inner, None if axes is None else [int(a) for a in axes])
        return None

    def dequantized(self, expr):
        """``(q_expr, scale, zero_point, axis)`` if ``expr`` is bound to a dequantize, else None."""
        call = self.binding(expr)
        if op_name(call) != "relax.dequantize":
            return None
        scale, zero = self.value(call.args[1]), self.value(call.args[2])
        if scale is None or zero is None:
            return None
        return call.args[0], scale.astype(np.float32), zero.astype(np.int64), int(call.attrs.axis)

    def int8_weight(self, expr) -> tuple[np.ndarray, np.ndarray, int | None] | None:
        """A constant weight behind dequantize (and a transpose) as symmetric int8: (values, scales, axis).

        ``axis`` is the axis the scales run along, None for one scale for the whole tensor (the
        caller's output-channel axis then). int8 with zero point 0 passes as it is. A zero point,
        or uint8 values (ONNX Runtime quantizes weights held in Constant nodes like activations,
        at run time), is subtracted first; where ``q - zero_point`` leaves the int8 range the
        tensor (or channel) is rescaled into it."""
        call = self.binding(expr)
        transpose = None
        if op_name(call) == "relax.permute_dims":
            axes = call.attrs.axes
            transpose = None if axes is None else [int(a) for a in axes]
            call = self.binding(call.args[0])
            if transpose is None:
                transpose = list(range(len(call.ty.shape)))[::-1]
        found = self.dequantized(call)
        if found is None:
            return None
        q_expr, scale, zero, axis = found
        q = self.value(q_expr)
        if q is None or q.dtype not in (np.int8, np.uint8) or q.ndim == 0:
            return None
        per_tensor = scale.size == 1 and zero.size == 1
        axis = None if per_tensor else axis % q.ndim
        scale = scale.reshape(()) if per_tensor else scale
        if q.dtype != np.int8 or np.any(zero != 0):
            centred = q.astype(np.int32) - _along(zero.astype(np.int32), q.ndim, axis or 0)
            channel = [1] * q.ndim
            if axis is not None:
                channel[axis] = -1
            if axis is None:
                factor = np.float64(max(np.abs(centred).max() / 127, 1.0))
            else:
                peak = np.abs(np.moveaxis(centred, axis, 0).reshape(q.shape[axis], -1)).max(axis=1)
                factor = np.where(peak > 127, peak / 127, 1.0)
            q = np.clip(np.round(centred / np.reshape(factor, channel if axis is not None else [])),
                        -127, 127).astype(np.int8)
            scale = (scale * factor).astype(np.float32)
        if transpose is not None:
            q = np.transpose(q, transpose)
            axis = None if axis is None else transpose.index(axis)
        return q, scale, axis


def _requantize_to_bits(q: np.ndarray, scale: np.ndarray, axis: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Narrow int8 weights so ``|w| <= 2**(bits-1)`` (per channel, only where needed); scales grow to match.

    For 7 bits the bound is 64: ``2 * 255 * 64`` still fits the int16 sum of AVX2's
    ``vpmaddubsw``. ONNX Runtime's ``reduce_range`` weights (-64..63) pass unchanged.
    """
    limit = 2 ** (bits - 1)
    moved = np.moveaxis(q, axis, 0).astype(np.float64)
    peak = np.abs(moved.reshape(moved.shape[0], -1)).max(axis=1)
    factor = np.where(peak > limit, peak / (limit - 1), 1.0)
    if np.all(factor == 1.0):
        return q, scale
    shape = [-1] + [1] * (q.ndim - 1)
    narrowed = np.clip(np.round(moved / factor.reshape(shape)), -(limit - 1), limit - 1).astype(np.int8)
    log.info("narrowed the int8 weights of %d channels to %d bits for this target", int(np.sum(factor > 1)), bits)
    return np.moveaxis(narrowed, 0, axis), (scale * factor).astype(np.float32)


def lower_qdq(weight_bits: int = 8, channel_multiple: int = 1) -> tvm.transform.Pass:
    """Turn dequantize→conv2d/matmul into int8 math with int32 accumulation (see module doc).

    ``channel_multiple``: input channels of ungrouped convs are padded to a multiple of it
    (4 where the target's dot-product kernels reduce 4 channels per step)."""

    @tvm.transform.module_pass(opt_level=0, name="kiln.LowerQDQ")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        @relax.expr_functor.mutator
        class _Lower(relax.PyExprMutator):
            def __init__(self, module):
                super().__init__(module)
                self.const = _ConstEval(self.lookup_binding)
                self.scaled: dict = {}  # new float var -> (int32 accumulator var, per-channel scale array)
                self.lowered = 0
                self.float_weights: list[str] = []  # dequantized layers whose weight is no 8-bit constant: why

            def visit_var_binding_(self, binding):
                value = binding.value
                op = op_name(value)
                new_var = None
                if op in ("relax.nn.conv2d", "relax.matmul"):
                    new_var = self._lower_layer(binding)
                elif op == "relax.add":
                    new_var = self._fold_bias(binding)
                if new_var is None:
                    return super().visit_var_binding_(binding)
                self.set_var_remap(binding.var, new_var)

            def _lower_layer(self, binding):
                call = binding.value
                data = self.const.dequantized(call.args[0])
                weight = self.const.int8_weight(call.args[1])
                quantized_weight = self.const.dequantized(call.args[1])
                if data is not None and weight is None and quantized_weight is not None:
                    q = self.const.value(quantized_weight[0])
                    if q is not None:  # a constant, not an activation (attention's Q.K: float, as it should)
                        self.float_weights.append(f"{q.dtype} weights")
                if data is None or weight is None:
                    return None
                q_expr, sx, zx, data_axis = data
                wq, sw, axis = weight
                conv = op_name(call) == "relax.nn.conv2d"
                if conv:
                    attrs = call.attrs
                    data_layout, kernel_layout = str(attrs.data_layout), str(attrs.kernel_layout)
                    out_layout = str(attrs.out_layout) or data_layout
                    c_axis, o_axis, i_axis = data_layout.index("C"), kernel_layout.index("O"), kernel_layout.index("I")
                out_axis = o_axis if conv else wq.ndim - 1
                if axis is None:  # one scale for the tensor: one per output channel, all equal
                    axis, sw = out_axis, np.full(wq.shape[out_axis], float(sw), np.float32)
                if axis != out_axis:
                    return None  # scales must run along the output channels
                if sx.size != 1 or zx.size != 1:
                    # Per-channel activation scales and zero points only where each output channel
                    # reads one input channel (depthwise) and nothing pads the int8 tensor.
                    depthwise = (conv and int(attrs.groups) == wq.shape[o_axis] == sx.size == zx.size
                                 and wq.shape[i_axis] == 1 and data_axis % 4 == c_axis)
                    if not depthwise or any(int(p) for p in attrs.padding):
                        return None
                wq, sw = _requantize_to_bits(wq, sw, axis, weight_bits)
                q = self.visit_expr(q_expr)
                zero = int(zx.reshape(-1)[0])
                if conv:
                    padding = [int(p) for p in attrs.padding]
                    # Channels padded (zero-point inputs, zero weights: the sums do not change) to a
                    # multiple the target's int8 kernels need: RGB inputs reach the dot-product kernels.
                    extra = -wq.shape[i_axis] % channel_multiple if int(attrs.groups) == 1 else 0
                    if extra or (zero != 0 and any(padding)):
                        q = self.builder_.emit(relax.op.nn.pad(q, conv_pad_width(attrs, data_layout, (0, extra)),
                                                               pad_value=float(zero)))
                        padding = [0, 0, 0, 0]
                    if extra:
                        widths = [(0, extra if i == i_axis else 0) for i in range(wq.ndim)]
                        wq = np.pad(wq, widths)
                    acc = self.builder_.emit(relax.op.nn.conv2d(
                        q, _const(wq), strides=[int(s) for s in attrs.strides], padding=padding,
                        dilation=[int(d) for d in attrs.dilation], groups=int(attrs.groups),
                        data_layout=data_layout, kernel_layout=kernel_layout,
                        out_layout=out_layout, out_dtype="int32"))
                    channel_shape = [1, 1, 1, 1]
                    channel_shape[out_layout.index("C")] = wq.shape[o_axis]
                    weight_sums = np.moveaxis(wq.astype(np.int64), o_axis, 0).reshape(wq.shape[o_axis], -1).sum(axis=1)
                else:
                    if wq.ndim != 2:
                        return None
                    acc = self.builder_.emit(relax.op.matmul(q, _const(wq), out_dtype="int32"))
                    channel_shape = [wq.shape[1]]
                    weight_sums = wq.astype(np.int64).sum(axis=0)
                zeros = zx.reshape(-1).astype(np.int64)  # one, or one per channel (depthwise)
                if np.any(zeros != 0):
                    correction = (zeros * weight_sums).astype(np.int32).reshape(channel_shape)
                    acc = self.builder_.emit(relax.op.subtract(acc, _const(correction)))
                scale = (sx.reshape(-1) * sw).astype(np.float32).reshape(channel_shape)
                self.lowered += 1
                return self._emit_scaled(acc, scale, binding.var)

            def _emit_scaled(self, acc, scale: np.ndarray, replaces: relax.Var):
                as_float = self.builder_.emit(relax.op.astype(acc, "float32"))
                out = emit_like(self.builder_, relax.op.multiply(as_float, _const(scale)), replaces)
                self.scaled[out] = (acc, scale)
                return out

            def _fold_bias(self, binding):
                lhs, rhs = binding.value.args
                source = self.visit_expr(lhs)
                entry = self.scaled.get(source)
                bias = self.const.value(rhs)
                if entry is None or bias is None:
                    return None
                acc, scale = entry
                if bias.size not in (1, scale.size) or bias.ndim > scale.ndim:
                    return None
                bias_q = np.round(np.broadcast_to(bias.reshape(-1) if bias.size > 1 else bias.reshape(()),
                                                  (scale.size,)).reshape(scale.shape) / scale)
                if not np.all(np.abs(bias_q) < 2**30):  # not representable next to the accumulator
                    log.info("bias of %s kept in float (bias / scale out of int32 range)", binding.var.name)
                    return None
                acc = self.builder_.emit(relax.op.add(acc, _const(bias_q.astype(np.int32))))
                return self._emit_scaled(acc, scale, binding.var)

        mutator = _Lower(mod)
        out = tvm.IRModule(dict(mod.functions_items()))
        out["main"] = mutator.visit_expr(mod["main"])
        if mutator.lowered:
            log.info("lowered %d layers to int8 with int32 accumulation", mutator.lowered)
        if mutator.float_weights:
            log.warning("%d quantized conv/matmul layers of this QDQ model keep float math: kiln's int8 kernels "
                        "need 8-bit constant weights, these have %s; quantize the weights to int8 (quantize_static's "
                        "weight_type=QuantType.QInt8) for int8 kernels", len(mutator.float_weights),
                        ", ".join(sorted(set(mutator.float_weights))))
        return relax.transform.DeadCodeElimination()(relax.transform.Normalize()(out))

    return _pass


@tvm.transform.module_pass(opt_level=0, name="kiln.FoldReluIntoQuantize")
def fold_relu_into_quantize(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Drop ``relu`` whose every reader quantizes with its type's lowest zero point (uint8 0, int8
    -128): the quantize's clip does it."""
    bindings = {b.var: b.value for block in mod["main"].body.blocks for b in block.bindings}
    readers: dict = {}
    for var, value in bindings.items():
        for arg in getattr(value, "args", []):
            if isinstance(arg, relax.Var):
                readers.setdefault(arg, []).append(value)

    lowest = {"uint8": 0, "int8": -128}

    def _clips_at_zero(value) -> bool:
        """A quantize whose zero point is its type's lowest value: it clips negatives itself."""
        dtype = str(value.attrs.out_dtype) if op_name(value) == "relax.quantize" else None
        zero = value.args[2] if dtype in lowest else None
        return isinstance(zero, Constant) and bool(np.all(zero.value.numpy() == lowest[dtype]))

    droppable = {var for var, value in bindings.items()
                 if op_name(value) == "relax.nn.relu" and readers.get(var)
                 and all(_clips_at_zero(r) for r in readers[var])}
    if not droppable:
        return mod

    @relax.expr_functor.mutator
    class _Drop(relax.PyExprMutator):
        def visit_var_binding_(self, binding):
            if binding.var in droppable:
                self.set_var_remap(binding.var, self.visit_expr(binding.value.args[0]))
                return
            super().visit_var_binding_(binding)

    out = tvm.IRModule(dict(mod.functions_items()))
    out["main"] = _Drop(mod).visit_expr(mod["main"])
    return relax.transform.Normalize()(out)
