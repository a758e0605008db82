"""Running an expression mutator over every Relax function of a module: what kiln's
rewrite passes (``ClipAsMaxMin``, ``PowerAsRoots``, ``ScalarConstants``) share."""

from __future__ import annotations

import tvm
from tvm import relax


def rewrite_relax_functions(mod: tvm.IRModule, mutator: type) -> tvm.IRModule:
    """A copy of ``mod`` whose Relax functions went through ``mutator(module).visit_expr``,
    normalized; TIR functions are kept as they are (unused ones stay for dead-code elimination)."""
    out = mod.clone()
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            out[gvar] = mutator(out).visit_expr(func)
    return relax.transform.Normalize()(out)
