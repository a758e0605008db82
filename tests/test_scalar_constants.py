"""ScalarConstants: one-element constant operands of elementwise ops become 0-d constants (Before/Expected)."""

from __future__ import annotations

from tvm.script import ir as I
from tvm.script import relax as R

from compiler.passes.scalar_constants import scalar_constants
from tests.pass_checks import assert_rewrites, assert_unchanged


def test_one_element_constants_become_scalars():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 3, 2, 2), "float32")) -> R.Tensor((1, 3, 2, 2), "float32"):
            with R.dataflow():
                y = R.multiply(x, R.const([2.0], "float32"))
                z = R.add(R.const([[1.0]], "float32"), y)
                R.output(z)
            return z

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 3, 2, 2), "float32")) -> R.Tensor((1, 3, 2, 2), "float32"):
            with R.dataflow():
                y = R.multiply(x, R.const(2.0, "float32"))
                z = R.add(R.const(1.0, "float32"), y)
                R.output(z)
            return z

    assert_rewrites(scalar_constants, Before, Expected)


def test_other_constants_stay():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 3), "float32"), s: R.Tensor((), "float32")) -> R.Tensor((1, 3), "float32"):
            with R.dataflow():
                y = R.multiply(x, R.const([1.0, 2.0, 3.0], "float32"))  # three elements
                z = R.add(s, R.const([1.0], "float32"))  # the other operand is 0-d: the result has its [1] shape
                w = R.add(y, z)
                R.output(w)
            return w

    assert_unchanged(scalar_constants, Before)
