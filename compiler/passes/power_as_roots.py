"""``PowerAsRoots``: ``x ** c`` for a few constant exponents as square roots and products.

TVM lowers ``relax.power`` to the C library's scalar ``powf``, one call per element, which
no loop vectorizes. Local response normalization (``LRN``, Inception v1) raises its window
sums to the power 0.75: ``powf`` made its two kernels 2.3 ms of Inception v1's 18 ms on an
AVX-512 machine. Square roots are vector instructions, and 0.75 is 1/2 + 1/4.

Expects a Relax module after ``FoldConstant`` (exponents are scalar constants). Rewrites
``power(x, c)`` for float ``x`` and ``c`` in ``EXPONENTS``; other exponents stay. Guarantees
the same values up to rounding (a root is correctly rounded, ``powf`` within an ulp; both give
NaN for negative ``x`` where the exponent is fractional, and the same infinities and zeros).
"""

from __future__ import annotations

from typing import Callable

import tvm
import tvm_ffi
from tvm import relax
from tvm.ir.expr import Constant

from compiler.relax_utils.rewrite import rewrite_relax_functions

_sqrt, _mul = relax.op.sqrt, relax.op.multiply

EXPONENTS: dict[float, Callable[[relax.Expr], relax.Expr]] = {
    0.25: lambda x: _sqrt(_sqrt(x)),
    0.5: _sqrt,
    0.75: lambda x: _mul(_sqrt(x), _sqrt(_sqrt(x))),
    1.0: lambda x: x,
    1.5: lambda x: _mul(x, _sqrt(x)),
    2.0: lambda x: _mul(x, x),
    3.0: lambda x: _mul(_mul(x, x), x),
}


def _exponent(expr: relax.Expr) -> float | None:
    if not isinstance(expr, Constant):
        return None
    value = expr.value.numpy()
    return float(value.reshape(-1)[0]) if value.size == 1 and value.dtype.kind == "f" else None


@relax.expr_functor.mutator
class _Rewrite(relax.PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        result_type = call.ty
        call = super().visit_call_(call)
        if not call.op.same_as(tvm.ir.Op.get("relax.power")):
            return call
        base, exponent = call.args
        c = _exponent(exponent)
        if c not in EXPONENTS or "float" not in str(base.ty.dtype):
            return call
        if not tvm_ffi.structural_equal(result_type, base.ty):
            return call  # a [1]-shaped exponent broadcasting a scalar base: the result has its shape
        return EXPONENTS[c](base)


@tvm.transform.module_pass(opt_level=0, name="PowerAsRoots")
def power_as_roots(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Rewrite the constant powers of every Relax function (see module doc)."""
    return rewrite_relax_functions(mod, _Rewrite)
