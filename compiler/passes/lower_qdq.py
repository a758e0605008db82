"""``LowerQDQ``: dequantize -> conv2d/matmul as int8 math with int32 accumulation.

Expects ``conv2d``/``matmul`` calls whose inputs are ``dequantize(q, scale, zero_point)`` of an
activation and of a constant weight (from ``InsertQDQ`` or from an imported QDQ model). It
guarantees they become a convolution / matmul of the int8 tensors with **int32 accumulation**,
the activation zero point corrected exactly (explicit zero-point padding plus a constant
per-channel term), a following constant bias added in int32, and one float multiply by
``scale_x * scale_w[c]`` back to float. Everything after the accumulation is elementwise, so
``FuseOps`` keeps it, any ReLU and the next layer's ``quantize`` inside the layer's kernel:
consecutive quantized layers exchange int8/uint8 tensors. It follows each conv's own layouts
(NCHW/OIHW or NHWC/OHWI after ``ConvertConvLayout``). ``lower_qdq(channel_multiple=4)`` pads the
input channels of ungrouped convs to a multiple of 4 (zero-point data, zero weights: the sums do
not change), so RGB first layers reach the dot-product kernels.

Requantization uses a float scale: on x86 and ARM with FMA the float multiply is one
instruction per lane and the results match ONNX Runtime's (which also requantizes in float).
``FixedPointRequantize`` turns it into an integer multiplier and shift where asked
(``QuantizationPlan.requantize``).
"""

from __future__ import annotations

import logging

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import Constant

from compiler.quantization.layers import const, conv_pad_width, emit_like, op_name

log = logging.getLogger(__name__)


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

    @tvm.transform.module_pass(opt_level=0, name="LowerQDQ")
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
                        q, const(wq), strides=[int(s) for s in attrs.strides], padding=padding,
                        dilation=[int(d) for d in attrs.dilation], groups=int(attrs.groups),
                        data_layout=data_layout, kernel_layout=kernel_layout,
                        out_layout=out_layout, out_dtype="int32"))
                    channel_shape = [1, 1, 1, 1]
                    channel_shape[out_layout.index("C")] = wq.shape[o_axis]
                    weight_sums = np.moveaxis(wq.astype(np.int64), o_axis, 0).reshape(wq.shape[o_axis], -1).sum(axis=1)
                else:
                    if wq.ndim != 2:
                        return None
                    acc = self.builder_.emit(relax.op.matmul(q, const(wq), out_dtype="int32"))
                    channel_shape = [wq.shape[1]]
                    weight_sums = wq.astype(np.int64).sum(axis=0)
                zeros = zx.reshape(-1).astype(np.int64)  # one, or one per channel (depthwise)
                if np.any(zeros != 0):
                    correction = (zeros * weight_sums).astype(np.int32).reshape(channel_shape)
                    acc = self.builder_.emit(relax.op.subtract(acc, const(correction)))
                scale = (sx.reshape(-1) * sw).astype(np.float32).reshape(channel_shape)
                self.lowered += 1
                return self._emit_scaled(acc, scale, binding.var)

            def _emit_scaled(self, acc, scale: np.ndarray, replaces: relax.Var):
                as_float = self.builder_.emit(relax.op.astype(acc, "float32"))
                out = emit_like(self.builder_, relax.op.multiply(as_float, const(scale)), replaces)
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
                acc = self.builder_.emit(relax.op.add(acc, const(bias_q.astype(np.int32))))
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
