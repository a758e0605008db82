"""ONNX Runtime's dynamic quantization (``quantize_dynamic``) → Relax int8 math.

Activations are quantized at run time (``DynamicQuantizeLinear``: per-tensor uint8 scale and
zero point from the tensor's own range, ONNX's formula), weights are int8 constants. Each
integer product becomes what kiln's int8 kernels take, ``matmul``/``conv2d`` of the uint8
activation and the int8 weight with **int32 accumulation** (``schedules.rules.Int8Tensorized``
schedules it with the CPU's dot-product instructions), followed by exact zero-point
corrections in int32; results equal ONNX Runtime's integers.

* ``DynamicQuantizeLinear``, ``MatMulInteger``, ``ConvInteger`` (2-D; ONNX domain);
* ``MatMulIntegerToFloat``, ``DynamicQuantizeMatMul`` (com.microsoft): the same product, scaled
  back to float (plus bias);
* ``DynamicQuantizeLSTM`` (com.microsoft): the input projection with ``W`` dequantized at
  compile time; the recurrence kernel reads ``R`` as int8 and sums in float32, each row's scale
  applied after the sum (exactly a float LSTM with the dequantized weights; ONNX Runtime also
  quantizes every step's hidden state, so the two differ by that quantization noise).
"""

from __future__ import annotations

import numpy as np
from tvm import relax
from tvm.ir.expr import Constant
from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

from compiler.converters.recurrent import convert_recurrent


def _const(value: np.ndarray | float, dtype: str) -> Constant:
    return relax.const(np.asarray(value, dtype=dtype), dtype)


def _value(expr) -> np.ndarray | None:
    """The value of a constant input (None when it is computed at run time)."""
    return expr.value.numpy() if isinstance(expr, Constant) else None


def _int32(expr) -> relax.Expr:
    return relax.op.astype(expr, "int32")


PARTIAL_ROWS = 64  # a whole-tensor min/max as this many row reductions, then one over the rows


def _whole_tensor(reduce, x: relax.Expr) -> relax.Expr:
    """``reduce`` over every element of ``x`` in two steps: rows of a [PARTIAL_ROWS, n/PARTIAL_ROWS]
    view reduce in parallel, vectorized (kiln's RowReduction), then the row results. A direct
    reduction to one value runs as one scalar loop (0.3 ms for 128×3072 values)."""
    size = int(np.prod([int(v) for v in x.ty.shape.values]))
    if size % PARTIAL_ROWS or size < 64 * PARTIAL_ROWS:
        return reduce(x)
    return reduce(reduce(relax.op.reshape(x, (PARTIAL_ROWS, size // PARTIAL_ROWS)), axis=[1]))


def dynamic_quantize(x: relax.Expr) -> tuple[relax.Expr, relax.Expr, relax.Expr]:
    """ONNX ``DynamicQuantizeLinear``: (uint8 values, float32 scale, uint8 zero point), as ONNX
    Runtime computes them (range widened to include 0; scale 1 for a constant-zero tensor)."""
    op = relax.op
    lo = op.minimum(_whole_tensor(op.min, x), _const(0.0, "float32"))
    hi = op.maximum(_whole_tensor(op.max, x), _const(0.0, "float32"))
    span = op.subtract(hi, lo)
    scale = op.where(op.equal(span, _const(0.0, "float32")), _const(1.0, "float32"),
                     op.divide(span, _const(255.0, "float32")))
    zero_f = op.round(op.clip(op.negative(op.divide(lo, scale)), 0.0, 255.0))
    q = op.clip(op.add(op.round(op.divide(x, scale)), zero_f), 0.0, 255.0)
    return op.astype(q, "uint8"), scale, op.astype(zero_f, "uint8")


def integer_matmul(a: relax.Expr, b: relax.Expr, a_zero=None, b_zero=None) -> relax.Expr:
    """``(A - a_zero) · (B - b_zero)`` in int32, as ONNX ``MatMulInteger``.

    ``A·B`` is one int8 matmul with int32 accumulation; the zero points come off exactly:
    ``- rowsum(A) ⊗ b_zero - a_zero · colsum(B - b_zero)``."""
    op = relax.op
    acc = op.matmul(a, b, out_dtype="int32")
    b_zero_value = _value(b_zero) if b_zero is not None else np.zeros(())
    b_centred = _int32(b) if b_zero is None else op.subtract(_int32(b), _int32(b_zero))
    if b_zero is not None and (b_zero_value is None or np.any(b_zero_value != 0)):
        rows = op.sum(_int32(a), axis=[-1], keepdims=True)
        acc = op.subtract(acc, op.multiply(rows, _int32(b_zero)))
    if a_zero is not None and not (_value(a_zero) is not None and np.all(_value(a_zero) == 0)):
        acc = op.subtract(acc, op.multiply(_int32(a_zero), op.sum(b_centred, axis=[-2])))
    return acc


def _conv_attrs(attr: dict, weight_shape: list[int]) -> dict:
    if len(weight_shape) != 4:
        raise ValueError(f"ConvInteger is supported for 2-D convolutions (weight rank {len(weight_shape)})")
    auto_pad = attr.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if auto_pad not in ("NOTSET", "VALID"):
        raise ValueError(f"ConvInteger with auto_pad={auto_pad} is not supported (use explicit pads)")
    pads = list(attr.get("pads", (0, 0, 0, 0))) if auto_pad == "NOTSET" else [0, 0, 0, 0]
    return {"strides": list(attr.get("strides", (1, 1))), "padding": [pads[0], pads[1], pads[2], pads[3]],
            "dilation": list(attr.get("dilations", (1, 1))), "groups": int(attr.get("group", 1))}


def integer_conv(x, w, x_zero, w_zero, attr: dict) -> relax.Expr:
    """ONNX ``ConvInteger`` (padding holds the zero point) in int32: ``conv(x, w)`` with int32
    accumulation, minus ``x_zero`` times the weight sums each output position covers (a constant,
    folded at compile time), minus the weight zero point's share where it is not 0."""
    op = relax.op
    w_shape = [int(v) for v in w.ty.shape.values]
    x_shape = [int(v) for v in x.ty.shape.values]
    conv = _conv_attrs(attr, w_shape)
    w_zero_value = _value(w_zero) if w_zero is not None else np.zeros(())
    if w_zero is not None and (w_zero_value is None or np.any(w_zero_value != 0)):
        w_centred = op.subtract(_int32(w), op.reshape(_int32(w_zero), (-1, 1, 1, 1)) if w_zero_value is None
                                or w_zero_value.size > 1 else _int32(w_zero))
        acc = op.nn.conv2d(_int32(x), w_centred, **conv, out_dtype="int32")  # uncommon: plain int32 conv
    else:
        w_centred = _int32(w)
        acc = op.nn.conv2d(x, w, **conv, out_dtype="int32")
    if x_zero is not None and not (_value(x_zero) is not None and np.all(_value(x_zero) == 0)):
        w_value = _value(w)
        if w_value is not None and (w_zero is None or w_zero_value is not None):
            centred = w_value.astype(np.int64) - (np.asarray(w_zero_value).reshape(-1, 1, 1, 1)
                                                  if w_zero is not None and np.size(w_zero_value) > 1
                                                  else np.int64(w_zero_value if w_zero is not None else 0))
            window_sums = _const(window_sums_of(centred, x_shape[2:], conv), "int32")
        else:  # weights computed at run time: the same sums by a convolution of ones
            ones = op.ones(relax.ShapeExpr([1, *x_shape[1:]]), "int32")
            window_sums = op.nn.conv2d(ones, w_centred, **conv, out_dtype="int32")
        acc = op.subtract(acc, op.multiply(_int32(x_zero), window_sums))
    return acc


def window_sums_of(weight: np.ndarray, size: list[int], conv: dict) -> np.ndarray:
    """[1, O, OH, OW]: for each output position, the sum of the weights that meet real input
    (not padding) there: ``conv2d(ones, weight)`` with ``conv``'s strides, padding, dilation."""
    (sh, sw), (top, left, bottom, right), (dh, dw) = conv["strides"], conv["padding"], conv["dilation"]
    per_tap = weight.sum(axis=1)  # [O, KH, KW]: every input channel of the group is real input
    kh, kw = per_tap.shape[1:]
    out_h = (size[0] + top + bottom - dh * (kh - 1) - 1) // sh + 1
    out_w = (size[1] + left + right - dw * (kw - 1) - 1) // sw + 1
    rows = np.arange(out_h)[:, None] * sh - top + np.arange(kh)[None, :] * dh  # [OH, KH] input row
    cols = np.arange(out_w)[:, None] * sw - left + np.arange(kw)[None, :] * dw  # [OW, KW]
    row_ok = ((rows >= 0) & (rows < size[0])).astype(np.int64)
    col_ok = ((cols >= 0) & (cols < size[1])).astype(np.int64)
    sums = np.einsum("okl,hk,wl->ohw", per_tap, row_ok, col_ok)
    return sums[None].astype(np.int32)


def _scaled(acc, a_scale, b_scale, bias=None) -> relax.Expr:
    """int32 ``acc`` back to float: times ``a_scale · b_scale`` (per tensor or per column), plus ``bias``."""
    op = relax.op
    out = op.multiply(op.astype(acc, "float32"), op.multiply(a_scale, b_scale))
    return out if bias is None else op.add(out, bias)


def _opt(inputs, i):
    return inputs[i] if len(inputs) > i else None


class DynamicQuantizeLinear(OnnxOpConverter):
    @classmethod
    def _impl_v11(cls, bb, inputs, attr, params):
        return relax.Tuple(list(dynamic_quantize(inputs[0])))


class MatMulInteger(OnnxOpConverter):
    @classmethod
    def _impl_v10(cls, bb, inputs, attr, params):
        return integer_matmul(inputs[0], inputs[1], _opt(inputs, 2), _opt(inputs, 3))


class ConvInteger(OnnxOpConverter):
    @classmethod
    def _impl_v10(cls, bb, inputs, attr, params):
        return integer_conv(inputs[0], inputs[1], _opt(inputs, 2), _opt(inputs, 3), attr)


class MatMulIntegerToFloat(OnnxOpConverter):
    """com.microsoft: A, B, a_scale, b_scale[, a_zero_point, b_zero_point, bias]."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        acc = integer_matmul(inputs[0], inputs[1], _opt(inputs, 4), _opt(inputs, 5))
        return _scaled(acc, inputs[2], inputs[3], _opt(inputs, 6))


class DynamicQuantizeMatMul(OnnxOpConverter):
    """com.microsoft: A (float), B, b_scale[, b_zero_point, bias]."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        q, scale, zero = (bb.emit(e) for e in dynamic_quantize(inputs[0]))
        acc = integer_matmul(q, inputs[1], zero, _opt(inputs, 3))
        return _scaled(acc, scale, inputs[2], _opt(inputs, 4))


def _dequantized_gates(q, scale, zero) -> relax.Expr:
    """[D, in, G·H] int8 with per-direction or per-column scale/zero point → float [D, G·H, in]."""
    op = relax.op
    d = int(q.ty.shape.values[0])
    shape = (d, 1, 1) if len(scale.ty.shape.values) == 1 else (d, 1, -1)
    centred = op.subtract(op.astype(q, "float32"), op.reshape(op.astype(zero, "float32"), shape))
    return op.permute_dims(op.multiply(centred, op.reshape(scale, shape)), (0, 2, 1))


def _int8_rows(q, scale, zero) -> tuple[relax.Expr, relax.Expr] | None:
    """R [D, H, 4H] int8 with zero point 0 → (int8 [D, 4H, H], float32 scale per row [D, 4H]);
    None when it has a non-zero (or run-time) zero point or is not int8."""
    zero_value = _value(zero)
    if str(q.ty.dtype) != "int8" or zero_value is None or np.any(zero_value != 0):
        return None
    op = relax.op
    d, _, gh = (int(v) for v in q.ty.shape.values)
    per_row = op.broadcast_to(op.reshape(scale, (d, 1) if len(scale.ty.shape.values) == 1 else (d, gh)), (d, gh))
    return op.permute_dims(q, (0, 2, 1)), per_row


class DynamicQuantizeLSTM(OnnxOpConverter):
    """com.microsoft: X, W, R, B, sequence_lens, initial_h, initial_c, P, W_scale, W_zero_point,
    R_scale, R_zero_point; W [D, in, 4H] and R [D, H, 4H] int8 (see the module docstring)."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        w = bb.normalize(_dequantized_gates(inputs[1], inputs[8], inputs[9]))
        int8_r = _int8_rows(inputs[2], inputs[10], inputs[11])
        r = inputs[2] if int8_r else bb.normalize(_dequantized_gates(inputs[2], inputs[10], inputs[11]))
        return convert_recurrent("LSTM", bb, [inputs[0], w, r, *inputs[3:8]], attr,
                                 int8_r=tuple(bb.normalize(e) for e in int8_r) if int8_r else None)
