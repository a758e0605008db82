"""PadOutputChannels: a constant weight with an awkward output-channel count gets zero channels up to
a multiple of 16, and a ``strided_slice`` drops them from the result (Before/Expected)."""

from __future__ import annotations

import numpy as np
from tvm.script import ir as I
from tvm.script import relax as R

from compiler.passes.pad_output_channels import pad_output_channels
from tests.pass_checks import assert_rewrites, assert_unchanged

RNG = np.random.default_rng(0)


def test_matmul_columns_and_conv_channels_are_padded_and_sliced_back():
    matmul_w = RNG.standard_normal((8, 70)).astype("float32")  # 70 columns -> 80
    conv_w = RNG.standard_normal((33, 4, 1, 1)).astype("float32")  # 33 channels -> 48
    matmul_wide = np.concatenate([matmul_w, np.zeros((8, 10), "float32")], axis=1)
    conv_wide = np.concatenate([conv_w, np.zeros((15, 4, 1, 1), "float32")], axis=0)

    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((2, 8), "float32"), y: R.Tensor((1, 4, 3, 3), "float32")):
            with R.dataflow():
                m = R.matmul(x, R.const(matmul_w))
                c = R.nn.conv2d(y, R.const(conv_w))
                R.output(m, c)
            return (m, c)

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((2, 8), "float32"), y: R.Tensor((1, 4, 3, 3), "float32")):
            with R.dataflow():
                wide_m = R.matmul(x, R.const(matmul_wide))
                m = R.strided_slice(wide_m, axes=[1], begin=[0], end=[70])
                wide_c = R.nn.conv2d(y, R.const(conv_wide))
                c = R.strided_slice(wide_c, axes=[1], begin=[0], end=[33])
                R.output(m, c)
            return (m, c)

    assert_rewrites(pad_output_channels, Before, Expected)


def test_counts_the_kernels_take_or_too_small_to_pay_stay():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((2, 8), "float32"), y: R.Tensor((1, 4, 3, 3), "float32")):
            with R.dataflow():
                m = R.matmul(x, R.const(np.ones((8, 80), "float32")))  # a multiple of 16
                n = R.matmul(x, R.const(np.ones((8, 40), "float32")))  # under 64 columns
                c = R.nn.conv2d(y, R.const(np.ones((40, 4, 1, 1), "float32")))  # multiple of 8, 8 more is 20 % more
                d = R.nn.conv2d(y, R.const(np.ones((20, 4, 1, 1), "float32")))  # under 32 channels
                R.output(m, n, c, d)
            return (m, n, c, d)

    assert_unchanged(pad_output_channels, Before)
