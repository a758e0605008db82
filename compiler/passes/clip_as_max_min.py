"""``ClipAsMaxMin``: clips become Relax ``maximum``/``minimum``, which ``ConvertLayout`` converts.

An ONNX ``Clip`` (ReLU6; the clip inside each HardSwish/HardSigmoid) reaches Relax in one of
two forms: ``relax.clip(x, low, high)`` (constant attributes), or — for ``Clip`` with bound
inputs, opset 11 and later — as TVM's importer emits it, ``call_tir`` of TE-generated
``maximum``/``minimum`` kernels. TVM 0.27's ``ConvertLayout`` has no layout rule for either
(``FRelaxInferLayout`` is registered for the ``relax.maximum``/``relax.minimum`` operators,
not for ``relax.clip``, and a ``call_tir`` is opaque), so converting convolutions to NHWC
wraps every clip in a transpose back to NCHW and one forward again, and those transposes end
the conv's fused epilogue (the PP-OCR classifier in NHWC: 36 extra transposes).

Expects a Relax module before ``ConvertLayout``, after ``FoldConstant`` (bounds computed by
the importer are then constants). Guarantees the same values: only clips with a scalar
constant bound are rewritten, each into the operator its kernel computes.
"""

from __future__ import annotations

import re

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import Constant

from compiler.relax_utils.rewrite import rewrite_relax_functions

_TE_KERNEL = re.compile(r"(maximum|minimum)\d*")  # the importer's emit_te(topi.maximum, ...) kernels


def _scalar(expr: relax.Expr) -> bool:
    return isinstance(expr, Constant) and np.ndim(expr.value.numpy()) == 0


def _as_operator(call: relax.Call) -> relax.Expr | None:
    """The ``relax.maximum``/``relax.minimum``/pair for a clip-like call; None for anything else."""
    if call.op.same_as(tvm.ir.Op.get("relax.clip")):
        data, low, high = call.args
        if not all(isinstance(b, (tvm.tirx.IntImm, tvm.tirx.FloatImm)) for b in (low, high)):
            return None
        dtype = str(data.ty.dtype)
        return relax.op.minimum(relax.op.maximum(data, relax.const(low.value, dtype)),
                                relax.const(high.value, dtype))
    if call.op.same_as(tvm.ir.Op.get("relax.call_tir")) and isinstance(call.args[0], tvm.ir.GlobalVar):
        match = _TE_KERNEL.fullmatch(call.args[0].name_hint)
        args = call.args[1]
        if match and isinstance(args, relax.Tuple) and len(args.fields) == 2 and _scalar(args.fields[1]):
            op = relax.op.maximum if match.group(1) == "maximum" else relax.op.minimum
            return op(args.fields[0], args.fields[1])
    return None


@relax.expr_functor.mutator
class _Rewrite(relax.PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if isinstance(call.op, tvm.ir.Op):
            replaced = _as_operator(call)
            if replaced is not None:
                return replaced
        return call


@tvm.transform.module_pass(opt_level=0, name="ClipAsMaxMin")
def clip_as_max_min(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Rewrite the clips of every Relax function (see module doc); unused TE kernels stay for DCE."""
    return rewrite_relax_functions(mod, _Rewrite)
