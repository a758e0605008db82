"""kiln's pass pipeline: one ordered list, one line per step with its reason.

Expects a Relax module from ``compiler.frontend`` (static shapes, weights as constants).
Guarantees a module that ``tvm.compile`` can build for the target: every operator
legalized to TIR, fused, scheduled (tuning records first, then target defaults), and
lowered for the Relax VM. Target-specific steps are chosen by data (``TargetPreset``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import tvm
from tvm import relax

from compiler.rewrites import fold_stacked_reduce
from schedules.defaults import default_schedule_pass
from schedules.database import apply_database_pass
from targets.registry import TargetPreset


@dataclass(frozen=True)
class Step:
    name: str
    why: str
    make: Callable[[], tvm.transform.Pass]


def _gpu_default_schedules() -> tvm.transform.Pass:
    from tvm.s_tir import dlight as dl

    return dl.ApplyDefaultSchedule(
        dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()
    )


def _backend(kind: str):
    """TVM's per-target pipeline module (its dispatch, lowering and finalize lists)."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu
    from tvm.relax.backend.cuda import pipeline as cuda

    return {"llvm": cpu, "cuda": cuda}[kind]


PRECISIONS = ("fp32", "fp16")


def pipeline_steps(preset: TargetPreset, db: str | Path | None = None, precision: str = "fp32") -> list[Step]:
    """The ordered steps for ``preset`` (optionally applying tuning records from ``db``).

    ``precision="fp16"`` computes in float16 with float32 accumulation (TVM's
    ``ToMixedPrecision``); inputs and outputs keep their float32 interface.
    """
    target = preset.tvm_target()
    backend = _backend(preset.kind)
    steps = [
        Step("FoldStackedReduce", "ONNX Sum/Max/Min become elementwise adds (no stack copy; fusable)",
             lambda: fold_stacked_reduce),
        Step("FoldBatchnormToConv2D", "batch-norm after conv becomes conv weights and bias",
             relax.transform.FoldBatchnormToConv2D),
        Step("DecomposeOpsForInference", "remaining batch-norm/layer-norm become plain arithmetic",
             relax.transform.DecomposeOpsForInference),
        Step("FoldConstant", "compute weight-only expressions at compile time", relax.transform.FoldConstant),
        Step("DeadCodeElimination", "drop bindings nothing uses (e.g. Dropout masks)",
             relax.transform.DeadCodeElimination),
        *([Step("ToMixedPrecision", "compute in float16, accumulate in float32",
                lambda: relax.transform.ToMixedPrecision(out_dtype="float32")),
           Step("FoldConstant", "store the weights as float16 constants", relax.transform.FoldConstant)]
          if precision == "fp16" else []),
        *[Step(p.info.name, "target library dispatch (sort, scan, sampling)", lambda p=p: p)
          for p in backend.library_dispatch_passes(target)],
        Step("LegalizeOps", "lower every Relax operator to a TIR kernel", relax.transform.LegalizeOps),
        Step("AnnotateTIROpPattern", "label kernels (injective, reduction, …) for fusion",
             relax.transform.AnnotateTIROpPattern),
        Step("FoldConstant", "fold kernels whose inputs are all constants", relax.transform.FoldConstant),
        Step("FuseOps", "group producer/consumer kernels (conv + bias + relu, …)", relax.transform.FuseOps),
        Step("FuseTIR", "merge each group into one TIR kernel", relax.transform.FuseTIR),
    ]
    if db is not None:
        steps.append(Step("MetaScheduleApplyDatabase", "use tuned schedules from the tuning database",
                          lambda: apply_database_pass(db)))
    if preset.device == "cpu":
        steps.append(Step("kiln default CPU schedules", "parallel, vectorized, tiled kernels for everything not tuned",
                          lambda: default_schedule_pass(target)))
        steps += [
            Step("SplitLayoutRewritePreproc", "weight packing (marked by the default rules) becomes its own kernel",
                 relax.transform.SplitLayoutRewritePreproc),
            Step("FoldConstant", "pack constant weights once, at compile time", relax.transform.FoldConstant),
            Step("DeadCodeElimination", "drop the unpacked weights and the packing kernels",
                 relax.transform.DeadCodeElimination),
        ]
    if preset.device == "cuda":
        steps.append(Step("dlight GPU rules", "schedule untuned kernels onto GPU threads", _gpu_default_schedules))
    steps += [
        *[Step(p.info.name, "lower dataflow for the VM", lambda p=p: p)
          for p in backend.dataflow_lower_passes(target)],
        *[Step(p.info.name, "plan memory and lower to VM instructions", lambda p=p: p)
          for p in backend.finalize_passes(target)],
    ]
    return steps


def _as_one_pass(preset: TargetPreset, steps: list[Step], name: str) -> tvm.transform.Pass:
    target = preset.tvm_target()
    passes = [step.make() for step in steps]

    @tvm.transform.module_pass(opt_level=0, name=name)
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with target:
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def tuning_input_pipeline(preset: TargetPreset, precision: str = "fp32") -> tvm.transform.Pass:
    """The steps before scheduling: what MetaSchedule extracts its tuning tasks from."""
    steps = pipeline_steps(preset, None, precision)
    last = max(i for i, step in enumerate(steps) if step.name == "FuseTIR")
    return _as_one_pass(preset, steps[: last + 1], "kiln_tuning_input")


def build_pipeline(preset: TargetPreset, db: str | Path | None = None, precision: str = "fp32") -> tvm.transform.Pass:
    """The whole pipeline as one pass, run under the target."""
    return _as_one_pass(preset, pipeline_steps(preset, db, precision), "kiln_pipeline")
