"""The INT8 plan: what to quantize and how, as the quantization passes consume it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from compiler.quantization.calibrators import TensorRange


@dataclass
class QuantizationPlan:
    """What to quantize and how: calibrated ranges per layer name, layers kept in FP32."""

    ranges: dict[str, TensorRange]
    keep_fp32: set[str] = field(default_factory=set)
    weight_bits: int = 8  # 7 where the int8 kernel's 16-bit intermediate could saturate (AVX2 without VNNI)
    onnx_model: object = None  # for layer names
    channel_multiple: int = 1  # conv input channels padded to a multiple of this (4 for x86 int8 kernels)
    signed_activations: bool = False  # int8 activations (zero points - 128): AArch64 sdot kernels
    # Subtract from each layer's bias (layers with a constant bias add) the mean output shift its
    # weight rounding causes on the mean calibration input (``input_means``, from calibration).
    bias_correction: bool = False
    input_means: dict[str, np.ndarray] = field(default_factory=dict)
    requantize: str = "float"  # float | fixed_point (integer multiplier and shift: ``fixed_point_requantize``)
    # nearest | gptq: round weights so each layer's output on its calibration inputs moves least
    # (``compiler.quantization.gptq``, done once by ``plan_int8``)
    weight_rounding: str = "nearest"
    # layer name -> its integer weights and scales when not rounded to nearest: conv2d weights
    # in OIHW, matmul weights [K, N] (each layer's own layout is applied when inserted)
    rounded_weights: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


@dataclass
class LayerReport:
    """One layer's quantization, for ``kiln quantize-report``."""

    name: str
    op: str
    quantized: bool
    activation_dtype: str = ""
    activation_scale: float = 0.0
    activation_zero_point: int = 0
    threshold: float = 0.0
    seen_min: float = 0.0
    seen_max: float = 0.0
    weight_error: float = 0.0  # relative L2 error of the quantized weights
    activation_error: float = 0.0  # relative L2 error of the quantized input (from the histogram)
    measured_error: float | None = None  # model output error with only this layer INT8 (sensitivity probe)
    # GPTQ: the layer's relative output error on its calibration inputs from weight rounding alone,
    # with GPTQ's rounding and with nearest rounding
    output_error: float | None = None
    nearest_output_error: float | None = None


def activation_zero_points(rng: TensorRange, signed: bool, per_channel: bool = False) -> tuple[str, np.ndarray]:
    """(dtype, zero point(s)) of a quantized activation: calibration's uint8 range, or with
    ``signed`` the same steps as int8 (every value and zero point shifted by -128, so
    ``x_int8 - zp_int8 == x_uint8 - zp_uint8``: the same dequantized values)."""
    zeros = np.asarray(rng.channel_zero_points() if per_channel else rng.zero_point, rng.dtype)
    if signed and rng.dtype == "uint8":
        return "int8", (zeros.astype(np.int16) - 128).astype(np.int8)
    return rng.dtype, zeros


PROBE_PARAM = "kiln_keep_fp32"  # the probe module's extra input: one bool per probed layer


def probed_layers(plan: QuantizationPlan, layers) -> list[str]:
    """Names of the layers ``insert_qdq(plan, probe=True)`` gives a switch, in mask order."""
    return [layer.name for layer in layers if layer.name not in plan.keep_fp32 and layer.name in plan.ranges]
