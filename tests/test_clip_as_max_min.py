"""ClipAsMaxMin: ``clip`` with constant bounds, and the importer's TE ``maximum``/``minimum`` kernels
with a scalar constant, become ``relax.maximum``/``relax.minimum`` (Before/Expected)."""

from __future__ import annotations

import tvm
from tvm import relax, topi
from tvm.script import ir as I
from tvm.script import relax as R
from tvm.script import tirx as T

from compiler.passes.clip_as_max_min import clip_as_max_min
from tests.pass_checks import assert_rewrites, assert_unchanged


def test_relax_clip_becomes_maximum_then_minimum():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((2, 4), "float32")) -> R.Tensor((2, 4), "float32"):
            with R.dataflow():
                y = R.clip(x, R.prim_value(T.float32(0)), R.prim_value(T.float32(6)))
                R.output(y)
            return y

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((2, 4), "float32")) -> R.Tensor((2, 4), "float32"):
            with R.dataflow():
                low = R.maximum(x, R.const(0.0, "float32"))
                y = R.minimum(low, R.const(6.0, "float32"))
                R.output(y)
            return y

    assert_rewrites(clip_as_max_min, Before, Expected)


def _te_maximum(bound: relax.Expr) -> tvm.IRModule:
    """``maximum(x, bound)`` as TVM's ONNX importer emits a Clip with bound inputs: a TE kernel."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 4), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(bb.emit_te(topi.maximum, x, bound))
        bb.emit_func_output(y)
    return bb.get()


def test_te_maximum_kernel_with_a_scalar_constant_becomes_relax_maximum():
    before = _te_maximum(relax.const(0.0, "float32"))
    bb = relax.BlockBuilder()
    bb.add_func(before["maximum"], "maximum")  # left unused, for DeadCodeElimination
    x = relax.Var("x", relax.TensorType((2, 4), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(bb.emit(relax.op.maximum(x, relax.const(0.0, "float32"))))
        bb.emit_func_output(y)
    assert_rewrites(clip_as_max_min, before, bb.get())


def test_te_maximum_against_a_tensor_stays():
    assert_unchanged(clip_as_max_min, _te_maximum(relax.const([0.0, 1.0, 2.0, 3.0], "float32")))
