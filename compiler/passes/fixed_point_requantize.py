"""``FixedPointRequantize``: requantize an int32 accumulator with an integer multiplier and shift.

``LowerQDQ`` returns each int8 layer to float as ``astype(acc, float32) * scale[c]``, and the
next layer's ``quantize`` divides by its scale, rounds, adds its zero point and clips: float
requantization, what ONNX Runtime does. This pass offers the integer form (gemmlowp / TFLite
style): with ``m[c] = scale[c] / scale_y = M[c] * 2**-n[c]`` (``M`` a 31-bit integer),

    q = clip(((int64(acc) * M[c] + 2**(n[c]-1)) >> n[c]) + zero_y, lo, hi)

Expects a module after ``LowerQDQ`` (and ``FoldReluIntoQuantize``). Rewrites every per-tensor
``quantize(multiply(astype(acc_int32, float32), constant), scale_y, zero_y)``; guarantees each
rewritten value is ``round(acc * scale[c] / scale_y)`` with ties rounded up, where the float
form rounds ``float32(acc) * scale[c] / scale_y`` half to even: the two agree but for values
within float32 rounding of a half step (then one step apart). A float product that other ops
also read (a residual path) stays for them.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import Constant

from compiler.quantization.layers import op_name


def multiplier_and_shift(real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(M, n)`` with ``real ~= M * 2**-n``, ``2**30 <= M < 2**31`` (int64 arrays; ``real > 0``)."""
    fraction, exponent = np.frexp(real.astype(np.float64))  # real = fraction * 2**exponent, fraction in [0.5, 1)
    multiplier = np.round(fraction * 2.0**31).astype(np.int64)
    carry = multiplier == 2**31  # fraction rounded up to 1.0
    multiplier = np.where(carry, 2**30, multiplier)
    shift = 31 - exponent.astype(np.int64) - carry.astype(np.int64)
    return multiplier, shift


def _const(array: np.ndarray) -> Constant:
    return relax.const(array, str(array.dtype))


@tvm.transform.module_pass(opt_level=0, name="FixedPointRequantize")
def fixed_point_requantize(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Rewrite the float requantizations of ``main`` (see the module docstring)."""
    bindings = {b.var: b.value for block in mod["main"].body.blocks for b in block.bindings}

    def scaled_accumulator(expr):
        """``(acc, scale)`` if ``expr`` is ``multiply(astype(int32 acc, float32), constant)``."""
        product = bindings.get(expr)
        if op_name(product) != "relax.multiply" or not isinstance(product.args[1], Constant):
            return None
        cast = bindings.get(product.args[0])
        if op_name(cast) != "relax.astype" or str(cast.args[0].ty.dtype) != "int32":
            return None
        return cast.args[0], product.args[1].value.numpy()

    @relax.expr_functor.mutator
    class _Rewrite(relax.PyExprMutator):
        def visit_call_(self, call: relax.Call) -> relax.Expr:
            call = super().visit_call_(call)
            if op_name(call) != "relax.quantize":
                return call
            found = scaled_accumulator(call.args[0])
            scale_y, zero_y = call.args[1], call.args[2]
            if found is None or not all(isinstance(c, Constant) and c.value.numpy().size == 1
                                        for c in (scale_y, zero_y)):
                return call
            acc, scale = found
            real = scale.astype(np.float64) / float(scale_y.value.numpy().reshape(()))
            if np.any(real <= 0):
                return call
            multiplier, shift = multiplier_and_shift(real)
            if np.any(shift < 1):
                return call  # a multiplier of 2**30 or more: not what int8 layers produce; keep float
            dtype = str(call.attrs.out_dtype)
            info = np.iinfo(dtype)
            wide = relax.op.multiply(relax.op.astype(self.visit_expr(acc), "int64"), _const(multiplier))
            rounded = relax.op.right_shift(relax.op.add(wide, _const(np.left_shift(np.int64(1), shift - 1))),
                                           _const(shift))
            shifted = relax.op.add(rounded, _const(np.asarray(zero_y.value.numpy().reshape(()), np.int64)))
            low, high = (_const(np.asarray(v, np.int64)) for v in (info.min, info.max))
            return relax.op.astype(relax.op.minimum(relax.op.maximum(shifted, low), high), dtype)

    out = mod.clone()
    out["main"] = _Rewrite(mod).visit_expr(mod["main"])
    return relax.transform.DeadCodeElimination()(relax.transform.Normalize()(out))
