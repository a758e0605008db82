"""``AttachAttrLayoutFreeBuffersInPlace``: TVM's ``AttachAttrLayoutFreeBuffers`` for kernels called in place.

TVM's ``AttachAttrLayoutFreeBuffers`` marks which kernel parameters are constants
(``layout_free_buffers``), which lets MetaSchedule's ``RewriteLayout`` pack them for tuned
schedules. It only looks at ``call_tir``: a kernel called with ``call_tir_inplace``
(``WriteConcatInPlace``'s writers) could not be tuned with packed weights. This pass marks
those kernels the same way; ``SplitLayoutRewritePreprocInPlace`` later moves their packing out.

Expects fused TIR kernels (after ``FuseTIR``), run right after TVM's ``AttachAttrLayoutFreeBuffers``.
A kernel that already carries the attribute is left as it is; one called in place with its
constants at different positions gets an empty list. Changes nothing else.
"""

from __future__ import annotations

import tvm
from tvm import relax, tirx

from compiler.relax_utils.fused_groups import is_op


@tvm.transform.module_pass(opt_level=0, name="AttachAttrLayoutFreeBuffersInPlace")
def attach_attr_layout_free_buffers_in_place(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Mark the constant arguments of in-place kernels ``layout_free_buffers``, as TVM's
    ``AttachAttrLayoutFreeBuffers`` does for ``call_tir`` kernels (run right after it).

    A kernel that already carries the attribute (also called with ``call_tir``) is left as it is.
    """
    marks: dict[tvm.ir.GlobalVar, tuple[int, ...]] = {}
    for _, func in mod.functions_items():
        if not isinstance(func, relax.Function):
            continue
        for binding in (b for block in func.body.blocks for b in block.bindings):
            value = binding.value
            if is_op(value, "relax.call_tir_inplace") and isinstance(value.args[1], relax.Tuple):
                consts = tuple(i for i, a in enumerate(value.args[1].fields) if isinstance(a, tvm.ir.expr.Constant))
                marks[value.args[0]] = consts if marks.get(value.args[0], consts) == consts else ()
    out = None
    for gv, consts in marks.items():
        prim = mod[gv]
        if isinstance(prim, tirx.PrimFunc) and (prim.attrs is None or "layout_free_buffers" not in prim.attrs):
            out = out if out is not None else mod.clone()
            # Plain ints, as TVM's own pass stores them: MetaSchedule's RewriteLayout reads an
            # Array<int> and fails on IntImm ("Cannot convert from type Array[ir.IntImm]").
            out[gv] = prim.with_attr("layout_free_buffers", [int(i) for i in consts])
    return out if out is not None else mod
