"""``FoldStackedReduce``: TVM's ONNX importer turns ``Sum``/``Max``/``Min`` of N tensors into
``reduce(stack([broadcast_to(a), broadcast_to(b), …]), axis=0)``: a copy of every input into
an (N, …) tensor, then a reduction kernel. The pairwise form ``add(add(a, b), …)`` computes
the same numbers (same order of operations) without the copy, and, being elementwise, fuses
into the kernel that produced ``a`` (ShuffleNet's residual ``Sum`` then ``Relu`` land in the
conv epilogue).
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax import Call, Expr, PyExprMutator, expr_functor

# reduction over the stacked axis -> the elementwise op that folds two inputs
_PAIRWISE = {"relax.sum": relax.op.add, "relax.max": relax.op.maximum, "relax.min": relax.op.minimum}


def _static_shape(expr: Expr) -> tuple[int, ...] | None:
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    shape = ty.shape
    if not isinstance(shape, relax.ShapeExpr):
        return None
    dims = []
    for d in shape.values:
        if not isinstance(d, tvm.tirx.IntImm):
            return None
        dims.append(int(d.value))
    return tuple(dims)


@expr_functor.mutator
class _StackedReduceRewriter(PyExprMutator):
    def visit_call_(self, call: Call) -> Expr:
        call = super().visit_call_(call)
        if not isinstance(call.op, tvm.ir.Op) or call.op.name not in _PAIRWISE:
            return call
        axis = call.attrs.axis
        if axis is None or len(axis) != 1 or bool(call.attrs.keepdims) or not isinstance(call.args[0], relax.Var):
            return call
        stacked = self.lookup_binding(call.args[0])
        if not (isinstance(stacked, Call) and isinstance(stacked.op, tvm.ir.Op) and stacked.op.name == "relax.stack"
                and isinstance(stacked.args[0], relax.Tuple) and int(stacked.attrs.axis) == int(axis[0]) == 0):
            return call
        out_shape = _static_shape(call)
        if out_shape is None:
            return call
        fields = [self._unbroadcast(f, out_shape) for f in stacked.args[0].fields]
        result = fields[0]
        for f in fields[1:]:
            result = self.builder_.normalize(_PAIRWISE[call.op.name](result, f))
        if len(fields) == 1 or _static_shape(result) != out_shape:
            return call
        return result

    def _unbroadcast(self, field: Expr, out_shape: tuple[int, ...]) -> Expr:
        """``x`` for a field bound to ``broadcast_to(x, out_shape)`` with x already that shape."""
        if isinstance(field, relax.Var):
            bound = self.lookup_binding(field)
            if (isinstance(bound, Call) and isinstance(bound.op, tvm.ir.Op) and bound.op.name == "relax.broadcast_to"
                    and _static_shape(bound.args[0]) == out_shape):
                return bound.args[0]
        return field


@tvm.transform.module_pass(opt_level=0, name="FoldStackedReduce")
def fold_stacked_reduce(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Rewrite ``sum/max/min(stack([x1, …, xn]), axis=0)`` into a chain of ``add/maximum/minimum``.

    Expects a Relax module (before ``LegalizeOps``) with static shapes. Guarantees the same
    values; only reductions over a freshly stacked leading axis whose result has a static
    shape are touched. Leaves the unused ``stack``/``broadcast_to`` bindings for
    ``DeadCodeElimination``.
    """
    rewriter = _StackedReduceRewriter(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    return rewriter.builder_.get()
