"""``DropDropout``: at inference ``Dropout`` is the identity; its output becomes its input.

TVM's ONNX importer keeps ``Dropout`` as ``relax.nn.dropout`` (a tuple of output and mask)
and legalizes it into a copy kernel. FuseOps folds that copy into a neighbour, but it still
costs a pass over the tensor and hides what it follows: SqueezeNet's last concatenation
(``concat`` + ``dropout``) cannot be written in place, and Inception's final average pool
(``avg_pool`` + ``dropout``) is left to the parallel fallback schedule instead of the pooling rule.

Expects a Relax module before ``LegalizeOps``. Guarantees the same values (inference mode);
only ``dropout(x)[0]`` is replaced, an unused mask is left for ``DeadCodeElimination``.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.dpl import is_op, is_tuple_get_item, rewrite_call, wildcard


@tvm.transform.module_pass(opt_level=0, name="DropDropout")
def drop_dropout(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Replace ``dropout(x)[0]`` by ``x`` in every Relax function."""
    data = wildcard()
    pattern = is_tuple_get_item(is_op("relax.nn.dropout")(data), 0)
    out = None
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            new = rewrite_call(pattern, lambda _expr, matched: matched[data], func)
            if not new.same_as(func):
                out = out if out is not None else mod.clone()
                out[gv] = new
    return out if out is not None else mod
