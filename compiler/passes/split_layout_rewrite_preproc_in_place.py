"""``SplitLayoutRewritePreprocInPlace``: TVM's ``SplitLayoutRewritePreproc`` for kernels called in place.

The default CPU rules (and tuned schedules) copy a conv/dense weight into a packed layout
inside the kernel and mark that copy ``meta_schedule.layout_rewrite_preproc``; TVM's
``SplitLayoutRewritePreproc`` moves it into its own kernel, which ``FoldConstant`` then runs at
compile time. TVM's pass only looks at ``call_tir``: a kernel called with ``call_tir_inplace``
(``WriteConcatInPlace``'s writers) would repack its weights on every call (Inception: about 10%
slower end to end). This pass gives those calls the same treatment (``AttachAttrLayoutFreeBuffersInPlace``
does the same for TVM's ``AttachAttrLayoutFreeBuffers``).

Expects scheduled kernels (after ``SplitLayoutRewritePreproc``). Handles
``call_tir_inplace`` calls whose only in-place argument is the last one, i.e. kernels whose
parameters read like a ``call_tir`` kernel's (inputs, then the output). Guarantees the same
values; the packing kernel is a plain ``call_tir`` on the weight, so ``FoldConstant`` folds it.
"""

from __future__ import annotations

import tvm
from tvm import relax, tirx
from tvm.relax import Call, PyExprMutator, Var, expr_functor

from compiler.relax_utils.fused_groups import is_op


def _split(prim: tirx.PrimFunc, arg_types: list, out_ty) -> tvm.IRModule | None:
    """TVM's split of ``prim`` called as ``call_tir(prim, args) -> out``: a module whose ``main``
    is ``[packing call_tir(s)…, compute call_tir]``, or None when there is nothing to split."""
    bb = relax.BlockBuilder()
    kernel = bb.add_func(prim, "kernel")
    params = [Var(f"a{i}", ty) for i, ty in enumerate(arg_types)]
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(bb.emit(relax.op.call_tir(kernel, relax.Tuple(params), out_ty)))
        bb.emit_func_output(out)
    split = relax.transform.SplitLayoutRewritePreproc()(bb.get())
    if any(gv.name_hint == "kernel" for gv in split.get_global_vars()):
        return None  # nothing was marked for packing
    return split


@expr_functor.mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.mod = mod
        self.splits: dict[tvm.ir.GlobalVar, tuple[tvm.IRModule, dict] | None] = {}

    def _split_for(self, call: Call):
        gv = call.args[0]
        if gv not in self.splits:
            args = list(call.args[1].fields)
            split = _split(self.mod[gv], [a.ty for a in args[:-1]], args[-1].ty)
            added = {}
            if split is not None:
                for sgv, func in split.functions_items():
                    if isinstance(func, tirx.PrimFunc):
                        added[sgv] = self.builder_.add_func(func, sgv.name_hint.replace("kernel", gv.name_hint))
            self.splits[gv] = None if split is None else (split, added)
        return self.splits[gv]

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        value = binding.value
        if not (is_op(value, "relax.call_tir_inplace") and isinstance(value.args[1], relax.Tuple)
                and [int(i) for i in value.attrs.inplace_indices] == [len(value.args[1].fields) - 1]
                and isinstance(self.mod[value.args[0]], tirx.PrimFunc)):
            return super().visit_var_binding_(binding)
        found = self._split_for(value)
        if found is None:
            return super().visit_var_binding_(binding)
        split, added = found
        main = split["main"]
        bindings = [b for block in main.body.blocks for b in block.bindings]
        if not all(isinstance(b.value, (relax.TupleGetItem, Var)) or is_op(b.value, "relax.call_tir") for b in bindings):
            return super().visit_var_binding_(binding)
        args = [self.visit_expr(a) for a in value.args[1].fields]
        env: dict = dict(zip(main.params, args[:-1]))
        for b in bindings:
            v = b.value
            if isinstance(v, relax.TupleGetItem):  # one packing kernel for several weights
                new = relax.TupleGetItem(env[v.tuple_value], v.index)
            elif is_op(v, "relax.call_tir") and v.args[0].name_hint.endswith("_prepacked"):  # TVM's name
                fields = [env.get(f, f) for f in v.args[1].fields] + [args[-1]]
                new = relax.op.call_tir_inplace(added[v.args[0]], relax.Tuple(fields), [len(fields) - 1], value.ty)
            elif is_op(v, "relax.call_tir"):  # the packing kernel (a tuned one may pack several weights)
                out_ty = list(v.ty.fields) if isinstance(v.ty, relax.TupleType) else v.ty
                new = relax.op.call_tir(added[v.args[0]], relax.Tuple([env.get(f, f) for f in v.args[1].fields]),
                                        out_ty)
            else:  # a plain Var
                env[b.var] = env[v]
                continue
            env[b.var] = self.builder_.emit(new, b.var.name)
        self.set_var_remap(binding.var, env[main.body.body])
        return None


@tvm.transform.module_pass(opt_level=0, name="SplitLayoutRewritePreprocInPlace")
def split_layout_rewrite_preproc_in_place(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Split marked weight packing out of ``call_tir_inplace`` kernels (see the module docstring)."""
    rewriter = _Rewriter(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    return relax.transform.DeadCodeElimination()(rewriter.builder_.get())
