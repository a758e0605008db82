"""GPTQ weight rounding: per-channel int8 weights that keep each layer's output, not its weights.

Rounding every weight to the nearest step (``quantize.quantize_weight``) minimizes the weight
error; what the model feels is the layer's output error ``(W - Wq) x`` on the inputs it
actually sees. GPTQ (Frantar et al., 2023, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers"; the Optimal Brain Quantization step of Frantar & Alistarh,
2022) rounds one input column at a time and moves the rounding error onto the columns not yet
rounded, weighted by the inverse of the input's second moment ``H = E[x xᵀ]``, so the columns
left over compensate it. Columns go in decreasing ``diag(H)`` order ("act order").

Expects, per layer, ``H`` accumulated over the calibration inputs (``HessianSum``: im2col
patches of a conv2d input, rows of a matmul input). Guarantees the same per-channel symmetric
scales as nearest rounding (max magnitude / qmax), values in ``[-qmax, qmax]``, and the same
int8 kernels downstream: only which way each weight rounds changes. Grouped and depthwise
convolutions get one ``H`` per group. TVM has no weight-rounding pass; this is kiln's own,
after the paper's reference implementation (same damping, 1 % of the mean diagonal).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DAMPING = 0.01  # added to H's diagonal, times its mean diagonal (the paper's default)
BLOCK = 128  # columns rounded between two updates of the rest of W


@dataclass(frozen=True)
class ConvWindow:
    """What places a conv2d's window on its NCHW input: the call's attributes as integers."""

    kernel: tuple[int, int]
    strides: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, left, bottom, right
    dilation: tuple[int, int]
    groups: int

    @classmethod
    def of(cls, attrs, kernel: tuple[int, int]) -> "ConvWindow":
        return cls(kernel, tuple(int(v) for v in attrs.strides), tuple(int(v) for v in attrs.padding),
                   tuple(int(v) for v in attrs.dilation), int(attrs.groups))


def conv_patches(x: np.ndarray, window: ConvWindow) -> np.ndarray:
    """im2col of an NCHW input: ``[groups, N*OH*OW, C/groups*KH*KW]``, columns in OIHW's I,H,W order."""
    (kh, kw), (sy, sx), (dy, dx) = window.kernel, window.strides, window.dilation
    top, left, bottom, right = window.padding
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    windows = np.lib.stride_tricks.sliding_window_view(x, (dy * (kh - 1) + 1, dx * (kw - 1) + 1), axis=(2, 3))
    sliding = windows[:, :, ::sy, ::sx, ::dy, ::dx]  # [N, C, OH, OW, KH, KW]
    n, c, oh, ow = sliding.shape[:4]
    g = window.groups
    patches = sliding.reshape(n, g, c // g, oh, ow, kh, kw).transpose(1, 0, 3, 4, 2, 5, 6)
    return patches.reshape(g, n * oh * ow, (c // g) * kh * kw)


class HessianSum:
    """``Σ x xᵀ`` over every input row a layer multiplies (float64), and how many rows."""

    def __init__(self, window: ConvWindow | None) -> None:
        self.window = window  # None: a matmul, whose input rows are its last axis
        self.total: np.ndarray | None = None
        self.rows = 0

    def add(self, values: np.ndarray) -> None:
        """Add one calibration batch of the layer's input (NCHW for a conv2d)."""
        if self.window is None:
            rows = values.reshape(1, -1, values.shape[-1])
        else:
            rows = conv_patches(values, self.window)
        rows = rows.astype(np.float32)
        product = np.einsum("gpk,gpl->gkl", rows, rows, optimize=True).astype(np.float64)
        self.total = product if self.total is None else self.total + product
        self.rows += rows.shape[1]

    @property
    def mean(self) -> np.ndarray:
        """``E[x xᵀ]`` per group: ``[groups, K, K]``."""
        return self.total / max(self.rows, 1)


def gptq_round(weight: np.ndarray, hessian: np.ndarray, scale: np.ndarray, qmax: int) -> np.ndarray:
    """Integer weights for ``weight`` ``[groups, O/groups, K]`` with per-row ``scale``
    ``[groups, O/groups]`` and input second moments ``hessian`` ``[groups, K, K]`` (see module doc)."""
    groups, _, k = weight.shape
    order = np.argsort(-np.diagonal(hessian, axis1=1, axis2=2), axis=1, kind="stable")  # act order per group
    w = np.take_along_axis(weight.astype(np.float64), order[:, None, :], axis=2)
    h = np.take_along_axis(np.take_along_axis(hessian, order[:, :, None], axis=1), order[:, None, :], axis=2).copy()
    diagonal = np.diagonal(h, axis1=1, axis2=2)
    dead = diagonal == 0  # an input channel that was always zero: its weights do not matter
    w[np.broadcast_to(dead[:, None, :], w.shape)] = 0.0
    h[:, np.arange(k), np.arange(k)] += np.where(dead, 1.0, 0.0) + DAMPING * diagonal.mean(axis=1, keepdims=True)
    # The upper Cholesky factor of H⁻¹: row i holds how the error of column i moves to columns after it.
    upper = np.linalg.cholesky(np.linalg.inv(h)).transpose(0, 2, 1)
    q = np.zeros_like(w)
    steps = scale.astype(np.float64)
    # Columns go in blocks: inside a block each rounding error updates the block's later columns
    # at once; the columns after the block take the whole block's errors in one matrix product
    # (the paper's "lazy batch" form: the same result, fewer passes over W).
    for start in range(0, k, BLOCK):
        end = min(start + BLOCK, k)
        errors = np.zeros(w.shape[:2] + (end - start,))
        for i in range(start, end):
            q[:, :, i] = np.clip(np.round(w[:, :, i] / steps), -qmax, qmax)
            error = (w[:, :, i] - q[:, :, i] * steps) / upper[:, i, i][:, None]
            w[:, :, i:end] -= error[:, :, None] * upper[:, None, i, i:end]
            errors[:, :, i - start] = error
        w[:, :, end:] -= errors @ upper[:, start:end, end:]
    result = np.empty_like(q)
    np.put_along_axis(result, np.broadcast_to(order[:, None, :], q.shape), q, axis=2)
    return result.astype(np.int8)


def gptq_quantize_weight(weight: np.ndarray, layout: str | None, hessian: np.ndarray,
                         bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Like ``quantize.quantize_weight`` (same scales, same axis) with GPTQ rounding: a conv2d
    weight in ``layout`` (OIHW, OHWI…), or a matmul weight ``[K, N]`` when ``layout`` is None."""
    qmax = 2 ** (bits - 1) - 1
    groups = hessian.shape[0]
    if layout is None:
        rows = weight.T  # [N, K]
    else:
        rows = weight.transpose([layout.index(c) for c in "OIHW"]).reshape(weight.shape[layout.index("O")], -1)
    scale = np.abs(rows).max(axis=1) / qmax
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    out_channels, k = rows.shape
    q = gptq_round(rows.reshape(groups, out_channels // groups, k), hessian,
                   scale.reshape(groups, -1), qmax).reshape(out_channels, k)
    if layout is None:
        return np.ascontiguousarray(q.T), scale
    oihw = q.reshape([weight.shape[layout.index(c)] for c in "OIHW"])
    return np.ascontiguousarray(oihw.transpose(["OIHW".index(c) for c in layout])), scale
