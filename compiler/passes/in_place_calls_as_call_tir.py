"""``InPlaceCallsAsCallTIR``: for task extraction only, in-place kernel calls shown as ``call_tir``.

MetaSchedule's ``extract_tasks`` looks at ``call_tir`` only, so ``WriteConcatInPlace``'s
writers (``call_tir_inplace(k, (…, buf), [last])``) would never be tuned. The kernel and its
parameters are the same either way (a writer's last parameter is its output), so the records
tuned on ``call_tir(k, (…))`` apply to the in-place calls of the build.

Expects fused TIR kernels (the tuning input, after ``FuseTIR``). Rewrites every
``call_tir_inplace`` whose only in-place argument is the last one. The result is for task
extraction, not to run: a writer called like this fills only its slice.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax import Call, Expr, PyExprMutator, expr_functor

from compiler.relax_utils.fused_groups import is_op


@tvm.transform.module_pass(opt_level=0, name="InPlaceCallsAsCallTIR")
def in_place_calls_as_call_tir(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Show in-place kernel calls as ``call_tir`` (see the module docstring)."""

    @expr_functor.mutator
    class _Plain(PyExprMutator):
        def visit_call_(self, call: Call) -> Expr:
            call = super().visit_call_(call)
            if (is_op(call, "relax.call_tir_inplace") and isinstance(call.args[1], relax.Tuple)
                    and [int(i) for i in call.attrs.inplace_indices] == [len(call.args[1].fields) - 1]):
                return relax.op.call_tir(call.args[0], relax.Tuple(list(call.args[1].fields)[:-1]), call.ty)
            return call

    rewriter = _Plain(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    return rewriter.builder_.get()
