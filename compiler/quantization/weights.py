"""Per-channel symmetric weight quantization, its error, and the output shift its rounding causes."""

from __future__ import annotations

import numpy as np


def quantize_weight(weight: np.ndarray, axis: int, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel quantization along ``axis``: (int8 values, float32 scales)."""
    qmax = 2 ** (bits - 1) - 1
    moved = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)
    scale = np.abs(moved).max(axis=1) / qmax
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    shape = [1] * weight.ndim
    shape[axis] = -1
    q = np.clip(np.round(weight / scale.reshape(shape)), -qmax, qmax).astype(np.int8)
    return q, scale


def weight_rounding_shift(layer, weight: np.ndarray, dequantized: np.ndarray, mean: np.ndarray,
                          attrs=None) -> np.ndarray:
    """Per output channel, the mean change of ``layer``'s output over its output positions when
    ``weight`` becomes ``dequantized`` and the input is ``mean`` (the calibration inputs' mean
    tensor, NCHW for conv2d; the layer is linear, so this is the expected change). A conv2d's
    ``attrs`` (strides, padding, dilation) place the window; padding reads zeros, as the int8
    kernel's zero point does."""
    error = dequantized.astype(np.float64) - weight.astype(np.float64)
    if layer.op != "conv2d":  # matmul weight [K, N]: every row of the input meets the same error
        return mean.reshape(-1, mean.shape[-1]).mean(axis=0) @ error
    x = mean.mean(axis=0)  # [C, H, W]
    error = error.transpose([layer.kernel_layout.index(c) for c in "OIHW"])  # [O, I/groups, KH, KW]
    out_channels, in_per_group, kh, kw = error.shape
    (sy, sx), (dy, dx) = [int(v) for v in attrs.strides], [int(v) for v in attrs.dilation]
    top, left, bottom, right = [int(v) for v in attrs.padding]
    x = np.pad(x, ((0, 0), (top, bottom), (left, right)))
    out_h, out_w = (x.shape[1] - dy * (kh - 1) - 1) // sy + 1, (x.shape[2] - dx * (kw - 1) - 1) // sx + 1
    # seen[c, ky, kx]: the mean input that window tap (ky, kx) of channel c meets over the output
    seen = np.stack([np.stack([x[:, ky * dy:ky * dy + sy * (out_h - 1) + 1:sy,
                                 kx * dx:kx * dx + sx * (out_w - 1) + 1:sx].mean(axis=(1, 2))
                               for kx in range(kw)], axis=-1) for ky in range(kh)], axis=-2)
    groups = x.shape[0] // in_per_group
    per_output = seen.reshape(groups, in_per_group, kh, kw)[np.arange(out_channels) // (out_channels // groups)]
    return (error * per_output).sum(axis=(1, 2, 3))


def weight_error(weight: np.ndarray, axis: int, bits: int) -> float:
    q, scale = quantize_weight(weight, axis, bits)
    shape = [1] * weight.ndim
    shape[axis] = -1
    restored = q.astype(np.float32) * scale.reshape(shape)
    norm = float(np.linalg.norm(weight))
    return float(np.linalg.norm(weight - restored) / norm) if norm else 0.0
