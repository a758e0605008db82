"""``PadOutputChannels``: a conv2d or matmul whose constant weight has an awkward output-channel
count computes a few zero channels more, so that the vectorized kernels take it.

kiln's kernels (``ChannelVectorized`` for float32, ``Int8Tensorized`` for int8) vectorize the
output channels (conv F, matmul N) in blocks of the vector width and decline other counts,
which then run on the generic rules. The PP-OCR recognizer has both: its last layer,
``[40, 120] x [120, 6625]`` (6625 = 5^3 x 53), and two (1, 3) convs from 480 and 960 channels
to 60 (INT8: 1.4 and 2.7 ms on the generic rule). The weight gets zero output channels up to a
multiple of ``CHANNEL_MULTIPLE`` (at compile time) and a ``strided_slice`` drops them from the
result; the slice is elementwise, so it fuses into the kernel's epilogue.

Expects Relax with constant weights (after kiln's simplification steps: batch-norm folded;
before layout conversion and INT8 quantization, which see the padded weight: its zero
channels quantize to zero). Rewrites a matmul with a 2-D weight of at least ``MIN_COLUMNS``
columns not a multiple of ``CHANNEL_MULTIPLE``, and an ungrouped NCHW conv2d with at least
``MIN_CONV_CHANNELS`` output channels not a multiple of 8, or of 16 where the zero channels add
at most 1/``MAX_EXTRA_WORK`` of the work (256 channels and up). Guarantees the same values.

Convs with a multiple of 8 but not of 16 (SqueezeNet's 1000-class 1x1 conv) are padded too:
AVX2's vectors take them, but on AVX-512 they would fall to ``SpatialVectorized``.
Small ones (PP-OCR's 40, 72, 120) stay as they are: 8 more channels would be 7-20 % more work
on every target, and kiln's passes do not know the target.
Padded to 1008, SqueezeNet FP32 on an AVX-512 CPU took 2.15 and 2.35 ms against 2.39 and 2.52
(two same-process A/B runs, alternating rounds, identical outputs; 256-bit vectors for the
unpadded conv measured slower instead, 2.56 ms); the x86-avx2 target built on the same CPU
was unchanged (3.90 vs 3.93, 4.01 vs 3.95 ms). SqueezeNet INT8 (VNNI): 0.66 against 0.77 ms;
x86-avx2 INT8 1.90 against 1.90 ms (outputs within 3e-7: the padded conv's calibration range
sees the zero channels).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import Constant
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

CHANNEL_MULTIPLE = 16  # float32 lanes of AVX-512 (AVX2: 8; the int8 kernels: 8 or 16)
MIN_COLUMNS = 64
MIN_CONV_CHANNELS = 32  # below, the zero channels would add more than a quarter of the work
MAX_EXTRA_WORK = 32  # a conv whose count is a multiple of 8 is padded only for at most 1/32 more work


def _padded(value: np.ndarray, axis: int) -> np.ndarray:
    widths = [(0, -value.shape[axis] % CHANNEL_MULTIPLE if i == axis else 0) for i in range(value.ndim)]
    return np.pad(value, widths)


def _sliced(wide: relax.Expr, axis: int, count: int) -> relax.Expr:
    return relax.op.strided_slice(wide, axes=[axis], begin=[0], end=[count])


def _pad_matmul(expr: relax.Call, data: relax.Expr, weight: Constant) -> relax.Expr:
    value = weight.value.numpy()
    columns = value.shape[-1] if value.ndim == 2 else 0
    if value.ndim != 2 or columns < MIN_COLUMNS or columns % CHANNEL_MULTIPLE == 0:
        return expr
    wide = relax.op.matmul(data, relax.const(_padded(value, 1), str(value.dtype)), out_dtype=expr.attrs.out_dtype)
    return _sliced(wide, len(expr.ty.shape) - 1, columns)


def _pad_conv(expr: relax.Call, data: relax.Expr, weight: Constant) -> relax.Expr:
    attrs = expr.attrs
    value = weight.value.numpy()
    if (int(attrs.groups) != 1 or str(attrs.data_layout) != "NCHW" or str(attrs.kernel_layout) != "OIHW"
            or str(attrs.out_layout) not in ("", "NCHW")):
        return expr
    channels = value.shape[0]
    extra = -channels % CHANNEL_MULTIPLE
    if channels < MIN_CONV_CHANNELS or extra == 0:
        return expr
    if channels % 8 == 0 and extra * MAX_EXTRA_WORK > channels:  # AVX2 takes it as is; AVX-512 only pays off cheaply
        return expr
    wide = relax.op.nn.conv2d(data, relax.const(_padded(value, 0), str(value.dtype)), strides=attrs.strides,
                              padding=attrs.padding, dilation=attrs.dilation, groups=1, data_layout="NCHW",
                              kernel_layout="OIHW", out_dtype=attrs.out_dtype)
    return _sliced(wide, 1, channels)


@tvm.transform.module_pass(opt_level=0, name="PadOutputChannels")
def pad_output_channels(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Pad constant conv2d/matmul weights' output channels and slice the result back (see module doc)."""
    data, weight = wildcard(), is_const()
    rewrites = [(is_op("relax.matmul")(data, weight), _pad_matmul), (is_op("relax.nn.conv2d")(data, weight), _pad_conv)]
    out = None
    for gv, func in mod.functions_items():
        if not isinstance(func, relax.Function):
            continue
        new = func
        for pattern, pad in rewrites:
            new = rewrite_call(pattern, lambda expr, matched, pad=pad: pad(expr, matched[data], matched[weight]), new)
        if not new.same_as(func):
            out = out if out is not None else mod.clone()
            out[gv] = new
    return out if out is not None else mod
