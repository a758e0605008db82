"""INT8 post-training quantization of an imported model: calibrate, choose layers, plan.

Expects an ``ImportedModel`` and ``Int8Options`` (calibration data, method, layers to
keep in FP32). Guarantees a ``QuantizationPlan`` for ``compiler.passes.insert_qdq`` and a
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
from dataclasses import dataclass
from typing import Callable

import numpy as np

from compiler.frontend import ImportedModel
from compiler.quantization.calibrate import calibrate
from compiler.quantization.calibration_data import load_calibration
from compiler.quantization.gptq import gptq_quantize_weight, relative_output_errors
from compiler.quantization.layers import Layer, find_layers
from compiler.quantization.plan import LayerReport, QuantizationPlan
from compiler.quantization.report import Int8Result, activation_error, sensitivity
from compiler.quantization.runner import ModelRunner
from compiler.quantization.sensitivity import SensitivityProbe, fewest_meeting
from compiler.quantization.weights import quantize_weight, weight_error
from schedules.resolved_target import as_resolved
from targets.errors import InputError
from targets.registry import TargetPreset


@dataclass
class Int8Options:
    """How to quantize: calibration samples and method, and which layers stay FP32."""

    calibration: object  # .npz / .npy / directory path, or an iterable of samples
    method: str = "percentile"  # minmax | percentile | entropy | mse (entropy clips the PP-OCR recognizer too hard)
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
    # depthwise convs quantize their input per channel (exact in int32); off by default: no accuracy
    # gain on the PP-OCR recognizer (docs/int8.md)
    per_channel_depthwise: bool = False
    threads: int | None = None  # for running calibration
    # int8 (True) or uint8 (False) activations; default: what the target's int8 kernels take (int8 on
    # AArch64 with sdot only and on CUDA with int8 tensor cores, else uint8). Same values either way.
    signed_activations: bool | None = None
    # subtract the weight-rounding shift on the mean calibration input from each layer's bias
    bias_correction: bool = False
    # how an int32 accumulator returns to 8 bits: "float" (scale multiply, as ONNX Runtime) or
    # "fixed_point" (integer multiplier and shift); float is the faster one on x86 (docs/benchmarks.md)
    requantize: str = "float"
    # how weights round to their int8 steps: "gptq" (each layer's output error on the calibration
    # inputs, not its weight error, is minimized: it recovers the PP-OCR recognizer's FP32 accuracy,
    # docs/int8.md), or "nearest" (each weight to its nearest step: faster to compile)
    weight_rounding: str = "gptq"


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


SENSITIVITY = ("measured", "estimated")
REQUANTIZE = ("float", "fixed_point")
WEIGHT_ROUNDING = ("nearest", "gptq")


def plan_int8(mod, imported: ImportedModel, preset: TargetPreset, options: Int8Options,
              runner: ModelRunner | None = None) -> Int8Result:
    """Calibrate the simplified module ``mod`` and decide what to quantize (see module doc).

    ``runner`` builds and runs the calibration and probe modules on this machine (default:
    ``compiler.host_runner.HostRunner`` with ``options.threads``)."""
    target = as_resolved(preset)
    bits = options.weight_bits or target.int8_weight_bits
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
    if runner is None:
        from compiler.host_runner import HostRunner

        runner = HostRunner(options.threads)
    samples = load_calibration(options.calibration, imported.inputs, options.samples)
    result = calibrate(mod, imported.inputs, samples, runner, options.method, options.percentile,
                       imported.onnx_model, options.per_channel_depthwise,
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
    signed = target.int8_signed_activations if options.signed_activations is None else options.signed_activations
    plan = QuantizationPlan(result.ranges, keep, bits, imported.onnx_model, target.int8_channel_multiple, signed,
                            options.bias_correction, result.input_means, options.requantize,
                            options.weight_rounding, rounded)
    int8 = Int8Result(plan, result, reports)
    searching = options.min_agreement is not None or options.evaluate is not None
    if options.auto_keep or searching:
        t0 = time.perf_counter()
        probe = SensitivityProbe(mod, imported, plan, samples, result.fp32_outputs, runner)
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
            plan.keep_fp32 |= set(rest[: fewest_meeting(int8.agreement_search, len(plan.keep_fp32), target)])
        int8.probe_seconds = time.perf_counter() - t0
    for report in reports:
        report.quantized = report.name not in plan.keep_fp32
    return int8


