"""LowerQDQ: ``conv2d``/``matmul`` of ``dequantize(q_x)`` and ``dequantize(q_w)`` (a constant int8 weight)
become the layer on the 8-bit tensors with int32 accumulation, the activation zero point corrected by a
constant per-channel term, a following constant bias added in int32, and one float multiply by
``scale_x * scale_w[c]`` (Before/Expected, in the form ``InsertQDQ`` leaves).

The Expected constants come from the algebra, computed here with numpy:
``sum_k (x_k - z) * w_kc = sum_k x_k * w_kc - z * sum_k w_kc``, so the correction is ``z`` times each
output channel's weight sum, and ``bias_c`` joins the accumulator as ``round(bias_c / (s_x * s_w[c]))``."""

from __future__ import annotations

import numpy as np
from tvm.script import ir as I
from tvm.script import relax as R

from compiler.passes.lower_qdq import lower_qdq
from tests.pass_checks import assert_rewrites, assert_unchanged

RNG = np.random.default_rng(0)


def _int8(shape) -> np.ndarray:
    return RNG.integers(-127, 128, size=shape).astype(np.int8)


def test_matmul_becomes_int32_accumulation_zero_point_correction_and_one_multiply():
    """uint8 input with zero point 3, a [8, 4] int8 weight with a scale per column, and a bias."""
    sx, zx = np.float32(0.05), 3
    wq = _int8((8, 4))
    sw = np.array([0.01, 0.02, 0.04, 0.005], np.float32)
    combined = (sx * sw).astype(np.float32)  # the one float multiply
    correction = (zx * wq.astype(np.int64).sum(axis=0)).astype(np.int32)  # z * sum_k w[k, c]
    bias_steps = np.array([5, -7, 0, 1200], np.int32)
    bias = (bias_steps * combined).astype(np.float32)  # a whole number of output steps per channel

    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((2, 8), "float32")) -> R.Tensor((2, 4), "float32"):
            with R.dataflow():
                q = R.quantize(x, R.const(sx, "float32"), R.const(zx, "uint8"), axis=-1, out_dtype="uint8")
                dq = R.dequantize(q, R.const(sx, "float32"), R.const(zx, "uint8"), axis=-1, out_dtype="float32")
                w = R.dequantize(R.const(wq), R.const(sw), R.const(np.zeros(4, np.int8)), axis=1,
                                 out_dtype="float32")
                m = R.matmul(dq, w)
                y = R.add(m, R.const(bias))
                R.output(y)
            return y

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((2, 8), "float32")) -> R.Tensor((2, 4), "float32"):
            with R.dataflow():
                q = R.quantize(x, R.const(sx, "float32"), R.const(zx, "uint8"), axis=-1, out_dtype="uint8")
                acc = R.matmul(q, R.const(wq), out_dtype="int32")
                centred = R.subtract(acc, R.const(correction))
                biased = R.add(centred, R.const(bias_steps))
                f = R.astype(biased, "float32")
                y = R.multiply(f, R.const(combined))
                R.output(y)
            return y

    assert_rewrites(lower_qdq(), Before, Expected)


def test_zero_point_0_needs_no_correction():
    """A non-negative (post-ReLU) input: zero point 0, nothing to subtract; one scale for the whole
    weight becomes one per column, all equal."""
    sx, sw = np.float32(0.5), np.float32(0.25)
    wq = _int8((8, 3))

    @I.ir_module
    class Before:
        @R.function
        def main(q: R.Tensor((2, 8), "uint8")) -> R.Tensor((2, 3), "float32"):
            with R.dataflow():
                dq = R.dequantize(q, R.const(sx, "float32"), R.const(0, "uint8"), axis=-1, out_dtype="float32")
                w = R.dequantize(R.const(wq), R.const(sw, "float32"), R.const(0, "int8"), axis=-1,
                                 out_dtype="float32")
                m = R.matmul(dq, w)
                R.output(m)
            return m

    @I.ir_module
    class Expected:
        @R.function
        def main(q: R.Tensor((2, 8), "uint8")) -> R.Tensor((2, 3), "float32"):
            with R.dataflow():
                acc = R.matmul(q, R.const(wq), out_dtype="int32")
                f = R.astype(acc, "float32")
                m = R.multiply(f, R.const(np.full(3, 0.125, np.float32)))  # 0.5 * 0.25
                R.output(m)
            return m

    assert_rewrites(lower_qdq(), Before, Expected)


def test_padded_conv2d_pads_with_the_zero_point():
    """NCHW/OIHW, padding 1 and zero point 5: the int8 tensor is padded with 5 explicitly (each window then
    has all its taps, and the correction ``5 * sum_{i,h,w} w[o]`` is exact at the borders too)."""
    sx, zx = np.float32(0.1), 5
    wq = _int8((4, 3, 3, 3))
    sw = np.array([0.01, 0.03, 0.02, 0.04], np.float32)
    combined = (sx * sw).astype(np.float32).reshape(1, 4, 1, 1)
    correction = (zx * wq.astype(np.int64).sum(axis=(1, 2, 3))).astype(np.int32).reshape(1, 4, 1, 1)

    @I.ir_module
    class Before:
        @R.function
        def main(q: R.Tensor((1, 3, 6, 6), "uint8")) -> R.Tensor((1, 4, 6, 6), "float32"):
            with R.dataflow():
                dq = R.dequantize(q, R.const(sx, "float32"), R.const(zx, "uint8"), axis=-1, out_dtype="float32")
                w = R.dequantize(R.const(wq), R.const(sw), R.const(np.zeros(4, np.int8)), axis=0,
                                 out_dtype="float32")
                c = R.nn.conv2d(dq, w, padding=[1, 1, 1, 1])
                R.output(c)
            return c

    @I.ir_module
    class Expected:
        @R.function
        def main(q: R.Tensor((1, 3, 6, 6), "uint8")) -> R.Tensor((1, 4, 6, 6), "float32"):
            with R.dataflow():
                padded = R.nn.pad(q, pad_width=[0, 0, 0, 0, 1, 1, 1, 1], pad_value=5.0)
                acc = R.nn.conv2d(padded, R.const(wq), padding=[0, 0, 0, 0], data_layout="NCHW",
                                  kernel_layout="OIHW", out_layout="NCHW", out_dtype="int32")
                centred = R.subtract(acc, R.const(correction))
                f = R.astype(centred, "float32")
                c = R.multiply(f, R.const(combined))
                R.output(c)
            return c

    assert_rewrites(lower_qdq(), Before, Expected)


def test_rgb_conv_input_channels_padded_to_a_multiple_of_4():
    """``channel_multiple=4``: 3 input channels become 4, the new one zero-point data (zero point 0 here)
    meeting zero weights, so no sum changes; no spatial padding, so nothing else is padded."""
    sx = np.float32(0.1)
    wq = _int8((2, 3, 1, 1))
    sw = np.array([0.5, 0.25], np.float32)
    wide = np.concatenate([wq, np.zeros((2, 1, 1, 1), np.int8)], axis=1)

    @I.ir_module
    class Before:
        @R.function
        def main(q: R.Tensor((1, 3, 4, 4), "uint8")) -> R.Tensor((1, 2, 4, 4), "float32"):
            with R.dataflow():
                dq = R.dequantize(q, R.const(sx, "float32"), R.const(0, "uint8"), axis=-1, out_dtype="float32")
                w = R.dequantize(R.const(wq), R.const(sw), R.const(np.zeros(2, np.int8)), axis=0,
                                 out_dtype="float32")
                c = R.nn.conv2d(dq, w)
                R.output(c)
            return c

    @I.ir_module
    class Expected:
        @R.function
        def main(q: R.Tensor((1, 3, 4, 4), "uint8")) -> R.Tensor((1, 2, 4, 4), "float32"):
            with R.dataflow():
                padded = R.nn.pad(q, pad_width=[0, 0, 0, 1, 0, 0, 0, 0], pad_value=0.0)
                acc = R.nn.conv2d(padded, R.const(wide), data_layout="NCHW", kernel_layout="OIHW",
                                  out_layout="NCHW", out_dtype="int32")
                f = R.astype(acc, "float32")
                c = R.multiply(f, R.const((sx * sw).astype(np.float32).reshape(1, 2, 1, 1)))
                R.output(c)
            return c

    assert_rewrites(lower_qdq(channel_multiple=4), Before, Expected)


def test_float_layers_and_activation_by_activation_products_stay():
    """A float matmul reads no dequantize; Q.K-style ``dequantize(q) @ dequantize(k)`` has no constant
    weight; a conv2d whose weight is dequantized but whose data is float has no quantized input."""
    wq = _int8((4, 3, 1, 1))

    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((2, 8), "float32"), q: R.Tensor((2, 8), "uint8"), k: R.Tensor((8, 2), "uint8"),
                 y: R.Tensor((1, 3, 4, 4), "float32")):
            with R.dataflow():
                m = R.matmul(x, R.const(np.ones((8, 4), np.float32)))
                dq = R.dequantize(q, R.const(0.5, "float32"), R.const(0, "uint8"), axis=-1, out_dtype="float32")
                dk = R.dequantize(k, R.const(0.5, "float32"), R.const(0, "uint8"), axis=-1, out_dtype="float32")
                a = R.matmul(dq, dk)
                w = R.dequantize(R.const(wq), R.const(0.5, "float32"), R.const(0, "int8"), axis=-1,
                                 out_dtype="float32")
                c = R.nn.conv2d(y, w)
                R.output(m, a, c)
            return (m, a, c)

    assert_unchanged(lower_qdq(), Before)
