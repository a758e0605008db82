"""``HoistQuantize``: quantize before max-pooling and concatenation, so int8 layers pass int8 tensors.

A per-tensor ``quantize`` is elementwise and monotonic, so
``quantize(max_pool2d(x)) == max_pool2d(quantize(x))`` and
``quantize(concat(a, b)) == concat(quantize(a), quantize(b))``. Moved above the pool or the
concatenation, the quantize fuses into the epilogue of the layer that produced ``x`` (the
conv kernel writes uint8; SqueezeNet's in-place concat writers write uint8 into the
concatenated buffer), and the pool or concat moves a quarter of the bytes. Max-pool padding
stays correct: it pads with the smallest value of the dtype, which quantize maps to.

Expects Relax after ``LowerQDQ``. Rewrites only where the pooled/concatenated tensor is read
by that quantize alone and every input moved through is read by the pool/concat alone
(otherwise the float tensor would still be needed and a second quantize would cost a pass
over it). Repeats until nothing moves (a quantize after concat(max_pool(..), ..) goes up
twice). A quantize that arrives right after a dequantize with the same scale, zero point
and integer type (a pre-quantized QDQ model's ``DQ -> max_pool/concat -> Q``) cancels with it:
``quantize(dequantize(q)) == q``, since ``(q - z) * s / s`` rounds back to ``q - z``.
Guarantees the same values.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.ir.expr import Constant

from compiler.quantization.layers import emit_like, op_name, use_counts

MOVES_THROUGH = ("relax.nn.max_pool2d", "relax.concat")


def _per_tensor(quantize: relax.Call) -> bool:
    scale, zero = quantize.args[1], quantize.args[2]
    return all(isinstance(c, Constant) and c.value.numpy().size == 1 for c in (scale, zero))


def _same_parameters(quantize: relax.Call, dequantize: relax.Call) -> bool:
    """``quantize`` undoes ``dequantize``: equal per-tensor scale and zero point, and the same integer type."""
    if not (_per_tensor(quantize) and _per_tensor(dequantize)):
        return False
    same = all(float(a.value.numpy().item()) == float(b.value.numpy().item())
               for a, b in zip(quantize.args[1:], dequantize.args[1:]))
    return same and str(quantize.attrs.out_dtype) == str(dequantize.args[0].ty.dtype)


def _hoist_once(mod: tvm.IRModule) -> tuple[tvm.IRModule, int]:
    func = mod["main"]
    uses = use_counts(func)
    bindings = {b.var: b.value for block in func.body.blocks for b in block.bindings}

    def inputs_of(call: relax.Call) -> list | None:
        """The tensors ``call`` (a pool or a concat of a literal tuple) reads, if each is read by it alone."""
        if op_name(call) == "relax.concat":
            if not isinstance(call.args[0], relax.Tuple):
                return None  # a tuple-valued variable: its items are not visible here
            items = list(call.args[0].fields)
        else:
            items = [call.args[0]]
        return items if all(isinstance(x, relax.Var) and uses.get(x) == 1 for x in items) else None

    moved_count = [0]

    @relax.expr_functor.mutator
    class _Hoist(relax.PyExprMutator):
        def visit_var_binding_(self, binding):
            quantize = binding.value
            source = quantize.args[0] if op_name(quantize) == "relax.quantize" else None
            through = bindings.get(source) if isinstance(source, relax.Var) else None
            if (op_name(through) == "relax.dequantize" and _same_parameters(quantize, through)
                    and isinstance(binding.var, relax.DataflowVar)):
                self.set_var_remap(binding.var, self.visit_expr(through.args[0]))
                moved_count[0] += 1
                return
            inputs = (inputs_of(through) if op_name(through) in MOVES_THROUGH and uses.get(source) == 1
                      and _per_tensor(quantize) else None)
            if inputs is None:
                return super().visit_var_binding_(binding)
            attrs = quantize.attrs
            moved = [self.builder_.emit(relax.op.quantize(self.visit_expr(x), quantize.args[1], quantize.args[2],
                                                          axis=int(attrs.axis), out_dtype=str(attrs.out_dtype)))
                     for x in inputs]
            args = [relax.Tuple(moved)] if op_name(through) == "relax.concat" else moved
            self.set_var_remap(binding.var, emit_like(self.builder_, relax.Call(through.op, args, through.attrs),
                                                      binding.var))
            moved_count[0] += 1

    mutator = _Hoist(mod)
    out = tvm.IRModule(dict(mod.functions_items()))
    out["main"] = mutator.visit_expr(func)
    return relax.transform.DeadCodeElimination()(relax.transform.Normalize()(out)), moved_count[0]


@tvm.transform.module_pass(opt_level=0, name="HoistQuantize")
def hoist_quantize(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Move per-tensor quantizes above max-pools and concatenations (see module doc)."""
    for _ in range(16):
        mod, moved = _hoist_once(mod)
        if not moved:
            break
    return mod
