"""What quantizing a model did: ``Int8Result``, per-layer errors, and the table ``kiln quantize-report`` prints."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from compiler.quantization.calibrate import CalibrationResult
from compiler.quantization.calibrators import Histogram
from compiler.quantization.plan import LayerReport, QuantizationPlan


@dataclass
class Int8Result:
    plan: QuantizationPlan
    calibration: CalibrationResult
    layers: list[LayerReport] = field(default_factory=list)
    agreement_search: list[tuple[int, float]] = field(default_factory=list)  # (layers kept, score %)
    search_metric: str = ""  # what agreement_search scores: top-1 agreement or evaluate's accuracy
    fp32_score: float | None = None  # evaluate's accuracy with every layer FP32
    probe_seconds: float = 0.0  # building and running the sensitivity probe

    @property
    def quantized(self) -> int:
        return sum(layer.quantized for layer in self.layers)


def activation_error(hist: Histogram, threshold: float, step: float) -> float:
    """Relative RMS error of quantizing the histogrammed tensor: rounding to ``step``, clipping at ``threshold``."""
    centers = (np.arange(len(hist.counts)) + 0.5) * hist.bin_width
    signal = float(np.sum(hist.counts * centers**2))
    if signal == 0.0:
        return 0.0
    inside = centers <= threshold
    noise = float(np.sum(hist.counts[inside]) * step**2 / 12.0
                  + np.sum(hist.counts[~inside] * (centers[~inside] - threshold) ** 2))
    return float(np.sqrt(noise / signal))


def sensitivity(report: LayerReport) -> float:
    """Estimated relative output error of quantizing one layer (input and weight errors add)."""
    return report.activation_error + report.weight_error


def describe_layers(result: Int8Result) -> str:
    """A table of the per-layer quantization (``kiln quantize-report``)."""
    def percent(value: float | None) -> str:
        return "" if value is None else format(value, ".2%")

    lines = [f"{'layer':<28} {'op':<7} {'int8':<5} {'input':<6} {'zp':>4} {'scale':>10} {'clip':>9} "
             f"{'min':>9} {'max':>9} {'w err':>7} {'y err':>7} {'x err':>7} {'alone':>7}"]
    for r in result.layers:
        lines.append(f"{r.name[:28]:<28} {r.op:<7} {'yes' if r.quantized else 'FP32':<5} "
                     f"{r.activation_dtype:<6} {r.activation_zero_point:>4} "
                     f"{r.activation_scale:>10.3g} {r.threshold:>9.3g} {r.seen_min:>9.3g} {r.seen_max:>9.3g} "
                     f"{r.weight_error:>7.2%} {percent(r.output_error):>7} {r.activation_error:>7.2%} "
                     f"{percent(r.measured_error):>7}")
    rounded = [r for r in result.layers if r.output_error is not None]
    if rounded:
        lines.append(f"  weights rounded by GPTQ: layer output error (y err) {np.mean([r.output_error for r in rounded]):.2%} "
                     f"on average, nearest rounding {np.mean([r.nearest_output_error for r in rounded]):.2%}")
    if result.fp32_score is not None:
        lines.append(f"  every layer in FP32: {result.search_metric} {result.fp32_score:.2f}%")
    for kept, score in result.agreement_search:
        lines.append(f"  {kept} layer(s) in FP32: {result.search_metric} {score:.2f}%")
    c = result.calibration
    lines.append(f"{result.quantized}/{len(result.layers)} layers int8; calibration: {c.method} over "
                 f"{c.samples} samples in {c.seconds:.1f} s; weights {result.plan.weight_bits}-bit per channel")
    return "\n".join(lines)
