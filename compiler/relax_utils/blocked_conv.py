"""Blocked-channel convolutions (``NCHW{b}c``): legalization TVM lacks, and which convs qualify.

In the blocked layout an activation ``[N, C, H, W]`` is stored as ``[N, C/b, H, W, b]``: the
``b`` channels of one pixel are contiguous, ``b`` being the target's vector width (8 floats
on AVX2). A conv reads ``b`` input channels of a pixel from one cache line and writes
``b`` output channels of a pixel as one vector; bias, residual adds, activations and
pooling between convs run on whole vectors too. This is the layout ONNX Runtime's x86
kernels and TVM's old x86 schedules use between convolutions.

TVM's ``ConvertLayout`` propagates such layouts through the graph, but ``LegalizeOps``
refuses a conv2d whose layouts carry a channel block ("cannot be legalized by TOPI at this
moment"), and TOPI's ``conv2d_NCHWc`` reduces over all input channels with one axis
(``ic // b``, ``ic % b`` indices that kiln's schedule rules do not analyse).
``legalize_conv2d`` computes it with separate reduction axes instead.
"""

from __future__ import annotations

import re

import tvm
from tvm import relax, te, topi

_BLOCKED_DATA = re.compile(r"^NCHW(\d+)c$")
_BLOCKED_KERNEL = re.compile(r"^OIHW(\d+)i(\d+)o$")


def blocked_layouts(block: int) -> list[str]:
    """The (data, kernel) layouts of a blocked conv2d for ``ConvertLayout``."""
    return [f"NCHW{block}c", f"OIHW{block}i{block}o"]


def can_block(call: relax.Call, block: int) -> bool:
    """Whether a conv2d call can run blocked: float32, ungrouped, NCHW, input and output
    channels multiples of ``block``, static shapes. Others (an RGB first layer, depthwise
    convs) stay NCHW, with a layout transform at the boundary."""
    attrs = call.attrs
    if int(attrs.groups) != 1 or attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW":
        return False
    data, weight = call.args[0].ty, call.args[1].ty
    if str(data.dtype) != "float32" or str(weight.dtype) != "float32":
        return False
    shapes = [data.shape, weight.shape]
    if any(s is None or any(not isinstance(d, tvm.tirx.IntImm) for d in s) for s in shapes):
        return False
    return int(data.shape[1]) % block == 0 and int(weight.shape[0]) % block == 0


def _blocked_conv2d(data: te.Tensor, kernel: te.Tensor, strides, padding, dilation, out_dtype: str) -> te.Tensor:
    """``out[n, fo, y, x, fi] = sum(co, kh, kw, ci) pad(data)[n, co, y*s + kh*d, x*s + kw*d, ci]
    * kernel[fo, co, kh, kw, ci, fi]``; reduction order: input-channel blocks, window, lanes."""
    n, c_blocks, height, width, _ = (int(d) for d in data.shape)
    f_blocks, _, kh, kw, c_block, f_block = (int(d) for d in kernel.shape)
    sh, sw = (int(s) for s in strides)
    dh, dw = (int(d) for d in dilation)
    top, left, bottom, right = (int(p) for p in padding)
    out_h = (height + top + bottom - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + left + right - dw * (kw - 1) - 1) // sw + 1
    if top or left or bottom or right:
        data = topi.nn.pad(data, [0, 0, top, left, 0], [0, 0, bottom, right, 0], name="pad_temp")
    rco = te.reduce_axis((0, c_blocks), name="rco")
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    rci = te.reduce_axis((0, c_block), name="rci")
    return te.compute(
        (n, f_blocks, out_h, out_w, f_block),
        lambda b, fo, y, x, fi: te.sum(
            data[b, rco, y * sh + ry * dh, x * sw + rx * dw, rci].astype(out_dtype)
            * kernel[fo, rco, ry, rx, rci, fi].astype(out_dtype),
            axis=[rco, ry, rx, rci]),
        name="conv2d_nchwc")


def legalize_conv2d(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """LegalizeOps for ``relax.nn.conv2d``: blocked layouts here, every other layout by TVM's own."""
    from tvm.relax.transform.legalize_ops.nn import _nn_conv2d

    attrs = call.attrs
    data_match = _BLOCKED_DATA.match(str(attrs.data_layout))
    kernel_match = _BLOCKED_KERNEL.match(str(attrs.kernel_layout))
    if not (data_match and kernel_match and str(attrs.out_layout) == str(attrs.data_layout)
            and int(attrs.groups) == 1):
        return _nn_conv2d(bb, call)
    out_dtype = str(attrs.out_dtype)
    if out_dtype in ("", "None", "void"):  # unset: the call's own result type
        out_dtype = str(call.ty.dtype)
    return bb.call_te(_blocked_conv2d, call.args[0], call.args[1], attrs.strides, attrs.padding, attrs.dilation,
                      out_dtype, primfunc_name_hint="conv2d")


def legalize_map() -> dict:
    """``customize_legalize_map`` for ``relax.transform.LegalizeOps``."""
    return {"relax.nn.conv2d": legalize_conv2d}
