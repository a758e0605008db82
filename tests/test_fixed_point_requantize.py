"""FixedPointRequantize: ``quantize(astype(acc, float32) * scale[c], scale_y, zero_y)`` becomes an integer
multiply, a rounding shift, the zero point and a clip (Before/Expected, in the form ``LowerQDQ`` leaves)."""

from __future__ import annotations

import numpy as np
from tvm.script import ir as I
from tvm.script import relax as R

from compiler.passes.fixed_point_requantize import fixed_point_requantize
from tests.pass_checks import assert_rewrites, assert_unchanged


def test_per_channel_requantize_becomes_multiplier_and_shift():
    """Scales 0.5 and 0.25 over ``scale_y`` 1: ``2**30 * 2**-31`` and ``2**30 * 2**-32``."""
    multiplier = np.array([2**30, 2**30], "int64")
    shift = np.array([31, 32], "int64")
    half = np.array([2**30, 2**31], "int64")  # 2**(shift - 1): round half up

    @I.ir_module
    class Before:
        @R.function
        def main(acc: R.Tensor((1, 2), "int32")) -> R.Tensor((1, 2), "uint8"):
            with R.dataflow():
                f = R.astype(acc, "float32")
                s = R.multiply(f, R.const([0.5, 0.25], "float32"))
                r = R.quantize(s, R.const(1.0, "float32"), R.const(3, "int8"), axis=1, out_dtype="uint8")
                R.output(r)
            return r

    @I.ir_module
    class Expected:
        @R.function
        def main(acc: R.Tensor((1, 2), "int32")) -> R.Tensor((1, 2), "uint8"):
            with R.dataflow():
                wide = R.multiply(R.astype(acc, "int64"), R.const(multiplier, "int64"))
                rounded = R.right_shift(R.add(wide, R.const(half, "int64")), R.const(shift, "int64"))
                shifted = R.add(rounded, R.const(3, "int64"))
                clipped = R.minimum(R.maximum(shifted, R.const(0, "int64")), R.const(255, "int64"))
                r = R.astype(clipped, "uint8")
                R.output(r)
            return r

    assert_rewrites(fixed_point_requantize, Before, Expected)


def test_a_quantize_of_anything_else_stays():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 2), "float32")) -> R.Tensor((1, 2), "uint8"):
            with R.dataflow():
                s = R.multiply(x, R.const([0.5, 0.25], "float32"))  # not an int32 accumulator
                r = R.quantize(s, R.const(1.0, "float32"), R.const(3, "int8"), axis=1, out_dtype="uint8")
                R.output(r)
            return r

    assert_unchanged(fixed_point_requantize, Before)
