"""Mixed precision by measurement: which layers' INT8 error the model output feels most.

``SensitivityProbe`` runs one INT8 build in which any set of layers can be switched back to
FP32 at run time; ``search`` finds the fewest FP32 layers that reach a target score.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from compiler.frontend import ImportedModel
from compiler.quantization.calibrate import first_output
from compiler.quantization.layers import find_layers
from compiler.quantization.plan import QuantizationPlan, probed_layers
from compiler.quantization.runner import ModelRunner
from targets.errors import InputError


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


def fewest_meeting(search: list[tuple[int, float]], base: int, target: float) -> int:
    """How many extra layers the smallest kept set reaching ``target`` in ``search`` adds to ``base``."""
    meeting = [kept for kept, agreement in search if agreement >= target]
    return (min(meeting) if meeting else max(kept for kept, _ in search)) - base


class SensitivityProbe:
    """One host build of the INT8 model in which any set of layers can run FP32 instead.

    Built from the simplified module by the caller's ``ModelRunner.compile_probe`` (for kiln,
    ``compiler.pipeline.int8_probe_pipeline`` with the weight width this machine's int8 kernels
    need); every call picks the FP32 layers with the
    ``kiln_keep_fp32`` input, so choosing among thousands of mixed-precision variants costs
    one compile and a pass over the samples per variant.
    """

    def __init__(self, mod, imported: ImportedModel, plan: QuantizationPlan, samples, fp32_outputs,
                 runner: ModelRunner) -> None:
        self.layers = probed_layers(plan, find_layers(mod, imported.onnx_model))
        self.run_probe = runner.compile_probe(mod, plan)
        self.inputs = [[np.ascontiguousarray(s[spec.name]) for spec in imported.inputs] for s in samples]
        self.fp32_outputs = fp32_outputs
        self.input_specs = list(imported.inputs)

    def _mask(self, keep_fp32: set[str]) -> np.ndarray:
        return np.array([name in keep_fp32 for name in self.layers], dtype=bool)

    def run(self, keep_fp32: set[str], count: int | None = None) -> list[np.ndarray]:
        """First outputs over the first ``count`` samples with the layers in ``keep_fp32`` in FP32."""
        mask = self._mask(keep_fp32)
        return [first_output(self.run_probe(args, mask)) for args in self.inputs[:count]]

    def runner(self, keep_fp32: set[str]) -> Callable:
        """``run(inputs) -> first output`` of the model with ``keep_fp32`` in FP32 (for ``evaluate``)."""
        mask = self._mask(keep_fp32)

        def run(inputs) -> np.ndarray:
            if not isinstance(inputs, dict):
                if len(self.input_specs) != 1:
                    names = [spec.name for spec in self.input_specs]
                    raise InputError(f"evaluate: this model has inputs {names}; pass run() a dict")
                inputs = {self.input_specs[0].name: inputs}
            args = [np.ascontiguousarray(inputs[spec.name], dtype=spec.dtype) for spec in self.input_specs]
            return first_output(self.run_probe(args, mask))

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
