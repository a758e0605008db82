"""Int8ConvLayout: a QDQ model's int8 NCHW convolutions, and the layout-agnostic ops they feed, in NHWC
(Before/Expected, in the form ``LowerQDQ`` leaves)."""

from __future__ import annotations

import numpy as np
from tvm.script import ir as I
from tvm.script import relax as R

from compiler.passes.int8_conv_layout import int8_conv_layout
from tests.pass_checks import assert_rewrites, assert_unchanged

RNG = np.random.default_rng(0)
WEIGHT = RNG.integers(-64, 64, (8, 4, 1, 1)).astype("int8")  # OIHW
BIAS = RNG.integers(-100, 100, (1, 8, 1, 1)).astype("int32")


def test_int8_conv_and_its_epilogue_run_in_nhwc():
    """conv -> bias add -> requantize multiply -> quantize -> max-pool in NHWC; the reshape stays
    NCHW, reading the pool back through one transpose."""

    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 4, 4, 4), "uint8")) -> R.Tensor((1, 32), "uint8"):
            with R.dataflow():
                c = R.nn.conv2d(x, R.const(WEIGHT), out_dtype="int32")
                b = R.add(c, R.const(BIAS))
                f = R.multiply(R.astype(b, "float32"), R.const(0.01, "float32"))
                q = R.quantize(f, R.const(0.05, "float32"), R.const(0, "int8"), axis=1, out_dtype="uint8")
                p = R.nn.max_pool2d(q, pool_size=[2, 2], strides=[2, 2])
                y = R.reshape(p, R.shape([1, 32]))
                R.output(y)
            return y

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 4, 4, 4), "uint8")) -> R.Tensor((1, 32), "uint8"):
            with R.dataflow():
                x_nhwc = R.permute_dims(x, axes=[0, 2, 3, 1])
                c = R.nn.conv2d(x_nhwc, R.const(WEIGHT.transpose(0, 2, 3, 1)), data_layout="NHWC", kernel_layout="OHWI",
                                out_layout="NHWC", out_dtype="int32")
                b = R.add(c, R.const(BIAS.transpose(0, 2, 3, 1)))
                a = R.astype(b, "float32")
                f = R.multiply(a, R.const(0.01, "float32"))
                q = R.quantize(f, R.const(0.05, "float32"), R.const(0, "int8"), axis=3, out_dtype="uint8")
                p_nhwc = R.nn.max_pool2d(q, pool_size=[2, 2], strides=[2, 2], layout="NHWC", out_layout="NHWC")
                p = R.permute_dims(p_nhwc, axes=[0, 3, 1, 2])
                y = R.reshape(p, R.shape([1, 32]))
                R.output(y)
            return y

    assert_rewrites(int8_conv_layout, Before, Expected)


def test_float_convolutions_are_left_to_convert_conv_layout():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 4, 4, 4), "float32")) -> R.Tensor((1, 8, 4, 4), "float32"):
            with R.dataflow():
                c = R.nn.conv2d(x, R.const(WEIGHT.astype("float32")))
                R.output(c)
            return c

    assert_unchanged(int8_conv_layout, Before)
