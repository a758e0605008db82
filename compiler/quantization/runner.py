"""How quantization runs a model: the caller builds and runs modules, quantization only asks.

Calibration runs the FP32 model with its layer inputs exposed; the sensitivity probe runs an
INT8 build whose layers can each be switched back to FP32. Both need a build for this
machine, which is the compiler's business (``compiler.host_runner.HostRunner``), so the
quantization package receives a ``ModelRunner`` instead of compiling anything itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np

if TYPE_CHECKING:
    from compiler.quantization.plan import QuantizationPlan
    from targets.registry import TargetPreset

# inputs (numpy arrays in the module's parameter order) -> the module's result (TVM objects)
CompiledFunction = Callable[[list[np.ndarray]], object]


class ModelRunner(Protocol):
    """Builds Relax modules for the machine quantization runs on, and returns their ``main``."""

    preset: "TargetPreset"  # the machine the modules run on

    def compile(self, mod) -> CompiledFunction:
        """``mod`` (a float module after kiln's simplification steps) built for this machine."""

    def compile_probe(self, mod, plan: "QuantizationPlan") -> Callable[[list[np.ndarray], np.ndarray], object]:
        """``mod`` quantized by ``plan`` with a switch per layer: ``run(inputs, keep_fp32_mask)``."""
