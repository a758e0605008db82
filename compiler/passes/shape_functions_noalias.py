"""``ShapeFunctionsNoAlias``: the VM's shape functions get ``tirx.noalias``, like every kernel.

Works around a TVM 0.27 code generation bug. ``CodeGenLLVM::DeclareFunctionInternal`` keeps
whether a function is ``tirx.noalias`` in one member (``is_restricted_``) that every
declaration overwrites, and functions are all declared before any is generated. A library with
symbolic sizes carries shape functions (``VMShapeLower``, marked ``tirx.is_host_func``) that
have no ``tirx.noalias``; when one of them is declared last, every kernel is generated without
``noalias`` on its buffers, LLVM inlines its compute function into the FFI wrapper and keeps its
register tiles in memory: a symbolic LSTM input projection ran 10.4 ms instead of 4.1 ms.

Expects a module after ``VMShapeLower``. Guarantees: the shape functions (one int64 heap
tensor each, so nothing to alias) are marked; kernels are unchanged.
"""

from __future__ import annotations

import tvm
from tvm import tirx


@tvm.transform.module_pass(opt_level=0, name="ShapeFunctionsNoAlias")
def shape_functions_noalias(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Mark each host-side PrimFunc without ``tirx.noalias`` as ``tirx.noalias``."""
    out = None
    for gv, func in mod.functions_items():
        if (isinstance(func, tirx.PrimFunc) and func.attrs is not None and func.attrs.get("tirx.is_host_func")
                and not func.attrs.get("tirx.noalias")):
            out = out if out is not None else mod.clone()
            out[gv] = func.with_attr("tirx.noalias", True)
    return out if out is not None else mod
