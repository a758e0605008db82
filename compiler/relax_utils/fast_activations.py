"""Vectorizable float32 sigmoid, tanh, erf and GELU for CPU builds.

TVM legalizes ``relax.sigmoid``, ``relax.tanh`` and ``relax.erf`` to ``T.sigmoid``, ``T.tanh`` and
``T.erf``, which LLVM lowers to one scalar ``expf``/``erff`` call per lane: a conv with a fused
SiLU epilogue (x · sigmoid(x), in YOLO-style detectors and ddddocr's CNN), a matmul with a fused
tanh (frspell's seq2seq) or GELU (x · (1 + erf(x/√2)) / 2, in transformers) spent much of their
time in those calls. Here sigmoid is
``1 / (1 + fast_exp(-x))`` (``schedules.recurrent.fast_exp``: range reduction and a degree-7
polynomial), tanh is TOPI's ``fast_tanh`` and erf TOPI's ``fast_erf`` (Eigen's rational
polynomials, clamped where the result is ±1 in float32): each is elementwise and vectorizes
inside the fused kernel.

The polynomials read their input a dozen times or more. kiln's schedules inline a value into several
reads only while the copies stay small (``schedules.rules.common.COPIED_NODES_MAX``), so chained
activations (tanh of tanh in an unrolled recurrence) keep one nest each instead of growing
exponentially. ``relax.nn.gelu`` and ``relax.nn.gelu_tanh`` (ONNX ``Gelu``) are TVM's formulas on
``fast_erf`` and ``fast_tanh``. Expects a call of one of these ops; other dtypes keep TVM's
legalization.
"""

from __future__ import annotations

import math
from typing import Callable

import tvm
from tvm import relax, te, tirx, topi

from schedules.recurrent import fast_exp


def fast_sigmoid(x: te.Tensor) -> te.Tensor:
    """sigmoid(x) = 1 / (1 + fast_exp(-x)), one elementwise stage."""
    one = tirx.const(1.0, "float32")
    return te.compute(x.shape, lambda *i: one / (one + fast_exp(-x(*i))), name="T_sigmoid", tag="elemwise")


def fast_gelu(x: te.Tensor) -> te.Tensor:
    """x · (1/2 + erf(x/√2) / 2), TVM's ``relax.nn.gelu`` formula on ``fast_erf``."""
    half = tirx.const(0.5, "float32")
    return x * (half + topi.fast_erf(x * tirx.const(0.5**0.5, "float32")) * half)


def fast_gelu_tanh(x: te.Tensor) -> te.Tensor:
    """x · (1 + tanh(√(2/π) · x · (1 + 0.044715 x²))) / 2, TVM's ``relax.nn.gelu_tanh`` formula on
    ``fast_tanh``."""
    f32 = "float32"
    inner = tirx.const(math.sqrt(2.0 / math.pi), f32) * x * (tirx.const(1.0, f32) + tirx.const(0.044715, f32) * x * x)
    return tirx.const(0.5, f32) * x * (tirx.const(1.0, f32) + topi.fast_tanh(inner))


def _legalize_float32(op: str, compute: Callable[[te.Tensor], te.Tensor], name: str) -> Callable:
    """A ``LegalizeOps`` function for ``op``: ``compute`` on a float32 argument, else TVM's own."""
    stock = tvm.ir.Op.get(op).get_attr("FLegalize")

    def legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        if str(call.args[0].ty.dtype) != "float32":
            return stock(bb, call)
        return bb.call_te(compute, call.args[0], primfunc_name_hint=name)

    return legalize


# op -> (its float32 computation, the kernel's name hint)
_FAST = {"relax.sigmoid": (fast_sigmoid, "tir_sigmoid"), "relax.tanh": (topi.fast_tanh, "tir_tanh"),
         "relax.erf": (topi.fast_erf, "tir_erf"), "relax.nn.gelu": (fast_gelu, "gelu"),
         "relax.nn.gelu_tanh": (fast_gelu_tanh, "gelu_tanh")}


def legalize_map() -> dict[str, Callable]:
    """kiln's ``LegalizeOps`` entries for the ops above (see the module docstring)."""
    return {op: _legalize_float32(op, compute, name) for op, (compute, name) in _FAST.items()}
