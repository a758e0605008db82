"""Build Relax modules for this machine and run them: the ``ModelRunner`` quantization uses.

Calibration and the sensitivity probe run the model on the machine that compiles it, with
kiln's default schedules (no other runtime needed). ``HostRunner`` builds through the same
pipelines a compile uses (``lowering_pipeline``, ``int8_probe_pipeline``) for the detected
host preset, and runs the result in TVM's VM with ``threads`` threads.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from schedules.resolved_target import as_resolved
from targets.registry import TargetPreset, resolve_target


class HostRunner:
    """``compiler.quantization.runner.ModelRunner`` for this machine."""

    def __init__(self, threads: int | None = None, preset: TargetPreset | None = None) -> None:
        self.preset = as_resolved(preset or resolve_target("host"))
        self.threads = threads

    def _vm(self, mod):
        import tvm

        from compiler.runtime import configure_threads

        with tvm.transform.PassContext(opt_level=3):
            executable = tvm.compile(mod, self.preset.tvm_target(), relax_pipeline=None)
        configure_threads(self.threads)
        return tvm.runtime.vm.VirtualMachine(executable, tvm.cpu())

    def compile(self, mod) -> Callable[[list[np.ndarray]], object]:
        import tvm

        from compiler.pipeline import lowering_pipeline

        with tvm.transform.PassContext(opt_level=3):
            lowered = lowering_pipeline(self.preset)(mod)
        main = self._vm(lowered)["main"]
        return lambda inputs: main(*[tvm.runtime.tensor(x) for x in inputs])

    def compile_probe(self, mod, plan) -> Callable[[list[np.ndarray], np.ndarray], object]:
        """The probe of ``plan`` with the weight width, channel multiple and activation sign
        this machine's int8 kernels need (the plan may be for another target)."""
        import tvm

        from compiler.pipeline import int8_probe_pipeline

        host = self.preset
        trial = dataclasses.replace(plan, keep_fp32=set(plan.keep_fp32),
                                    weight_bits=min(plan.weight_bits, host.int8_weight_bits),
                                    channel_multiple=host.int8_channel_multiple,
                                    signed_activations=host.int8_signed_activations)
        with tvm.transform.PassContext(opt_level=3):
            probe = int8_probe_pipeline(self.preset, trial)(mod)
        main = self._vm(probe)["main"]
        return lambda inputs, mask: main(*[tvm.runtime.tensor(x) for x in inputs], tvm.runtime.tensor(mask))
