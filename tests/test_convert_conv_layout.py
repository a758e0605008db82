"""ConvertConvLayout: float conv2d and the layout-agnostic ops after it in NHWC, one transpose at each
end, the weight (and bias) transposed at compile time (Before/Expected)."""

from __future__ import annotations

import numpy as np
import pytest
from tvm.script import ir as I
from tvm.script import relax as R
from tvm.script import tirx as T

from compiler.passes.convert_conv_layout import convert_conv_layout
from tests.pass_checks import assert_rewrites, assert_unchanged

RNG = np.random.default_rng(0)
WEIGHT = RNG.standard_normal((16, 8, 3, 3)).astype("float32")  # OIHW
BIAS = RNG.standard_normal((1, 16, 1, 1)).astype("float32")


def _before():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 8, 6, 6), "float32")) -> R.Tensor((1, 16, 6, 6), "float32"):
            with R.dataflow():
                c = R.nn.conv2d(x, R.const(WEIGHT), padding=[1, 1, 1, 1])
                a = R.add(c, R.const(BIAS))
                r = R.nn.relu(a)
                R.output(r)
            return r

    return Before


def test_conv_bias_relu_run_in_nhwc():
    weight_ohwi, bias_nhwc = WEIGHT.transpose(0, 2, 3, 1), BIAS.transpose(0, 2, 3, 1)

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 8, 6, 6), "float32")) -> R.Tensor((1, 16, 6, 6), "float32"):
            with R.dataflow():
                x_nhwc = R.permute_dims(x, axes=[0, 2, 3, 1])
                c = R.nn.conv2d(x_nhwc, R.const(weight_ohwi), padding=[1, 1, 1, 1], data_layout="NHWC",
                                kernel_layout="OHWI", out_layout="NHWC")
                a = R.add(c, R.const(bias_nhwc))
                r_nhwc = R.nn.relu(a)
                r = R.permute_dims(r_nhwc, axes=[0, 3, 1, 2])
                R.output(r)
            return r

    assert_rewrites(convert_conv_layout("NHWC"), _before(), Expected)


def test_conv_bias_relu_run_in_blocked_channels():
    """``NCHWc`` with the vector width 8: activations ``NCHW8c``, weights ``OIHW8i8o``."""
    weight_blocked = WEIGHT.reshape(2, 8, 1, 8, 3, 3).transpose(0, 2, 4, 5, 3, 1)  # [o/8, i/8, h, w, i%8, o%8]
    bias_blocked = BIAS.reshape(1, 2, 8, 1, 1).transpose(0, 1, 3, 4, 2)

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 8, 6, 6), "float32")) -> R.Tensor((1, 16, 6, 6), "float32"):
            with R.dataflow():
                x_blocked = R.layout_transform(x, index_map=T.index_map(lambda n, c, h, w: (n, c // 8, h, w, c % 8),
                                                                          index_dtype="int32"))
                c = R.nn.conv2d(x_blocked, R.const(weight_blocked), padding=[1, 1, 1, 1], data_layout="NCHW8c",
                                kernel_layout="OIHW8i8o", out_layout="NCHW8c")
                a = R.add(c, R.const(bias_blocked))
                r_blocked = R.nn.relu(a)
                r = R.layout_transform(r_blocked, index_map=T.index_map(lambda n, cb, h, w, ci: (n, cb * 8 + ci, h, w),
                                                                             index_dtype="int32"))
                R.output(r)
            return r

    assert_rewrites(convert_conv_layout("NCHWc", block=8), _before(), Expected)


def test_nchw_is_the_importers_layout():
    assert_unchanged(convert_conv_layout("NCHW"), _before())


def test_an_unknown_layout_is_refused():
    with pytest.raises(ValueError, match="conv layout"):
        convert_conv_layout("HWCN")
