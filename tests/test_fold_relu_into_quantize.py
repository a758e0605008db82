"""FoldReluIntoQuantize: a ``relu`` whose every reader quantizes with its type's lowest zero point
(uint8 0, int8 -128) is dropped, the quantize's clip at the lowest code does its work (Before/Expected)."""

from __future__ import annotations

from tvm.script import ir as I
from tvm.script import relax as R

from compiler.passes.fold_relu_into_quantize import fold_relu_into_quantize
from tests.pass_checks import assert_rewrites, assert_unchanged


def test_relu_read_only_by_uint8_zero_point_0_quantizes_is_dropped():
    """Two readers, both uint8 with zero point 0: negatives clip to code 0, which is 0.0, as relu makes them."""

    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 4), "float32")):
            with R.dataflow():
                r = R.nn.relu(x)
                a = R.quantize(r, R.const(0.5, "float32"), R.const(0, "uint8"), axis=-1, out_dtype="uint8")
                b = R.quantize(r, R.const(0.25, "float32"), R.const(0, "uint8"), axis=-1, out_dtype="uint8")
                R.output(a, b)
            return (a, b)

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 4), "float32")):
            with R.dataflow():
                a = R.quantize(x, R.const(0.5, "float32"), R.const(0, "uint8"), axis=-1, out_dtype="uint8")
                b = R.quantize(x, R.const(0.25, "float32"), R.const(0, "uint8"), axis=-1, out_dtype="uint8")
                R.output(a, b)
            return (a, b)

    assert_rewrites(fold_relu_into_quantize, Before, Expected)


def test_relu_before_int8_zero_point_minus_128_is_dropped():
    """``signed_activations``' int8 codes: zero point -128 is the lowest code, the same clip."""

    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 4), "float32")) -> R.Tensor((1, 4), "int8"):
            with R.dataflow():
                r = R.nn.relu(x)
                q = R.quantize(r, R.const(0.5, "float32"), R.const(-128, "int8"), axis=-1, out_dtype="int8")
                R.output(q)
            return q

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 4), "float32")) -> R.Tensor((1, 4), "int8"):
            with R.dataflow():
                q = R.quantize(x, R.const(0.5, "float32"), R.const(-128, "int8"), axis=-1, out_dtype="int8")
                R.output(q)
            return q

    assert_rewrites(fold_relu_into_quantize, Before, Expected)


def test_relu_with_another_reader_or_a_zero_point_above_the_lowest_stays():
    """``r`` is also read by an add (which needs the ReLU'd values); ``s`` is quantized with zero point 3
    (codes 0..2 stand for negatives, so the clip is not relu's); ``t`` with int8 zero point 0."""

    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 4), "float32"), y: R.Tensor((1, 4), "float32")):
            with R.dataflow():
                r = R.nn.relu(x)
                a = R.quantize(r, R.const(0.5, "float32"), R.const(0, "uint8"), axis=-1, out_dtype="uint8")
                b = R.add(r, y)
                s = R.nn.relu(y)
                c = R.quantize(s, R.const(0.5, "float32"), R.const(3, "uint8"), axis=-1, out_dtype="uint8")
                t = R.nn.relu(b)
                d = R.quantize(t, R.const(0.5, "float32"), R.const(0, "int8"), axis=-1, out_dtype="int8")
                R.output(a, b, c, d)
            return (a, b, c, d)

    assert_unchanged(fold_relu_into_quantize, Before)


# Readers the pass does not see: it counts only variables passed directly as a call's arguments, so a
# relu that is also a function output, or a field of a tuple argument (concat), counts as read by the
# quantize alone and is dropped, and those readers get the values before the relu.
def test_relu_that_is_also_returned_stays():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 4), "float32")):
            with R.dataflow():
                r = R.nn.relu(x)
                q = R.quantize(r, R.const(0.5, "float32"), R.const(0, "uint8"), axis=-1, out_dtype="uint8")
                R.output(r, q)
            return (r, q)

    assert_unchanged(fold_relu_into_quantize, Before)


def test_relu_also_concatenated_stays():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 4), "float32"), y: R.Tensor((1, 4), "float32")):
            with R.dataflow():
                r = R.nn.relu(x)
                q = R.quantize(r, R.const(0.5, "float32"), R.const(0, "uint8"), axis=-1, out_dtype="uint8")
                c = R.concat((r, y), axis=1)
                R.output(c, q)
            return (c, q)

    assert_unchanged(fold_relu_into_quantize, Before)
