"""``PadMatmulColumns``: a matmul whose constant weight has an awkward column count computes a
few zero columns more, so that the vectorized kernels take it.

kiln's matmul kernels (``ChannelVectorized`` for float32, ``Int8Tensorized`` for int8) vectorize
the output columns in blocks of the vector width and decline other counts, which then run on
the generic rule: the PP-OCR recognizer's last layer, ``[40, 120] x [120, 6625]`` (6625 = 5^3 x
53), took 2.6 ms of its 26 ms that way. The weight gets zero columns up to a multiple of
``COLUMN_MULTIPLE`` (at compile time) and a ``strided_slice`` drops them from the result; the
slice is elementwise, so it fuses into the matmul kernel's epilogue.

Expects Relax with constant 2-D weights (after kiln's simplification steps, before INT8
quantization: the padded columns quantize to zero). Rewrites only matmuls with at least
``MIN_COLUMNS`` columns (the extra work stays under 25 %). Guarantees the same values.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import Constant
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

COLUMN_MULTIPLE = 16  # float32 lanes of AVX-512 (AVX2: 8, the int8 kernels: 8 or 16)
MIN_COLUMNS = 64


@tvm.transform.module_pass(opt_level=0, name="PadMatmulColumns")
def pad_matmul_columns(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Pad constant matmul weights to ``COLUMN_MULTIPLE`` columns and slice the result back."""
    data, weight = wildcard(), is_const()
    pattern = is_op("relax.matmul")(data, weight)

    def rewrite(expr: relax.Call, matched) -> relax.Expr:
        w: Constant = matched[weight]
        value = w.value.numpy()
        columns = value.shape[-1] if value.ndim == 2 else 0
        if value.ndim != 2 or columns < MIN_COLUMNS or columns % COLUMN_MULTIPLE == 0:
            return expr
        padded = np.pad(value, ((0, 0), (0, -columns % COLUMN_MULTIPLE)))
        wide = relax.op.matmul(matched[data], relax.const(padded, str(value.dtype)), out_dtype=expr.attrs.out_dtype)
        axis = len(expr.ty.shape) - 1
        return relax.op.strided_slice(wide, axes=[axis], begin=[0], end=[columns])

    out = None
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            new = rewrite_call(pattern, rewrite, func)
            if not new.same_as(func):
                out = out if out is not None else mod.clone()
                out[gv] = new
    return out if out is not None else mod
