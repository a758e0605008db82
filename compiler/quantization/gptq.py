"""GPTQ weight rounding: per-channel int8 weights that keep each layer's output, not its weights.

Rounding every weight to the nearest step (``weights.quantize_weight``) minimizes the weight
error; what the model feels is the layer's output error ``(W - Wq) x`` on the inputs it
actually sees. GPTQ (Frantar et al., 2023, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers"; the Optimal Brain Quantization step of Frantar & Alistarh,
2022) rounds one input column at a time and moves the rounding error onto the columns not yet
rounded, weighted by the inverse of the input's second moment ``H = E[x xᵀ]``, so the columns
left over compensate it. Columns go in decreasing ``diag(H)`` order ("act order").

Expects, per layer, ``H`` accumulated over the calibration inputs (``HessianSum``: im2col
patches of a conv2d input, rows of a matmul input; ``calibrate(..., hessians=True)``), and is
called once per layer by ``compiler.quantization.plan_int8``. Guarantees the same per-channel symmetric
scales as nearest rounding (max magnitude / qmax), values in ``[-qmax, qmax]``, and the same
int8 kernels downstream: only which way each weight rounds changes. Grouped and depthwise
convolutions get one ``H`` per group. TVM has no weight-rounding pass; this is kiln's own,
after the paper's reference implementation (same damping, 1 % of the mean diagonal).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compiler.quantization.weights import quantize_weight

DAMPING = 0.01  # added to H's diagonal, times its mean diagonal (the paper's default)
BLOCK = 128  # columns rounded between two updates of the rest of W
ROWS_PER_COLUMN = 64  # input rows that go into a K-wide H over the whole calibration set: 64 K
MIN_ROWS, MAX_ROWS = 64, 2048  # per calibration sample
BUFFER_VALUES = 4 << 20  # rows are multiplied into H in batches of about this many values (16 MB)


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


def conv_patches(x: np.ndarray, window: ConvWindow, positions: np.ndarray | None = None) -> np.ndarray:
    """im2col of an NCHW input: ``[groups, N*OH*OW, C/groups*KH*KW]``, columns in OIHW's I,H,W order;
    with ``positions`` (flat indices into OH*OW) only those output positions of each sample."""
    (kh, kw), (sy, sx), (dy, dx) = window.kernel, window.strides, window.dilation
    top, left, bottom, right = window.padding
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    windows = np.lib.stride_tricks.sliding_window_view(x, (dy * (kh - 1) + 1, dx * (kw - 1) + 1), axis=(2, 3))
    sliding = windows[:, :, ::sy, ::sx, ::dy, ::dx]  # [N, C, OH, OW, KH, KW]
    n, c, oh, ow = sliding.shape[:4]
    if positions is None:
        positions = np.arange(oh * ow)
    taken = sliding[:, :, positions // ow, positions % ow]  # [N, C, S, KH, KW], a copy of those only
    g = window.groups
    patches = taken.reshape(n, g, c // g, len(positions), kh, kw).transpose(1, 0, 3, 2, 4, 5)
    return patches.reshape(g, n * len(positions), (c // g) * kh * kw)


def output_positions(x_shape: tuple[int, ...], window: ConvWindow) -> int:
    """How many output positions (OH*OW) a conv2d with ``window`` has on an NCHW input of ``x_shape``."""
    (kh, kw), (sy, sx), (dy, dx) = window.kernel, window.strides, window.dilation
    top, left, bottom, right = window.padding
    oh = (x_shape[2] + top + bottom - dy * (kh - 1) - 1) // sy + 1
    ow = (x_shape[3] + left + right - dx * (kw - 1) - 1) // sx + 1
    return oh * ow


class HessianSum:
    """``Σ x xᵀ`` over the input rows a layer multiplies, and how many rows were summed.

    Each sample contributes at most ``ROWS_PER_COLUMN * K / samples`` rows (at least ``MIN_ROWS``,
    at most ``MAX_ROWS``; output positions drawn at random, seeded): a K-wide ``H`` is estimated well
    from some 64 K rows spread over the calibration set, and the large early feature maps, with
    thousands of positions per sample, would otherwise dominate calibration time.
    Rows are buffered across samples and multiplied in batches of about ``BUFFER_VALUES`` values:
    one product over many rows runs at up to 10x the speed of one per sample (49 rows of a
    4608-wide late ResNet-50 layer: 9 GFLOPS; 490 rows: 133 GFLOPS, on this 2-core machine).
    """

    def __init__(self, window: ConvWindow | None, columns: int, samples: int, seed: int = 0) -> None:
        self.window = window  # None: a matmul, whose input rows are its last axis
        self.rows_per_sample = int(np.clip(-(-ROWS_PER_COLUMN * columns // max(samples, 1)), MIN_ROWS, MAX_ROWS))
        self.rng = np.random.default_rng(seed)
        self.total: np.ndarray | None = None  # float32: sums of at most a few hundred terms
        self.rows = 0
        self.buffer: list[np.ndarray] = []  # [groups, rows, K] blocks not yet multiplied

    def _subset(self, count: int, samples: int) -> np.ndarray | None:
        keep = max(1, self.rows_per_sample // max(samples, 1))
        return None if count <= keep else np.sort(self.rng.choice(count, keep, replace=False))

    def add(self, values: np.ndarray) -> None:
        """Add one calibration batch of the layer's input (NCHW for a conv2d)."""
        values = np.asarray(values, dtype=np.float32)
        if self.window is None:
            rows = values.reshape(-1, values.shape[-1])
            chosen = self._subset(len(rows), 1)
            rows = (rows if chosen is None else rows[chosen])[None]
        else:
            chosen = self._subset(output_positions(values.shape, self.window), values.shape[0])
            rows = conv_patches(values, self.window, chosen)
        self.buffer.append(rows)
        self.rows += rows.shape[1]
        if sum(block.size for block in self.buffer) >= BUFFER_VALUES:
            self._flush()

    def _flush(self) -> None:
        if not self.buffer:
            return
        rows = np.concatenate(self.buffer, axis=1)
        self.buffer = []
        product = np.matmul(rows.transpose(0, 2, 1), rows)
        self.total = product if self.total is None else self.total + product

    @property
    def mean(self) -> np.ndarray:
        """``E[x xᵀ]`` per group: ``[groups, K, K]``."""
        self._flush()
        return self.total.astype(np.float64) / max(self.rows, 1)


def _inverse_upper_cholesky(h: np.ndarray) -> np.ndarray:
    """The upper triangular ``U`` with ``Uᵀ U = H⁻¹``: row i says how column i's rounding error moves to
    the columns after it. From the Cholesky factor of ``H`` with rows and columns reversed
    (``J H J = M Mᵀ`` gives ``H = R Rᵀ``, ``R = J M J`` upper, so ``U = R⁻¹``): no explicit inverse of H."""
    from scipy.linalg import cholesky, lapack

    reversed_factor = cholesky(h[::-1, ::-1], lower=True)
    upper, info = lapack.dtrtri(np.ascontiguousarray(reversed_factor[::-1, ::-1]), lower=0)
    if info != 0:
        raise ValueError(f"GPTQ: the damped input second moment is singular (LAPACK dtrtri info {info})")
    return upper


def gptq_round(weight: np.ndarray, hessian: np.ndarray, scale: np.ndarray, qmax: int) -> np.ndarray:
    """Integer weights for ``weight`` ``[groups, O/groups, K]`` with per-row ``scale``
    ``[groups, O/groups]`` and input second moments ``hessian`` ``[groups, K, K]`` (see module doc)."""
    groups, _, k = weight.shape
    order = np.argsort(-np.diagonal(hessian, axis1=1, axis2=2), axis=1, kind="stable")  # act order per group
    w = np.take_along_axis(weight.astype(np.float64), order[:, None, :], axis=2)
    upper = np.empty((groups, k, k))
    for g in range(groups):
        h = hessian[g][np.ix_(order[g], order[g])]
        diagonal = np.diagonal(h).copy()
        dead = diagonal == 0  # an input channel that was always zero: its weights do not matter
        w[g][:, dead] = 0.0
        h[np.arange(k), np.arange(k)] += np.where(dead, 1.0, 0.0) + DAMPING * diagonal.mean()
        upper[g] = _inverse_upper_cholesky(h)
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


def _weight_rows(weight: np.ndarray, layout: str | None) -> np.ndarray:
    """A weight as ``[O, K]`` rows, K in OIHW's I,H,W order: a conv2d weight in ``layout``, or a
    matmul weight ``[K, N]`` when ``layout`` is None."""
    if layout is None:
        return weight.T
    return weight.transpose([layout.index(c) for c in "OIHW"]).reshape(weight.shape[layout.index("O")], -1)


def gptq_quantize_weight(weight: np.ndarray, layout: str | None, hessian: np.ndarray,
                         bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Like ``weights.quantize_weight`` (same scales, same axis) with GPTQ rounding: a conv2d
    weight in ``layout`` (OIHW, OHWI…), or a matmul weight ``[K, N]`` when ``layout`` is None."""
    groups = hessian.shape[0]
    rows = _weight_rows(weight, layout)
    _, scale = quantize_weight(rows, 0, bits)  # nearest rounding's scales: the grid GPTQ rounds onto
    out_channels, k = rows.shape
    q = gptq_round(rows.reshape(groups, out_channels // groups, k), hessian,
                   scale.reshape(groups, -1), 2 ** (bits - 1) - 1).reshape(out_channels, k)
    if layout is None:
        return np.ascontiguousarray(q.T), scale
    oihw = q.reshape([weight.shape[layout.index(c)] for c in "OIHW"])
    return np.ascontiguousarray(oihw.transpose(["OIHW".index(c) for c in layout])), scale


def relative_output_errors(weight: np.ndarray, dequantized: list[np.ndarray], layout: str | None,
                           hessian: np.ndarray) -> list[float]:
    """``‖(W - Wq) x‖ / ‖W x‖`` over the calibration inputs (``sqrt(tr(ΔW H ΔWᵀ) / tr(W H Wᵀ))``) for
    each ``Wq`` in ``dequantized``, weights laid out as ``gptq_quantize_weight`` takes them;
    ``tr(W H Wᵀ)`` is computed once for all of them."""
    groups = hessian.shape[0]
    h = np.asarray(hessian, dtype=np.float64)  # calibration's H is float64 already: no copy

    def grouped(w: np.ndarray) -> np.ndarray:
        rows = _weight_rows(w, layout)
        return rows.reshape(groups, rows.shape[0] // groups, -1).astype(np.float64)

    def quadratic(a: np.ndarray) -> float:  # sum_g tr(a_g H_g a_gᵀ), through BLAS matmuls
        return float(np.einsum("gok,gok->", a @ h, a))  # (a 3-operand einsum was unblocked: 180 s on ResNet-50)

    w = grouped(weight)
    energy = quadratic(w)
    if energy <= 0:
        return [0.0] * len(dequantized)
    return [float(np.sqrt(max(quadratic(grouped(dq) - w), 0.0) / energy)) for dq in dequantized]
