"""Floating-point operations per call of each TIR kernel of a module (TVM's estimate)."""

from __future__ import annotations


def kernel_flops(mod) -> dict[str, float]:
    """Floating-point (or integer multiply-add) operations per call of each TIR kernel, TVM's
    estimate on the scheduled kernel. Only for static shapes: the estimate counts a symbolic
    extent as 1."""
    import tvm
    from tvm.s_tir.analysis import estimate_tir_flops

    flops = {}
    for gvar, func in mod.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        try:
            flops[gvar.name_hint] = float(estimate_tir_flops(tvm.IRModule({"main": func})))
        except tvm.error.InternalError:  # an expression TVM cannot count (e.g. a vector broadcast in an ARM int8 kernel)
            continue
    return flops
