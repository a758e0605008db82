"""Calibrators: each collects one tensor's values over the calibration samples and chooses the
range its 8-bit codes cover.

One interface (``Calibrator``: ``collect`` values, then ``compute_range``) and a factory
(``create_calibrator``), as ONNX Runtime's ``calibrate.py``. Every method keeps a running
histogram of magnitudes (``Histogram``) and differs only in the clipping threshold it picks:

- ``minmax``: the largest magnitude seen;
- ``percentile``: the given percentile of magnitudes (default 99.99);
- ``entropy``: the threshold whose 8-bit quantized histogram is closest to the float
  one in KL divergence (TensorRT's calibrator);
- ``mse``: the threshold with the least expected squared error, rounding inside plus
  clipping outside (as ONNX Runtime's and PyTorch's MSE/"histogram" observers).

The result is a ``TensorRange``: uint8 codes, zero point 0 when the tensor was never negative.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from targets.errors import InputError

METHODS = ("minmax", "percentile", "entropy", "mse")
BINS = 2048


@dataclass
class TensorRange:
    """The calibrated range of one layer input, quantized as uint8 (asymmetric where needed).

    A tensor never seen negative (after ReLU) gets zero point 0, so zero padding stays
    exact and a ReLU before it is the quantize's own clip. A tensor with negative values
    (hard-swish, residual sums, the input image) maps [low, high] onto 0..255 with a
    zero point: twice the resolution of symmetric int8 when the negative side is small,
    and the int8 kernels take uint8 activations (``schedules/rules/int8.py``).
    """

    signed: bool  # seen negative: needs a zero point
    threshold: float  # magnitudes above are clipped
    minimum: float
    maximum: float
    channels: tuple["TensorRange", ...] | None = None  # per channel (NCHW axis 1): depthwise layer inputs

    @property
    def dtype(self) -> str:
        return "uint8"

    @property
    def low(self) -> float:
        return max(-self.threshold, self.minimum) if self.signed else 0.0

    @property
    def high(self) -> float:
        return min(self.threshold, self.maximum) if self.signed else self.threshold

    @property
    def scale(self) -> float:
        return max(self.high - self.low, 1e-12) / 255.0

    @property
    def zero_point(self) -> int:
        return int(np.clip(np.round(-self.low / self.scale), 0, 255))

    def channel_scales(self) -> np.ndarray:
        return np.array([c.scale for c in self.channels], dtype=np.float32)

    def channel_zero_points(self) -> np.ndarray:
        return np.array([c.zero_point for c in self.channels], dtype=self.dtype)


class Histogram:
    """A running histogram of |x| over [0, edge]; the edge grows and old counts are re-binned."""

    def __init__(self, bins: int = BINS) -> None:
        self.counts = np.zeros(bins, dtype=np.float64)
        self.edge = 0.0
        self.minimum = np.inf
        self.maximum = -np.inf

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float32).ravel()
        if values.size == 0 or not np.all(np.isfinite(values)):
            raise InputError("calibration produced NaN or Inf inside the model; check the calibration data")
        self.minimum = min(self.minimum, float(values.min()))
        self.maximum = max(self.maximum, float(values.max()))
        magnitude = np.abs(values)
        top = float(magnitude.max())
        if top > self.edge:
            self._grow(top)
        if self.edge == 0.0:
            self.counts[0] += magnitude.size
            return
        hist, _ = np.histogram(magnitude, bins=len(self.counts), range=(0.0, self.edge))
        self.counts += hist

    def _grow(self, edge: float) -> None:
        if self.edge > 0 and self.counts.any():
            width = self.edge / len(self.counts)
            centers = (np.arange(len(self.counts)) + 0.5) * width
            index = np.minimum((centers / edge * len(self.counts)).astype(np.int64), len(self.counts) - 1)
            self.counts = np.bincount(index, weights=self.counts, minlength=len(self.counts)).astype(np.float64)
        self.edge = edge

    @property
    def bin_width(self) -> float:
        return self.edge / len(self.counts)

    def percentile(self, q: float) -> float:
        cumulative = np.cumsum(self.counts)
        if cumulative[-1] == 0:
            return 0.0
        index = int(np.searchsorted(cumulative, cumulative[-1] * q / 100.0))
        return min(index + 1, len(self.counts)) * self.bin_width

    def entropy_threshold(self, levels: int) -> float:
        """TensorRT's KL-divergence threshold for ``levels`` quantization bins."""
        counts = self.counts
        if counts.sum() == 0 or self.edge == 0:
            return self.edge
        best, best_kl = len(counts), np.inf
        for i in range(levels, len(counts) + 1, 4):
            reference = counts[:i].copy()
            reference[-1] += counts[i:].sum()  # outliers are clipped into the last bin
            nonzero = counts[:i] != 0
            # Merge the i bins into `levels` groups, then spread each group's mass back
            # evenly over its non-empty bins: the distribution 8-bit codes can represent.
            groups = np.minimum((np.arange(i) * levels) // i, levels - 1)
            group_mass = np.bincount(groups, weights=counts[:i], minlength=levels)
            group_size = np.bincount(groups, weights=nonzero.astype(np.float64), minlength=levels)
            expanded = np.where(nonzero, group_mass[groups] / np.maximum(group_size[groups], 1), 0.0)
            p = reference / reference.sum()
            q = expanded / max(expanded.sum(), 1e-30)
            mask = p > 0
            kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
            if kl < best_kl:
                best, best_kl = i, kl
        return (best + 0.5) * self.bin_width

    def mse_threshold(self, levels: int = 256) -> float:
        """The clipping threshold with the least expected squared error over ``levels`` codes.

        For a threshold t at each bin edge: values inside round with step s (error s^2/12
        each), values beyond t are clipped to it (error (|x| - t)^2). A tensor with
        negative values spreads its codes over [max(-t, min), min(t, max)].
        """
        counts = self.counts
        if counts.sum() == 0 or self.edge == 0:
            return self.edge
        width = self.bin_width
        centers = (np.arange(len(counts)) + 0.5) * width
        thresholds = (np.arange(len(counts)) + 1) * width

        def beyond(values: np.ndarray) -> np.ndarray:  # per threshold: the sum over the bins above it
            return np.concatenate([np.cumsum(values[::-1])[::-1][1:], [0.0]])

        # count, first and second moment of the values each threshold clips
        tail0, tail1, tail2 = beyond(counts), beyond(counts * centers), beyond(counts * centers**2)
        clipping = tail2 - 2 * thresholds * tail1 + thresholds**2 * tail0
        if self.minimum < 0.0:
            spans = np.minimum(thresholds, self.maximum) - np.maximum(-thresholds, self.minimum)
        else:
            spans = thresholds
        steps = np.maximum(spans, 1e-30) / (levels - 1)
        rounding = (counts.sum() - tail0) * steps**2 / 12.0
        return float(thresholds[int(np.argmin(clipping + rounding))])


class Calibrator(ABC):
    """Collects one tensor's values (``collect``, once per sample) and chooses its range."""

    def __init__(self) -> None:
        self.histogram = Histogram()

    def collect(self, values: np.ndarray) -> None:
        self.histogram.add(values)

    @abstractmethod
    def threshold(self, signed: bool) -> float:
        """The magnitude above which values are clipped."""

    def compute_range(self) -> TensorRange:
        hist = self.histogram
        signed = hist.minimum < 0.0
        threshold = self.threshold(signed)
        threshold = min(max(threshold, 1e-8), hist.edge) if hist.edge > 0 else 1e-8
        return TensorRange(signed, float(threshold), float(hist.minimum), float(hist.maximum))


class MinMaxCalibrator(Calibrator):
    def threshold(self, signed: bool) -> float:
        return self.histogram.edge


class PercentileCalibrator(Calibrator):
    def __init__(self, percentile: float = 99.99) -> None:
        super().__init__()
        self.percentile = percentile

    def threshold(self, signed: bool) -> float:
        return self.histogram.percentile(self.percentile)


class EntropyCalibrator(Calibrator):
    def threshold(self, signed: bool) -> float:
        return self.histogram.entropy_threshold(128 if signed else 256)


class MseCalibrator(Calibrator):
    def threshold(self, signed: bool) -> float:
        return self.histogram.mse_threshold()


def check_method(method: str, percentile: float = 99.99) -> None:
    """Raise ``InputError`` for an unknown method or a percentile outside (50, 100]."""
    if method not in METHODS:
        raise InputError(f"calibration method '{method}' is unknown; use one of {', '.join(METHODS)}")
    if method == "percentile" and not 50.0 < percentile <= 100.0:
        raise InputError(f"percentile {percentile} is out of range (50, 100]")


def create_calibrator(method: str, percentile: float = 99.99) -> Calibrator:
    """A fresh calibrator of ``method`` (one of ``METHODS``)."""
    check_method(method, percentile)
    if method == "percentile":
        return PercentileCalibrator(percentile)
    return {"minmax": MinMaxCalibrator, "entropy": EntropyCalibrator, "mse": MseCalibrator}[method]()
