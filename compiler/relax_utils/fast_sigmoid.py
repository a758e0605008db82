"""A vectorizable float32 sigmoid for CPU builds.

TVM legalizes ``relax.sigmoid`` to ``T.sigmoid``, which LLVM lowers to ``1 / (1 + exp(-x))``
with ``exp`` as a scalar ``expf`` call per lane: a conv with a fused SiLU epilogue (x ·
sigmoid(x), in YOLO-style detectors and ddddocr's CNN) spent much of its time in those calls.
``legalize_sigmoid`` computes the same formula with ``fast_exp`` (range reduction and a degree-7
polynomial, TOPI's ``fast_exp`` written as an expression, as the recurrent kernels use), which
vectorizes inside the fused kernel. It expects a ``relax.sigmoid`` call; other dtypes keep TVM's
legalization.
"""

from __future__ import annotations

from tvm import relax, te, tirx

from schedules.recurrent import fast_exp


def fast_sigmoid(x: te.Tensor) -> te.Tensor:
    """sigmoid(x) = 1 / (1 + fast_exp(-x)), one elementwise stage."""
    one = tirx.const(1.0, "float32")
    return te.compute(x.shape, lambda *i: one / (one + fast_exp(-x(*i))), name="T_sigmoid", tag="elemwise")


def legalize_sigmoid(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """A ``LegalizeOps`` function for ``relax.sigmoid`` (see the module docstring)."""
    from tvm import topi

    if str(call.args[0].ty.dtype) != "float32":
        return bb.call_te(topi.sigmoid, call.args[0], primfunc_name_hint="tir_sigmoid")
    return bb.call_te(fast_sigmoid, call.args[0], primfunc_name_hint="tir_sigmoid")
