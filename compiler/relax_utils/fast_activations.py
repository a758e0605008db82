"""Vectorizable float32 sigmoid, tanh and erf for CPU builds.

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
exponentially. Expects a ``relax.sigmoid`` / ``relax.tanh`` / ``relax.erf`` call; other dtypes
keep TVM's legalization.
"""

from __future__ import annotations

from tvm import relax, te, tirx, topi

from schedules.recurrent import fast_exp


def fast_sigmoid(x: te.Tensor) -> te.Tensor:
    """sigmoid(x) = 1 / (1 + fast_exp(-x)), one elementwise stage."""
    one = tirx.const(1.0, "float32")
    return te.compute(x.shape, lambda *i: one / (one + fast_exp(-x(*i))), name="T_sigmoid", tag="elemwise")


def legalize_sigmoid(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """A ``LegalizeOps`` function for ``relax.sigmoid`` (see the module docstring)."""
    fast = str(call.args[0].ty.dtype) == "float32"
    return bb.call_te(fast_sigmoid if fast else topi.sigmoid, call.args[0], primfunc_name_hint="tir_sigmoid")


def legalize_tanh(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """A ``LegalizeOps`` function for ``relax.tanh`` (see the module docstring)."""
    fast = str(call.args[0].ty.dtype) == "float32"
    return bb.call_te(topi.fast_tanh if fast else topi.tanh, call.args[0], primfunc_name_hint="tir_tanh")


def legalize_erf(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """A ``LegalizeOps`` function for ``relax.erf`` (see the module docstring)."""
    fast = str(call.args[0].ty.dtype) == "float32"
    return bb.call_te(topi.fast_erf if fast else topi.erf, call.args[0], primfunc_name_hint="tir_erf")
