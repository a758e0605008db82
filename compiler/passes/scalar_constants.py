"""``ScalarConstants``: one-element constant operands of elementwise ops become 0-d constants.

ONNX exporters often write a scalar parameter as a shape-``[1]`` tensor: the PP-OCR
recognizer's PP-LCNetV3 backbone applies a learnable affine block (``scale * x + bias``, both
``[1]``) around every activation, and its HardSwish divides by a ``[1]``-shaped 6. TVM 0.27's
``ConvertLayout`` gives such an op (a 4-D tensor against a 1-D constant) no layout, so in an
NHWC build it wraps the op in a transpose back to NCHW and one forward again, and those
transposes split the conv's fused epilogue. A 0-d constant broadcasts exactly the same way and
``ConvertLayout`` lets it through (as it does ``maximum(x, 0.0)``).

Expects a Relax module before ``ConvertLayout``, after ``FoldConstant``. Guarantees the same
values and shapes: only binary elementwise ops whose other operand has rank >= 1 are
rewritten, and only their one-element constant operand.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.ir.expr import Constant

from compiler.relax_utils.rewrite import rewrite_relax_functions

BINARY_ELEMENTWISE = frozenset(f"relax.{name}" for name in (
    "add", "subtract", "multiply", "divide", "floor_divide", "power", "maximum", "minimum"))


def _rank(expr: relax.Expr) -> int | None:
    shape = getattr(expr.ty, "shape", None)
    return None if shape is None else len(shape)


def _as_scalar(expr: relax.Expr) -> relax.Expr:
    """``expr`` as a 0-d constant if it is a one-element constant of rank >= 1, else itself."""
    if isinstance(expr, Constant):
        value = expr.value.numpy()
        if value.ndim >= 1 and value.size == 1:
            return relax.const(value.reshape(()), str(value.dtype))
    return expr


@relax.expr_functor.mutator
class _Rewrite(relax.PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not isinstance(call.op, tvm.ir.Op) or call.op.name not in BINARY_ELEMENTWISE:
            return call
        lhs, rhs = call.args
        new_lhs = _as_scalar(lhs) if (_rank(rhs) or 0) >= 1 else lhs
        new_rhs = _as_scalar(rhs) if (_rank(lhs) or 0) >= 1 else rhs
        if new_lhs is lhs and new_rhs is rhs:
            return call
        return relax.Call(call.op, [new_lhs, new_rhs], call.attrs, call.ty_args)


@tvm.transform.module_pass(opt_level=0, name="ScalarConstants")
def scalar_constants(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Rewrite every Relax function of ``mod`` (see the module docstring)."""
    return rewrite_relax_functions(mod, _Rewrite)

