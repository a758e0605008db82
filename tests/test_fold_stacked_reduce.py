"""FoldStackedReduce: ``reduce(stack([broadcast_to(a), …]), axis=0)`` becomes pairwise elementwise ops
(Before/Expected); the stack and broadcasts are left for DeadCodeElimination."""

from __future__ import annotations

from tvm.script import ir as I
from tvm.script import relax as R

from compiler.passes.fold_stacked_reduce import fold_stacked_reduce
from tests.pass_checks import assert_rewrites, assert_unchanged


def test_max_of_three_becomes_a_chain_of_maximum():
    @I.ir_module
    class Before:
        @R.function
        def main(a: R.Tensor((2, 4), "float32"), b: R.Tensor((2, 4), "float32"),
                 c: R.Tensor((2, 4), "float32")) -> R.Tensor((2, 4), "float32"):
            with R.dataflow():
                ba = R.broadcast_to(a, R.shape([2, 4]))
                bb = R.broadcast_to(b, R.shape([2, 4]))
                bc = R.broadcast_to(c, R.shape([2, 4]))
                s = R.stack((ba, bb, bc), axis=0)
                y = R.max(s, axis=[0])
                R.output(y)
            return y

    @I.ir_module
    class Expected:
        @R.function
        def main(a: R.Tensor((2, 4), "float32"), b: R.Tensor((2, 4), "float32"),
                 c: R.Tensor((2, 4), "float32")) -> R.Tensor((2, 4), "float32"):
            with R.dataflow():
                ba = R.broadcast_to(a, R.shape([2, 4]))
                bb = R.broadcast_to(b, R.shape([2, 4]))
                bc = R.broadcast_to(c, R.shape([2, 4]))
                s = R.stack((ba, bb, bc), axis=0)
                ab = R.maximum(a, b)
                y = R.maximum(ab, c)
                R.output(y)
            return y

    assert_rewrites(fold_stacked_reduce, Before, Expected)


def test_sum_keeps_a_broadcast_that_changes_the_shape():
    @I.ir_module
    class Before:
        @R.function
        def main(a: R.Tensor((2, 4), "float32"), b: R.Tensor((1, 4), "float32")) -> R.Tensor((2, 4), "float32"):
            with R.dataflow():
                ba = R.broadcast_to(a, R.shape([2, 4]))
                bb = R.broadcast_to(b, R.shape([2, 4]))
                s = R.stack((ba, bb), axis=0)
                y = R.sum(s, axis=[0])
                R.output(y)
            return y

    @I.ir_module
    class Expected:
        @R.function
        def main(a: R.Tensor((2, 4), "float32"), b: R.Tensor((1, 4), "float32")) -> R.Tensor((2, 4), "float32"):
            with R.dataflow():
                ba = R.broadcast_to(a, R.shape([2, 4]))
                bb = R.broadcast_to(b, R.shape([2, 4]))
                s = R.stack((ba, bb), axis=0)
                y = R.add(a, bb)
                R.output(y)
            return y

    assert_rewrites(fold_stacked_reduce, Before, Expected)


def test_a_reduction_keeping_its_axis_stays():
    @I.ir_module
    class Before:
        @R.function
        def main(a: R.Tensor((2, 4), "float32"), b: R.Tensor((2, 4), "float32")) -> R.Tensor((1, 2, 4), "float32"):
            with R.dataflow():
                s = R.stack((a, b), axis=0)
                y = R.sum(s, axis=[0], keepdims=True)
                R.output(y)
            return y

    assert_unchanged(fold_stacked_reduce, Before)
