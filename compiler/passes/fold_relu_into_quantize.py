"""``FoldReluIntoQuantize``: drop a ReLU whose only readers quantize to the lowest code at zero."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import Constant

from compiler.quantization.layers import op_name


@tvm.transform.module_pass(opt_level=0, name="FoldReluIntoQuantize")
def fold_relu_into_quantize(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Drop ``relu`` whose every reader quantizes with its type's lowest zero point (uint8 0, int8
    -128): the quantize's clip does it."""
    bindings = {b.var: b.value for block in mod["main"].body.blocks for b in block.bindings}
    readers: dict = {}  # var -> every expression reading it (inside tuples too); None: main's result
    for value in bindings.values():
        for var in set(relax.analysis.all_vars(value)):
            readers.setdefault(var, []).append(value)
    for var in set(relax.analysis.all_vars(mod["main"].body.body)):
        readers.setdefault(var, []).append(None)

    lowest = {"uint8": 0, "int8": -128}

    def _clips_at_zero(value, var) -> bool:
        """``value`` quantizes ``var`` with its type's lowest zero point: it clips negatives itself."""
        if value is None or op_name(value) != "relax.quantize" or not value.args[0].same_as(var):
            return False
        dtype = str(value.attrs.out_dtype)
        zero = value.args[2] if dtype in lowest else None
        return isinstance(zero, Constant) and bool(np.all(zero.value.numpy() == lowest[dtype]))

    droppable = {var for var, value in bindings.items()
                 if op_name(value) == "relax.nn.relu" and readers.get(var)
                 and all(_clips_at_zero(r, var) for r in readers[var])}
    if not droppable:
        return mod

    @relax.expr_functor.mutator
    class _Drop(relax.PyExprMutator):
        def visit_var_binding_(self, binding):
            if binding.var in droppable:
                self.set_var_remap(binding.var, self.visit_expr(binding.value.args[0]))
                return
            super().visit_var_binding_(binding)

    out = tvm.IRModule(dict(mod.functions_items()))
    out["main"] = _Drop(mod).visit_expr(mod["main"])
    return relax.transform.Normalize()(out)
