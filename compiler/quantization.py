"""INT8 post-training quantization of an imported model: calibrate, choose layers, plan.

Expects an ``ImportedModel`` and ``Int8Options`` (calibration data, method, layers to
keep in FP32). Guarantees a ``QuantizationPlan`` for ``compiler.passes.quantize`` and a
per-layer report (scales, calibrated ranges, estimated quantization error) — what
``kiln quantize-report`` prints and ``kiln compile --precision int8`` builds.
The mixed-precision mode ``auto_keep`` keeps the layers with the worst estimated error in
FP32 (see ``sensitivity``); ``min_agreement`` keeps the most sensitive layers in FP32 until
the INT8 model's top-1 (argmax over the last axis of the first output) agrees with the FP32
model's on at least that percentage of the calibration samples, trying 0, 1, 2, 4, … layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from compiler.errors import InputError
from compiler.frontend import ImportedModel
from compiler.passes.calibrate import CalibrationResult, Histogram, calibrate, first_output, load_calibration
from compiler.passes.int8_layers import Layer, find_layers
from compiler.passes.quantize import LayerReport, QuantizationPlan, quantize_weight
from targets.registry import TargetPreset


@dataclass
class Int8Options:
    """How to quantize: calibration samples and method, and which layers stay FP32."""

    calibration: object  # .npz / .npy / directory path, or an iterable of samples
    method: str = "percentile"  # minmax | percentile | entropy | mse (see README: entropy clipped PP-OCR badly)
    percentile: float = 99.99
    samples: int | None = 100  # use at most this many calibration samples
    keep_fp32: tuple[str, ...] = ()  # layer (ONNX node) names; "first" and "last" are allowed
    auto_keep: int = 0  # additionally keep this many most sensitive layers in FP32
    min_agreement: float | None = None  # keep sensitive layers in FP32 until top-1 agreement (%) reaches this
    weight_bits: int | None = None  # default: what the target's int8 kernels need (7 on AVX2 without VNNI)
    threads: int | None = None  # for running calibration


@dataclass
class Int8Result:
    plan: QuantizationPlan
    calibration: CalibrationResult
    layers: list[LayerReport] = field(default_factory=list)
    agreement_search: list[tuple[int, float]] = field(default_factory=list)  # (layers kept, agreement %)

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


def weight_error(weight: np.ndarray, axis: int, bits: int) -> float:
    q, scale = quantize_weight(weight, axis, bits)
    shape = [1] * weight.ndim
    shape[axis] = -1
    restored = q.astype(np.float32) * scale.reshape(shape)
    norm = float(np.linalg.norm(weight))
    return float(np.linalg.norm(weight - restored) / norm) if norm else 0.0


def _resolve_names(requested: tuple[str, ...], layers: list[Layer]) -> set[str]:
    names = [layer.name for layer in layers]
    chosen = set()
    for name in requested:
        if name == "first" and names:
            chosen.add(names[0])
        elif name == "last" and names:
            chosen.add(names[-1])
        elif name in names:
            chosen.add(name)
        else:
            shown = ", ".join(names[:8]) + (" …" if len(names) > 8 else "")
            raise InputError(f"--keep-fp32: no quantizable layer named '{name}'; layers: {shown} "
                             "(or 'first', 'last')")
    return chosen


def sensitivity(report: LayerReport) -> float:
    """Estimated relative output error of quantizing one layer (input and weight errors add)."""
    return report.activation_error + report.weight_error


def plan_int8(mod, imported: ImportedModel, preset: TargetPreset, options: Int8Options) -> Int8Result:
    """Calibrate the simplified module ``mod`` and decide what to quantize (see module doc)."""
    from schedules.int8 import weight_bits_for

    bits = options.weight_bits or weight_bits_for(preset.tvm_target())
    if bits not in (7, 8):
        raise InputError(f"weight bits must be 7 or 8, not {bits}")
    samples = load_calibration(options.calibration, imported.inputs, options.samples)
    result = calibrate(mod, imported.inputs, samples, options.method, options.percentile,
                       imported.onnx_model, options.threads)
    layers = find_layers(mod, imported.onnx_model)
    keep = _resolve_names(tuple(options.keep_fp32), layers)
    reports = []
    for layer in layers:
        rng = result.ranges[layer.name]
        hist = result.histograms[layer.name]
        weight = layer.weight.value.numpy()
        reports.append(LayerReport(
            name=layer.name, op=layer.op, quantized=True, activation_dtype=rng.dtype,
            activation_scale=rng.scale, threshold=rng.threshold, seen_min=rng.minimum, seen_max=rng.maximum,
            weight_error=weight_error(weight, 0 if layer.op == "conv2d" else 1, bits),
            activation_error=activation_error(hist, rng.threshold, rng.scale), activation_zero_point=rng.zero_point))
    ranked = [r.name for r in sorted(reports, key=sensitivity, reverse=True)]
    keep |= set(ranked[: options.auto_keep])
    plan = QuantizationPlan(result.ranges, keep, bits, imported.onnx_model)
    search: list[tuple[int, float]] = []
    if options.min_agreement is not None:
        plan, search = _search_agreement(imported, plan, ranked, samples, result.fp32_outputs, options.min_agreement)
    for report in reports:
        report.quantized = report.name not in plan.keep_fp32
    return Int8Result(plan, result, reports, search)


def top1_agreement(ours: list[np.ndarray], reference: list[np.ndarray]) -> float:
    """Percent of positions whose argmax over the last axis is the same."""
    same = total = 0
    for a, b in zip(ours, reference):
        a, b = np.asarray(a), np.asarray(b)
        same += int(np.sum(a.argmax(axis=-1) == b.argmax(axis=-1)))
        total += int(np.prod(a.shape[:-1])) if a.ndim > 1 else 1
    return 100.0 * same / max(total, 1)


def _search_agreement(imported: ImportedModel, plan: QuantizationPlan, ranked: list[str], samples,
                      fp32_outputs, target: float) -> tuple[QuantizationPlan, list[tuple[int, float]]]:
    """Keep 0, 1, 2, 4, … most sensitive layers in FP32 until top-1 agreement reaches ``target``."""
    import dataclasses

    import tvm

    from compiler.pipeline import build_pipeline
    from schedules.int8 import weight_bits_for
    from targets.registry import resolve_target

    if not 0.0 < target <= 100.0:
        raise InputError(f"--min-agreement {target} must be a percentage in (0, 100]")
    host = resolve_target("host")
    # Built and run here: the weights must suit this machine's int8 kernels too.
    host_bits = min(plan.weight_bits, weight_bits_for(host.tvm_target()))
    search = []
    counts = sorted({0, *[min(2 ** i, len(ranked)) for i in range(len(ranked).bit_length() + 1)]})
    candidate = plan
    for count in counts:
        keep = set(plan.keep_fp32) | set(ranked[:count])
        candidate = dataclasses.replace(plan, keep_fp32=keep)
        trial = dataclasses.replace(candidate, weight_bits=host_bits)
        with tvm.transform.PassContext(opt_level=3):
            lowered = build_pipeline(host, None, "int8", trial)(imported.mod)
            executable = tvm.compile(lowered, host.tvm_target(), relax_pipeline=None)
        vm = tvm.runtime.vm.VirtualMachine(executable, tvm.cpu())
        outputs = []
        for sample in samples:
            out = vm["main"](*[tvm.runtime.tensor(np.ascontiguousarray(sample[s.name])) for s in imported.inputs])
            outputs.append(first_output(out))
        agreement = top1_agreement(outputs, fp32_outputs)
        search.append((len(keep), agreement))
        if agreement >= target:
            break
    return candidate, search


def simplified_module(imported: ImportedModel, preset: TargetPreset):
    """``imported.mod`` after kiln's simplification steps: what calibration and InsertQDQ see."""
    import tvm

    from compiler.pipeline import simplify_pipeline

    with tvm.transform.PassContext(opt_level=3):
        return simplify_pipeline(preset)(imported.mod)


def describe_layers(result: Int8Result) -> str:
    """A table of the per-layer quantization (``kiln quantize-report``)."""
    lines = [f"{'layer':<28} {'op':<7} {'int8':<5} {'input':<6} {'zp':>4} {'scale':>10} {'clip':>9} "
             f"{'min':>9} {'max':>9} {'w err':>7} {'x err':>7}"]
    for r in result.layers:
        lines.append(f"{r.name[:28]:<28} {r.op:<7} {'yes' if r.quantized else 'FP32':<5} "
                     f"{r.activation_dtype:<6} {r.activation_zero_point:>4} "
                     f"{r.activation_scale:>10.3g} {r.threshold:>9.3g} {r.seen_min:>9.3g} {r.seen_max:>9.3g} "
                     f"{r.weight_error:>7.2%} {r.activation_error:>7.2%}")
    for kept, agreement in result.agreement_search:
        lines.append(f"  {kept} layer(s) in FP32: top-1 agreement with FP32 {agreement:.2f}%")
    c = result.calibration
    lines.append(f"{result.quantized}/{len(result.layers)} layers int8; calibration: {c.method} over "
                 f"{c.samples} samples in {c.seconds:.1f} s; weights {result.plan.weight_bits}-bit per channel")
    return "\n".join(lines)
