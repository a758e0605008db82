"""INT8 post-training quantization of an imported model: calibrate, choose layers, plan.

Expects an ``ImportedModel`` and ``Int8Options`` (calibration data, method, layers to
keep in FP32). Guarantees a ``QuantizationPlan`` for ``compiler.passes.quantize`` and a
per-layer report (scales, calibrated ranges, estimated quantization error) — what
``kiln quantize-report`` prints and ``kiln compile --precision int8`` builds.
The mixed-precision modes rank layers by sensitivity: ``measured`` (the default) builds one
sensitivity probe (``SensitivityProbe``: every layer both quantized and FP32, a runtime switch
each) and measures the model's output error with each layer alone in INT8;
``estimated`` uses the per-layer error estimate (input histogram + weight rounding, no build).
``auto_keep`` keeps the N most sensitive layers in FP32. Two searches keep the fewest
most-sensitive layers in FP32 that meet a target, measured on the probe (0, 1, 2, 4, …
layers, then bisected): ``min_agreement`` — the INT8 model's top-1 (argmax over the last
axis of the first output) agrees with the FP32 model's on that percentage of the calibration
samples (no labels needed); ``evaluate`` — the user's own accuracy function on labelled
validation data loses at most ``max_accuracy_drop`` points against FP32 (what a sequence
model needs: a CTC recognizer's per-position agreement says little about its read text).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from targets.errors import InputError
from compiler.frontend import ImportedModel
from compiler.passes.calibrate import CalibrationResult, Histogram, calibrate, first_output, load_calibration
from compiler.passes.gptq import gptq_quantize_weight, relative_output_errors
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
    # evaluate(run) -> accuracy in %, where run(inputs) -> first output (inputs: dict by input name, or
    # one array for a one-input model); keep sensitive layers FP32 until within max_accuracy_drop of FP32
    evaluate: Callable[[Callable], float] | None = None
    max_accuracy_drop: float = 0.5
    sensitivity: str = "measured"  # how auto_keep and the searches rank layers: measured | estimated
    probe_samples: int = 32  # calibration samples the per-layer measurement runs over
    weight_bits: int | None = None  # default: what the target's int8 kernels need (7 on AVX2 without VNNI)
    # depthwise convs quantize their input per channel (exact in int32); off: no gain measured on the
    # PP-OCR recognizer (README "INT8 vs FP32")
    per_channel_depthwise: bool = False
    threads: int | None = None  # for running calibration
    # int8 (True) or uint8 (False) activations; default: what the target's int8 kernels take (int8 on
    # AArch64 with sdot only and on CUDA with int8 tensor cores, else uint8). Same values either way.
    signed_activations: bool | None = None
    # subtract the weight-rounding shift on the mean calibration input from each layer's bias
    bias_correction: bool = False
    # how an int32 accumulator returns to 8 bits: "float" (scale multiply, as ONNX Runtime) or
    # "fixed_point" (integer multiplier and shift); float measured faster here (README "INT8")
    requantize: str = "float"
    # how weights round to their int8 steps: "gptq" (each layer's output error on the calibration
    # inputs, not its weight error, is minimized; README "INT8": PP-OCR recognizer 99.0 -> 99.8 %,
    # FP32 99.8 %), or "nearest" (each weight to its nearest step: faster to compile)
    weight_rounding: str = "gptq"


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


def weight_error(weight: np.ndarray, axis: int, bits: int) -> float:
    q, scale = quantize_weight(weight, axis, bits)
    shape = [1] * weight.ndim
    shape[axis] = -1
    restored = q.astype(np.float32) * scale.reshape(shape)
    norm = float(np.linalg.norm(weight))
    return float(np.linalg.norm(weight - restored) / norm) if norm else 0.0


def _gptq_round_layer(layer: Layer, weight: np.ndarray, hessian: np.ndarray, bits: int,
                      report: LayerReport) -> tuple[np.ndarray, np.ndarray]:
    """``layer``'s GPTQ-rounded integer weights (conv2d in OIHW) and scales; records the layer's
    output error on its calibration inputs with GPTQ and with nearest rounding in ``report``."""
    layout = layer.kernel_layout if layer.op == "conv2d" else None
    q, scale = gptq_quantize_weight(weight, layout, hessian, bits)
    nearest, _ = quantize_weight(weight, layer.weight_axis, bits)
    along = [1] * weight.ndim
    along[layer.weight_axis] = -1
    step = scale.reshape(along)
    report.output_error, report.nearest_output_error = relative_output_errors(
        weight, [q * step, nearest * step], layout, hessian)
    if layout is not None:
        q = np.ascontiguousarray(q.transpose([layout.index(c) for c in "OIHW"]))
    return q, scale


def _resolve_names(requested: tuple[str, ...], layers: list[Layer]) -> set[str]:
    names = [layer.name for layer in layers]
    chosen = set()
    for name in requested:
        if name == "first" and names:
            chosen.add(names[0])
        elif name == "last" and names:
            chosen.add(names[-1])
        elif name == "depthwise":
            chosen.update(layer.name for layer in layers if layer.depthwise)
        elif name in names:
            chosen.add(name)
        else:
            shown = ", ".join(names[:8]) + (" …" if len(names) > 8 else "")
            raise InputError(f"--keep-fp32: no quantizable layer named '{name}'; layers: {shown} "
                             "(or 'first', 'last', 'depthwise')")
    return chosen


def sensitivity(report: LayerReport) -> float:
    """Estimated relative output error of quantizing one layer (input and weight errors add)."""
    return report.activation_error + report.weight_error


SENSITIVITY = ("measured", "estimated")
REQUANTIZE = ("float", "fixed_point")
WEIGHT_ROUNDING = ("nearest", "gptq")


def plan_int8(mod, imported: ImportedModel, preset: TargetPreset, options: Int8Options) -> Int8Result:
    """Calibrate the simplified module ``mod`` and decide what to quantize (see module doc)."""
    from schedules.int8 import channel_multiple_for, signed_activations_for, weight_bits_for

    bits = options.weight_bits or weight_bits_for(preset.tvm_target())
    if bits not in (7, 8):
        raise InputError(f"weight bits must be 7 or 8, not {bits}")
    if options.requantize not in REQUANTIZE:
        raise InputError(f"requantize '{options.requantize}' is unknown; use one of {', '.join(REQUANTIZE)}")
    if options.weight_rounding not in WEIGHT_ROUNDING:
        raise InputError(f"weight rounding '{options.weight_rounding}' is unknown; "
                         f"use one of {', '.join(WEIGHT_ROUNDING)}")
    if options.sensitivity not in SENSITIVITY:
        raise InputError(f"sensitivity '{options.sensitivity}' is unknown; use one of {', '.join(SENSITIVITY)}")
    if options.min_agreement is not None and not 0.0 < options.min_agreement <= 100.0:
        raise InputError(f"--min-agreement {options.min_agreement} must be a percentage in (0, 100]")
    if options.min_agreement is not None and options.evaluate is not None:
        raise InputError("choose one target: --min-agreement (agreement with FP32) or --evaluate (accuracy)")
    samples = load_calibration(options.calibration, imported.inputs, options.samples)
    result = calibrate(mod, imported.inputs, samples, options.method, options.percentile,
                       imported.onnx_model, options.threads, options.per_channel_depthwise,
                       input_means=options.bias_correction, hessians=options.weight_rounding == "gptq")
    layers = find_layers(mod, imported.onnx_model)
    keep = _resolve_names(tuple(options.keep_fp32), layers)
    reports = []
    rounded: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for layer in layers:
        rng = result.ranges[layer.name]
        hist = result.histograms[layer.name]
        weight = layer.weight.value.numpy()
        report = LayerReport(
            name=layer.name, op=layer.op, quantized=True, activation_dtype=rng.dtype,
            activation_scale=rng.scale, threshold=rng.threshold, seen_min=rng.minimum, seen_max=rng.maximum,
            weight_error=weight_error(weight, layer.weight_axis, bits),
            activation_error=activation_error(hist, rng.threshold, rng.scale), activation_zero_point=rng.zero_point)
        if layer.name in result.hessians:  # GPTQ: round once here; H (up to K*K floats) is not kept
            rounded[layer.name] = _gptq_round_layer(layer, weight, result.hessians.pop(layer.name), bits, report)
        reports.append(report)
    target = preset.tvm_target()
    signed = signed_activations_for(target) if options.signed_activations is None else options.signed_activations
    plan = QuantizationPlan(result.ranges, keep, bits, imported.onnx_model, channel_multiple_for(target), signed,
                            options.bias_correction, result.input_means, options.requantize,
                            options.weight_rounding, rounded)
    int8 = Int8Result(plan, result, reports)
    searching = options.min_agreement is not None or options.evaluate is not None
    if options.auto_keep or searching:
        t0 = time.perf_counter()
        probe = SensitivityProbe(mod, imported, plan, samples, result.fp32_outputs)
        if options.sensitivity == "measured":
            errors = probe.measure_errors(options.probe_samples)
            for report in reports:
                report.measured_error = errors.get(report.name)
            ranked = sorted(errors, key=errors.get, reverse=True)
        else:
            ranked = [r.name for r in sorted(reports, key=sensitivity, reverse=True) if r.name not in keep]
        plan.keep_fp32 |= set(ranked[: options.auto_keep])
        rest = ranked[options.auto_keep:]
        if options.evaluate is not None:
            def score(kept: set[str]) -> float:
                return float(options.evaluate(probe.runner(kept)))

            int8.search_metric = "accuracy (evaluate)"
            int8.fp32_score = score(set(probe.layers))
            target = int8.fp32_score - options.max_accuracy_drop
        else:
            score, target = probe.agreement, options.min_agreement
            int8.search_metric = "top-1 agreement with FP32"
        if searching:
            int8.agreement_search = probe.search(plan.keep_fp32, rest, score, target)
            plan.keep_fp32 |= set(rest[: _fewest_meeting(int8.agreement_search, len(plan.keep_fp32), target)])
        int8.probe_seconds = time.perf_counter() - t0
    for report in reports:
        report.quantized = report.name not in plan.keep_fp32
    return int8


def top1_agreement(ours: list[np.ndarray], reference: list[np.ndarray]) -> float:
    """Percent of positions whose argmax over the last axis is the same."""
    same = total = 0
    for a, b in zip(ours, reference):
        a, b = np.asarray(a), np.asarray(b)
        same += int(np.sum(a.argmax(axis=-1) == b.argmax(axis=-1)))
        total += int(np.prod(a.shape[:-1])) if a.ndim > 1 else 1
    return 100.0 * same / max(total, 1)


def relative_error(ours: list[np.ndarray], reference: list[np.ndarray]) -> float:
    """Mean over samples of ||ours - reference|| / ||reference||."""
    errors = [np.linalg.norm(a - b) / max(float(np.linalg.norm(b)), 1e-12) for a, b in zip(ours, reference)]
    return float(np.mean(errors))


def _fewest_meeting(search: list[tuple[int, float]], base: int, target: float) -> int:
    """How many extra layers the smallest kept set reaching ``target`` in ``search`` adds to ``base``."""
    meeting = [kept for kept, agreement in search if agreement >= target]
    return (min(meeting) if meeting else max(kept for kept, _ in search)) - base


class SensitivityProbe:
    """One host build of the INT8 model in which any set of layers can run FP32 instead.

    Built from the simplified module by ``compiler.pipeline.int8_probe_pipeline`` with the
    weight width this machine's int8 kernels need; every call picks the FP32 layers with the
    ``kiln_keep_fp32`` input, so choosing among thousands of mixed-precision variants costs
    one compile and a pass over the samples per variant.
    """

    def __init__(self, mod, imported: ImportedModel, plan: QuantizationPlan, samples, fp32_outputs) -> None:
        import dataclasses

        import tvm

        from compiler.passes.quantize import probed_layers
        from compiler.pipeline import int8_probe_pipeline
        from schedules.int8 import channel_multiple_for, signed_activations_for, weight_bits_for
        from targets.registry import resolve_target

        host = resolve_target("host")
        trial = dataclasses.replace(plan, keep_fp32=set(plan.keep_fp32),
                                    weight_bits=min(plan.weight_bits, weight_bits_for(host.tvm_target())),
                                    channel_multiple=channel_multiple_for(host.tvm_target()),
                                    signed_activations=signed_activations_for(host.tvm_target()))
        self.layers = probed_layers(trial, find_layers(mod, imported.onnx_model))
        with tvm.transform.PassContext(opt_level=3):
            executable = tvm.compile(int8_probe_pipeline(host, trial)(mod), host.tvm_target(), relax_pipeline=None)
        self.vm = tvm.runtime.vm.VirtualMachine(executable, tvm.cpu())
        self.inputs = [[tvm.runtime.tensor(np.ascontiguousarray(s[spec.name])) for spec in imported.inputs]
                       for s in samples]
        self.fp32_outputs = fp32_outputs
        self.input_specs = list(imported.inputs)

    def _mask(self, keep_fp32: set[str]):
        import tvm

        return tvm.runtime.tensor(np.array([name in keep_fp32 for name in self.layers], dtype=bool))

    def run(self, keep_fp32: set[str], count: int | None = None) -> list[np.ndarray]:
        """First outputs over the first ``count`` samples with the layers in ``keep_fp32`` in FP32."""
        mask = self._mask(keep_fp32)
        return [first_output(self.vm["main"](*args, mask)) for args in self.inputs[:count]]

    def runner(self, keep_fp32: set[str]) -> Callable:
        """``run(inputs) -> first output`` of the model with ``keep_fp32`` in FP32 (for ``evaluate``)."""
        import tvm

        mask = self._mask(keep_fp32)

        def run(inputs) -> np.ndarray:
            if not isinstance(inputs, dict):
                if len(self.input_specs) != 1:
                    names = [spec.name for spec in self.input_specs]
                    raise InputError(f"evaluate: this model has inputs {names}; pass run() a dict")
                inputs = {self.input_specs[0].name: inputs}
            args = [tvm.runtime.tensor(np.ascontiguousarray(inputs[spec.name], dtype=spec.dtype))
                    for spec in self.input_specs]
            return first_output(self.vm["main"](*args, mask))

        return run

    def measure_errors(self, count: int) -> dict[str, float]:
        """Per layer: relative output error against FP32 with only this layer INT8 (all others FP32).

        Measured alone rather than as the error removed by keeping one layer FP32 among INT8
        ones: on the PP-OCR recognizer layer errors do not add up (keeping its worst layer alone
        in FP32 *lowered* accuracy), and the isolated ranking is what found a 4-layer mix there.
        """
        reference = self.fp32_outputs[:count]
        everything = set(self.layers)
        return {name: relative_error(self.run(everything - {name}, count), reference) for name in self.layers}

    def agreement(self, keep_fp32: set[str]) -> float:
        return top1_agreement(self.run(keep_fp32), self.fp32_outputs)

    def search(self, keep: set[str], ranked: list[str], score: Callable[[set[str]], float],
               target: float) -> list[tuple[int, float]]:
        """(layers kept, score) for 0, 1, 2, 4, … of ``ranked`` added to ``keep``, then bisected to
        the fewest whose ``score(kept layers)`` reaches ``target``; sorted by layers kept."""
        tried: dict[int, float] = {}

        def trial(count: int) -> bool:
            tried[count] = score(set(keep) | set(ranked[:count]))
            return tried[count] >= target

        low, high = -1, None  # low: largest count known to miss; high: smallest known to reach
        for count in sorted({0, *[min(2 ** i, len(ranked)) for i in range(len(ranked).bit_length() + 1)]}):
            if trial(count):
                high = count
                break
            low = count
        while high is not None and high - low > 1:
            middle = (low + high) // 2
            if trial(middle):
                high = middle
            else:
                low = middle
        return sorted((len(set(keep) | set(ranked[:count])), agreement) for count, agreement in tried.items())


def simplified_module(imported: ImportedModel, preset: TargetPreset):
    """``imported.mod`` after kiln's simplification steps: what calibration and InsertQDQ see."""
    import tvm

    from compiler.pipeline import simplify_pipeline

    with tvm.transform.PassContext(opt_level=3):
        return simplify_pipeline(preset)(imported.mod)


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
