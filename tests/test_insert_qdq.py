"""InsertQDQ: every planned conv2d/matmul reads a quantize -> dequantize copy of its data input (uint8 per
tensor, the calibrated scale and zero point) and a dequantize of its constant weight quantized per output
channel (symmetric int8) (Before/Expected, modules as kiln's simplification leaves them: ``main`` with a
dataflow block, layers with a constant float32 weight; no ONNX model, so the layers are called
``matmul_0``, ``conv2d_0``…)."""

from __future__ import annotations

import numpy as np
from tvm.script import ir as I
from tvm.script import relax as R

from compiler.passes.insert_qdq import insert_qdq
from compiler.quantization.calibrators import TensorRange
from compiler.quantization.plan import QuantizationPlan
from tests.pass_checks import assert_rewrites, assert_unchanged

RNG = np.random.default_rng(0)


def _exact_weight(shape, axis, steps):
    """A float weight that symmetric int8 quantizes exactly: per output channel (``axis``) integers in
    -127..127 (each channel reaching 127 in magnitude, so its scale is max|w| / 127 = its step) times a
    power-of-two step. Returns (weight, its int8 values, its scales): the quantization computed from the
    definition, not by the pass's helper."""
    q = RNG.integers(-127, 128, size=shape).astype(np.int8)
    moved = np.moveaxis(q, axis, 0).reshape(shape[axis], -1)  # a view: writes reach q
    moved[:, 0] = np.where(np.arange(shape[axis]) % 2, -127, 127)  # the channel's peak magnitude
    scale = np.asarray(steps, np.float32)
    along = [1] * len(shape)
    along[axis] = -1
    weight = (q.astype(np.float32) * scale.reshape(along)).astype(np.float32)
    return weight, q, scale


def test_matmul_with_a_non_negative_input_gets_uint8_zero_point_0():
    """Calibrated 0..4 (never negative): scale 4 / 255, zero point 0; the [8, 4] weight per column."""
    weight, wq, wscale = _exact_weight((8, 4), 1, [2.0**-7, 2.0**-5, 2.0**-6, 2.0**-8])
    plan = QuantizationPlan({"matmul_0": TensorRange(signed=False, threshold=4.0, minimum=0.0, maximum=4.0)})
    scale = np.float32(4.0 / 255.0)

    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((2, 8), "float32")) -> R.Tensor((2, 4), "float32"):
            with R.dataflow():
                m = R.matmul(x, R.const(weight))
                R.output(m)
            return m

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((2, 8), "float32")) -> R.Tensor((2, 4), "float32"):
            with R.dataflow():
                q = R.quantize(x, R.const(scale, "float32"), R.const(0, "uint8"), axis=-1, out_dtype="uint8")
                dq = R.dequantize(q, R.const(scale, "float32"), R.const(0, "uint8"), axis=-1, out_dtype="float32")
                w = R.dequantize(R.const(wq), R.const(wscale), R.const(np.zeros(4, np.int8)), axis=1,
                                 out_dtype="float32")
                m = R.matmul(dq, w)
                R.output(m)
            return m

    assert_rewrites(insert_qdq(plan), Before, Expected)


def test_signed_input_gets_a_zero_point_and_two_layers_share_its_quantize():
    """Calibrated -1..3: 4 / 255 a step, zero point round(1 / (4 / 255)) = round(63.75) = 64. Both
    matmuls read ``x``: one quantize/dequantize pair serves them."""
    w0, wq0, ws0 = _exact_weight((8, 4), 1, [2.0**-6] * 4)
    w1, wq1, ws1 = _exact_weight((8, 2), 1, [2.0**-3, 2.0**-9])
    signed = TensorRange(signed=True, threshold=3.0, minimum=-1.0, maximum=3.0)
    plan = QuantizationPlan({"matmul_0": signed, "matmul_1": signed})
    scale = np.float32(4.0 / 255.0)

    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((2, 8), "float32")):
            with R.dataflow():
                a = R.matmul(x, R.const(w0))
                b = R.matmul(x, R.const(w1))
                R.output(a, b)
            return (a, b)

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((2, 8), "float32")):
            with R.dataflow():
                q = R.quantize(x, R.const(scale, "float32"), R.const(64, "uint8"), axis=-1, out_dtype="uint8")
                dq = R.dequantize(q, R.const(scale, "float32"), R.const(64, "uint8"), axis=-1,
                                  out_dtype="float32")
                d0 = R.dequantize(R.const(wq0), R.const(ws0), R.const(np.zeros(4, np.int8)), axis=1,
                                  out_dtype="float32")
                a = R.matmul(dq, d0)
                d1 = R.dequantize(R.const(wq1), R.const(ws1), R.const(np.zeros(2, np.int8)), axis=1,
                                  out_dtype="float32")
                b = R.matmul(dq, d1)
                R.output(a, b)
            return (a, b)

    assert_rewrites(insert_qdq(plan), Before, Expected)


def test_signed_activations_shift_the_uint8_codes_to_int8():
    """``signed_activations`` (AArch64 sdot): the same steps as int8, zero point 0 - 128 = -128."""
    weight, wq, wscale = _exact_weight((8, 4), 1, [2.0**-4] * 4)
    plan = QuantizationPlan({"matmul_0": TensorRange(signed=False, threshold=2.0, minimum=0.0, maximum=2.0)},
                            signed_activations=True)
    scale = np.float32(2.0 / 255.0)

    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((2, 8), "float32")) -> R.Tensor((2, 4), "float32"):
            with R.dataflow():
                m = R.matmul(x, R.const(weight))
                R.output(m)
            return m

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((2, 8), "float32")) -> R.Tensor((2, 4), "float32"):
            with R.dataflow():
                q = R.quantize(x, R.const(scale, "float32"), R.const(-128, "int8"), axis=-1, out_dtype="int8")
                dq = R.dequantize(q, R.const(scale, "float32"), R.const(-128, "int8"), axis=-1,
                                  out_dtype="float32")
                w = R.dequantize(R.const(wq), R.const(wscale), R.const(np.zeros(4, np.int8)), axis=1,
                                 out_dtype="float32")
                m = R.matmul(dq, w)
                R.output(m)
            return m

    assert_rewrites(insert_qdq(plan), Before, Expected)


def test_conv2d_weight_is_quantized_per_output_channel():
    """OIHW weight: scales along O (axis 0); the conv keeps its attributes (padding 1, stride 2)."""
    weight, wq, wscale = _exact_weight((4, 3, 3, 3), 0, [2.0**-5, 2.0**-7, 2.0**-4, 2.0**-6])
    plan = QuantizationPlan({"conv2d_0": TensorRange(signed=False, threshold=6.0, minimum=0.0, maximum=6.0)})
    scale = np.float32(6.0 / 255.0)

    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 3, 8, 8), "float32")) -> R.Tensor((1, 4, 4, 4), "float32"):
            with R.dataflow():
                c = R.nn.conv2d(x, R.const(weight), strides=[2, 2], padding=[1, 1, 1, 1])
                R.output(c)
            return c

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 3, 8, 8), "float32")) -> R.Tensor((1, 4, 4, 4), "float32"):
            with R.dataflow():
                q = R.quantize(x, R.const(scale, "float32"), R.const(0, "uint8"), axis=-1, out_dtype="uint8")
                dq = R.dequantize(q, R.const(scale, "float32"), R.const(0, "uint8"), axis=-1, out_dtype="float32")
                w = R.dequantize(R.const(wq), R.const(wscale), R.const(np.zeros(4, np.int8)), axis=0,
                                 out_dtype="float32")
                c = R.nn.conv2d(dq, w, strides=[2, 2], padding=[1, 1, 1, 1])
                R.output(c)
            return c

    assert_rewrites(insert_qdq(plan), Before, Expected)


def test_a_layer_kept_in_fp32_or_never_calibrated_stays():
    weight = RNG.standard_normal((8, 4)).astype("float32")
    conv_weight = RNG.standard_normal((4, 3, 3, 3)).astype("float32")
    rng = TensorRange(signed=False, threshold=4.0, minimum=0.0, maximum=4.0)
    # matmul_0 kept in FP32; conv2d_0 has no calibrated range
    plan = QuantizationPlan({"matmul_0": rng}, keep_fp32={"matmul_0"})

    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((2, 8), "float32"), y: R.Tensor((1, 3, 8, 8), "float32")):
            with R.dataflow():
                m = R.matmul(x, R.const(weight))
                c = R.nn.conv2d(y, R.const(conv_weight), padding=[1, 1, 1, 1])
                R.output(m, c)
            return (m, c)

    assert_unchanged(insert_qdq(plan), Before)
