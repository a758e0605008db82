"""HoistQuantize: a per-tensor quantize moves above max-pooling and concatenation, and cancels with the
dequantize it then meets (Before/Expected, in the form ``LowerQDQ`` leaves)."""

from __future__ import annotations

from tvm.script import ir as I
from tvm.script import relax as R

from compiler.passes.hoist_quantize import hoist_quantize
from tests.pass_checks import assert_rewrites, assert_unchanged


def test_quantize_moves_above_concat_then_above_max_pool():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 2, 4, 4), "float32"), y: R.Tensor((1, 3, 2, 2), "float32")
                 ) -> R.Tensor((1, 5, 2, 2), "uint8"):
            with R.dataflow():
                p = R.nn.max_pool2d(x, pool_size=[2, 2], strides=[2, 2])
                c = R.concat((p, y), axis=1)
                q = R.quantize(c, R.const(0.5, "float32"), R.const(3, "int8"), axis=1, out_dtype="uint8")
                R.output(q)
            return q

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 2, 4, 4), "float32"), y: R.Tensor((1, 3, 2, 2), "float32")
                 ) -> R.Tensor((1, 5, 2, 2), "uint8"):
            with R.dataflow():
                qx = R.quantize(x, R.const(0.5, "float32"), R.const(3, "int8"), axis=1, out_dtype="uint8")
                p = R.nn.max_pool2d(qx, pool_size=[2, 2], strides=[2, 2])
                qy = R.quantize(y, R.const(0.5, "float32"), R.const(3, "int8"), axis=1, out_dtype="uint8")
                q = R.concat((p, qy), axis=1)
                R.output(q)
            return q

    assert_rewrites(hoist_quantize, Before, Expected)


def test_quantize_cancels_the_dequantize_it_meets():
    """A QDQ model's DQ -> max-pool -> Q with one scale and zero point: the pool reads the uint8 tensor."""

    @I.ir_module
    class Before:
        @R.function
        def main(q: R.Tensor((1, 2, 4, 4), "uint8")) -> R.Tensor((1, 2, 2, 2), "uint8"):
            with R.dataflow():
                d = R.dequantize(q, R.const(0.5, "float32"), R.const(3, "int8"), axis=1, out_dtype="float32")
                p = R.nn.max_pool2d(d, pool_size=[2, 2], strides=[2, 2])
                r = R.quantize(p, R.const(0.5, "float32"), R.const(3, "int8"), axis=1, out_dtype="uint8")
                R.output(r)
            return r

    @I.ir_module
    class Expected:
        @R.function
        def main(q: R.Tensor((1, 2, 4, 4), "uint8")) -> R.Tensor((1, 2, 2, 2), "uint8"):
            with R.dataflow():
                r = R.nn.max_pool2d(q, pool_size=[2, 2], strides=[2, 2])
                R.output(r)
            return r

    assert_rewrites(hoist_quantize, Before, Expected)


def test_a_pooled_tensor_read_elsewhere_stays():
    """The float pool output is also returned: quantizing above it would need the float tensor anyway."""

    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 2, 4, 4), "float32")):
            with R.dataflow():
                p = R.nn.max_pool2d(x, pool_size=[2, 2], strides=[2, 2])
                q = R.quantize(p, R.const(0.5, "float32"), R.const(3, "int8"), axis=1, out_dtype="uint8")
                R.output(p, q)
            return (p, q)

    assert_unchanged(hoist_quantize, Before)
