"""``MarkInt8WeightBits``: kernels called with int8 constant weights get the bits those weights need.

On x86 with AVX2 but without VNNI, kiln's int8 kernels use the saturating ``vpmaddubsw``,
exact only while every weight lies in [-64, 64] (``schedules.int8.int8_bits``). kiln's own
quantizer produces such 7-bit weights there (``schedules.int8.weight_bits_for``), but a model
quantized with 8-bit weights may carry others. This pass writes, on every PrimFunc called with
an int8 constant argument, ``schedules.int8.WEIGHT_BITS_ATTR`` (7 or 8, the most any of its
calls needs); ``Int8Tensorized`` (``schedules.rules.int8``) then uses only intrinsics exact for
that many bits (8: VNNI, or the generic int32 loops), so such a model stays exact on AVX2.

Expects legalized, fused TIR with constant weights as ``call_tir`` / ``call_tir_inplace``
arguments (after ``FuseTIR``, ``WriteConcatInPlace``'s writers included); run it before the
default schedules. Changes nothing else.
"""

from __future__ import annotations

import tvm
from tvm import relax, tirx
from tvm.ir.expr import Constant

from schedules.int8 import WEIGHT_BITS_ATTR, int8_bits

# WriteConcatInPlace's kernels are called with call_tir_inplace: their weights count too.
_KERNEL_CALLS = ("relax.call_tir", "relax.call_tir_inplace")


@tvm.transform.module_pass(opt_level=0, name="MarkInt8WeightBits")
def mark_int8_weight_bits(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Mark the PrimFuncs called with int8 constant arguments (see the module docstring)."""
    kernel_calls = [tvm.ir.Op.get(name) for name in _KERNEL_CALLS]
    bits: dict[str, int] = {}

    def visit(expr) -> None:
        if isinstance(expr, relax.Call) and any(expr.op.same_as(op) for op in kernel_calls):
            args = expr.args[1].fields if isinstance(expr.args[1], relax.Tuple) else [expr.args[1]]
            for arg in args:
                if isinstance(arg, Constant) and str(arg.value.dtype) == "int8":
                    name = expr.args[0].name_hint
                    bits[name] = max(bits.get(name, 0), int8_bits(arg.value.numpy()))

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    out = None
    for gvar, func in mod.functions_items():
        if gvar.name_hint in bits and isinstance(func, tirx.PrimFunc):
            out = out if out is not None else mod.clone()  # the caller's module stays as it was
            out[gvar] = func.with_attr(WEIGHT_BITS_ATTR, tirx.IntImm("int32", bits[gvar.name_hint]))
    return out if out is not None else mod
