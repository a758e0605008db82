"""DropDropout: ``dropout(x)[0]`` becomes ``x`` (Before/Expected)."""

from __future__ import annotations

from tvm.script import ir as I
from tvm.script import relax as R

from compiler.passes.drop_dropout import drop_dropout
from tests.pass_checks import assert_rewrites, assert_unchanged


def test_dropout_output_becomes_its_input():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((2, 4), "float32")) -> R.Tensor((2, 4), "float32"):
            with R.dataflow():
                d = R.nn.dropout(x, rate=0.5)
                y = d[0]
                z = R.nn.relu(y)
                R.output(z)
            return z

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((2, 4), "float32")) -> R.Tensor((2, 4), "float32"):
            with R.dataflow():
                z = R.nn.relu(x)
                R.output(z)
            return z

    assert_rewrites(drop_dropout, Before, Expected)


def test_the_mask_stays():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((2, 4), "float32")) -> R.Tensor((2, 4), "float32"):
            with R.dataflow():
                d = R.nn.dropout(x, rate=0.5)
                mask = d[1]
                R.output(mask)
            return mask

    assert_unchanged(drop_dropout, Before)
