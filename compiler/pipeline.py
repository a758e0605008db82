"""kiln's pass pipeline: one ordered list, one line per step with its reason.

Expects a Relax module from ``compiler.frontend`` (static shapes, weights as constants).
Guarantees a module that ``tvm.compile`` can build for the target: every operator
legalized to TIR, fused, scheduled (tuning records first, then target defaults), and
lowered for the Relax VM. Target-specific steps are chosen by data (``ResolvedTarget``: the
preset and its derived facts).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import tvm
from tvm import relax

from compiler.passes.attach_attr_layout_free_buffers_in_place import attach_attr_layout_free_buffers_in_place
from compiler.passes.clip_as_max_min import clip_as_max_min
from compiler.passes.convert_conv_layout import convert_conv_layout
from compiler.passes.drop_dropout import drop_dropout
from compiler.passes.fixed_point_requantize import fixed_point_requantize
from compiler.passes.fold_stacked_reduce import fold_stacked_reduce
from compiler.passes.hoist_quantize import hoist_quantize
from compiler.passes.in_place_calls_as_call_tir import in_place_calls_as_call_tir
from compiler.passes.int8_conv_layout import int8_conv_layout
from compiler.passes.mark_int8_weight_bits import mark_int8_weight_bits
from compiler.passes.pad_output_channels import pad_output_channels
from compiler.passes.split_parallel_branches import split_parallel_branches
from compiler.passes.power_as_roots import power_as_roots
from compiler.passes.quantized_lookup import quantized_lookup
from compiler.passes.scalar_constants import scalar_constants
from compiler.passes.shape_functions_noalias import shape_functions_noalias
from compiler.passes.split_layout_rewrite_preproc_in_place import split_layout_rewrite_preproc_in_place
from compiler.passes.write_concat_in_place import write_concat_in_place
from compiler.relax_utils import blocked_conv, fast_activations
from compiler.relax_utils.row_softmax import legalize_softmax
from schedules.defaults import default_schedule_pass
from schedules.stack_accumulators import accumulators_on_stack
from schedules.database import apply_database_pass
from schedules.resolved_target import as_resolved
from targets.registry import TargetPreset


@dataclass(frozen=True)
class Step:
    """One pipeline step: ``name`` is the registered name of the pass ``make()`` returns (for
    TVM's ``DecomposeOpsForInference``, registered as ``DecomposeOps``, its Python name)."""

    name: str
    why: str
    make: Callable[[], tvm.transform.Pass]


def _gpu_default_schedules() -> tvm.transform.Pass:
    from tvm.s_tir import dlight as dl

    from schedules.rules.gpu_int8 import Int8TensorCore

    return dl.ApplyDefaultSchedule(
        Int8TensorCore(), dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(),
        dl.gpu.Fallback()
    )


def _backend(kind: str):
    """TVM's per-target pipeline module (its dispatch, lowering and finalize lists)."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu
    from tvm.relax.backend.cuda import pipeline as cuda

    return {"llvm": cpu, "cuda": cuda}[kind]


PRECISIONS = ("fp32", "fp16", "int8")


def simplify_steps(weight_bits: int = 8, fusion: bool = True, channel_multiple: int = 1) -> list[Step]:
    """Clean-up before precision changes; INT8 calibration sees the module as these leave it.

    ``weight_bits``: a pre-quantized model's int8 weights are narrowed to this width where the
    target's int8 kernels need it (7 on AVX2 without VNNI; ``ResolvedTarget.int8_weight_bits``).
    ``fusion=False`` leaves out kiln's own fusion rewrites (for before/after comparisons).
    ``channel_multiple``: a pre-quantized model's conv input channels are padded to a multiple of it.
    """
    from compiler.passes.lower_qdq import lower_qdq

    return [
        *([Step("FoldStackedReduce", "ONNX Sum/Max/Min become elementwise adds (no stack copy; fusable)",
                lambda: fold_stacked_reduce)] if fusion else []),
        Step("LowerQDQ", "a pre-quantized (QDQ) model's conv/matmul become int8 math with int32 accumulation",
             lambda: lower_qdq(weight_bits, channel_multiple)),
        Step("FoldBatchnormToConv2D", "batch-norm after conv becomes conv weights and bias",
             relax.transform.FoldBatchnormToConv2D),
        Step("DecomposeOpsForInference", "remaining batch-norm/layer-norm become plain arithmetic",
             relax.transform.DecomposeOpsForInference),
        *([Step("CanonicalizeBindings", "batch-norm's (out, mean, var)[0] becomes out: the scale/shift fuses "
                "with its neighbours (DenseNet: 62 kernels fewer)", relax.transform.CanonicalizeBindings),
           Step("DropDropout", "inference Dropout is the identity (no copy; SqueezeNet's last concat can go)",
                lambda: drop_dropout)] if fusion else []),
        Step("FoldConstant", "compute weight-only expressions at compile time", relax.transform.FoldConstant),
        *([Step("PowerAsRoots", "x ** 0.75 (LRN) and other constant powers as vector square roots and products, "
                "not a scalar powf per element", lambda: power_as_roots)] if fusion else []),
        *([Step("PadOutputChannels", "a conv/matmul with an odd output-channel count gets zero channels, "
                "so the vectorized kernels take it (PP-OCR recognizer's 6625 classes, its 60-channel convs)",
                lambda: pad_output_channels)] if fusion else []),
        Step("DeadCodeElimination", "drop bindings nothing uses (e.g. Dropout masks)",
             relax.transform.DeadCodeElimination),
    ]


def precision_steps(precision: str, plan=None, probe: bool = False) -> list[Step]:
    """FP16 mixed precision, or INT8 from a calibrated ``QuantizationPlan``.

    ``probe=True``: the INT8 sensitivity probe (every layer both ways, a runtime switch per layer;
    ``compiler.passes.insert_qdq``)."""
    from compiler.passes.fold_relu_into_quantize import fold_relu_into_quantize
    from compiler.passes.insert_qdq import insert_qdq
    from compiler.passes.lower_qdq import lower_qdq

    if precision == "fp16":
        return [Step("ToMixedPrecision", "compute in float16, accumulate in float32",
                     lambda: relax.transform.ToMixedPrecision(out_dtype="float32")),
                Step("FoldConstant", "store the weights as float16 constants", relax.transform.FoldConstant)]
    if precision == "int8":
        if plan is None:
            raise ValueError("precision int8 needs a QuantizationPlan (calibrate first)")
        return [Step("InsertQDQ", "quantize calibrated layer inputs (per tensor) and weights (per channel)",
                     lambda: insert_qdq(plan, probe)),
                Step("LowerQDQ", "int8 conv/matmul with int32 accumulation, bias in int32, float requantize",
                     lambda: lower_qdq(plan.weight_bits, plan.channel_multiple)),
                Step("HoistQuantize", "quantize before max-pool and concat: the layer before writes uint8 "
                     "(no float pool/concat pass; SqueezeNet)", lambda: hoist_quantize),
                Step("FoldReluIntoQuantize", "a ReLU before a uint8 quantize is the quantize's own clip",
                     lambda: fold_relu_into_quantize),
                *([Step("FixedPointRequantize", "int32 accumulators requantized by integer multiplier and shift",
                        lambda: fixed_point_requantize)] if plan.requantize == "fixed_point" else []),
                Step("FoldConstant", "fold the int8 weight constants", relax.transform.FoldConstant)]
    return []


def legalize_map(preset: TargetPreset, symbolic: bool = False) -> dict:
    """kiln's own ``LegalizeOps`` entries: blocked-channel convs, and on CPUs a float32 sigmoid,
    tanh, erf and GELU that vectorize (``compiler.relax_utils.fast_activations``) and a softmax
    over the last axis whose passes vectorize (``compiler.relax_utils.row_softmax``; static shapes only, so
    not for a ``symbolic`` build and its twin)."""
    legalize = blocked_conv.legalize_map()
    if preset.device == "cpu" and preset.kind == "llvm":
        legalize.update(fast_activations.legalize_map())
    if preset.device == "cpu" and preset.kind == "llvm" and not symbolic:
        legalize["relax.nn.softmax"] = legalize_softmax(as_resolved(preset).vector_lanes)
    return legalize


def lowering_steps(preset: TargetPreset, db: str | Path | None = None, fusion: bool = True,
                   twins: dict | None = None, symbolic: bool = False, inter_op: bool = False) -> list[Step]:
    """Legalize, fuse, schedule (tuning records first, then defaults) and lower for the VM.

    ``twins``: for a module with symbolic sizes, its kernels built for one static size
    (``schedule_twins``), whose default schedules the symbolic kernels replay. ``symbolic``
    (such a module, and its twin): the steps that need static shapes are left out (in-place
    concatenation, kiln's row softmax), so both build the same kernels. ``inter_op``: stage
    functions for running independent branches side by side (CPU, static shapes)."""
    target = preset.tvm_target()
    backend = _backend(preset.kind)
    steps = [
        *[Step(p.info.name, "target library dispatch (sort, scan, sampling)", lambda p=p: p)
          for p in backend.library_dispatch_passes(target)],
        Step("LegalizeOps", "lower every Relax operator to a TIR kernel (blocked-channel convs and, on CPUs, "
             "last-axis softmax by kiln's own)", lambda: relax.transform.LegalizeOps(legalize_map(preset, symbolic))),
        Step("AnnotateTIROpPattern", "label kernels (injective, reduction, …) for fusion",
             relax.transform.AnnotateTIROpPattern),
        Step("FoldConstant", "fold kernels whose inputs are all constants", relax.transform.FoldConstant),
        Step("FuseOps", "group producer/consumer kernels (conv + bias + relu, …)", relax.transform.FuseOps),
        *([Step("WriteConcatInPlace", "producers write into the concatenated buffer: no concat kernels "
                "(Inception, SqueezeNet, DenseNet)", lambda: write_concat_in_place)]
          if fusion and preset.device == "cpu" and not symbolic else []),
        Step("FuseTIR", "merge each group into one TIR kernel", relax.transform.FuseTIR),
    ]
    if preset.device == "cpu":
        # As TVM's own CPU tuning pipeline does: weights marked layout-free, so MetaSchedule's
        # RewriteLayout packs them for tuned schedules as kiln's default rules do for theirs.
        steps.append(Step("AttachAttrLayoutFreeBuffers", "let tuned schedules pack constant weights too",
                          relax.transform.AttachAttrLayoutFreeBuffers))
        steps.append(Step("AttachAttrLayoutFreeBuffersInPlace", "the same for in-place kernels (concat writers)",
                          lambda: attach_attr_layout_free_buffers_in_place))
    if db is not None:
        steps.append(Step("ApplyTuningDatabase", "use tuned schedules from the tuning database "
                          "(TVM's MetaScheduleApplyDatabase)", lambda: apply_database_pass(db)))
    if preset.device == "cpu":
        steps.append(Step("MarkInt8WeightBits", "int8 kernels whose weights exceed 7 bits avoid AVX2's saturating "
                          "vpmaddubsw", lambda: mark_int8_weight_bits))
        steps.append(Step("DefaultCPUSchedule", "kiln's default rules: parallel, vectorized, tiled kernels for "
                          "everything not tuned", lambda: default_schedule_pass(target, twins=twins)))
        steps.append(Step("AccumulatorsOnStack", "tile accumulators on the stack (in registers), not in TVM's "
                          "workspace pool once per tile", lambda: accumulators_on_stack(target)))
        steps += [
            Step("SplitLayoutRewritePreproc", "weight packing (marked by the default rules) becomes its own kernel",
                 relax.transform.SplitLayoutRewritePreproc),
            Step("SplitLayoutRewritePreprocInPlace", "the same for in-place kernels (concat writers)",
                 lambda: split_layout_rewrite_preproc_in_place),
            Step("FoldConstant", "pack constant weights once, at compile time", relax.transform.FoldConstant),
            Step("DeadCodeElimination", "drop the unpacked weights and the packing kernels",
                 relax.transform.DeadCodeElimination),
        ]
    if preset.device == "cuda":
        steps.append(Step("ApplyDefaultSchedule", "dlight's GPU rules schedule untuned kernels onto GPU threads",
                          _gpu_default_schedules))
    if inter_op and preset.device == "cpu" and not symbolic:
        steps.append(Step("SplitParallelBranches", "independent branches as stage functions that can run side by "
                          "side (--inter-op; main unchanged)", lambda: split_parallel_branches))
    steps += [
        *[Step(p.info.name, "lower dataflow for the VM", lambda p=p: p)
          for p in backend.dataflow_lower_passes(target)],
        *[Step(p.info.name, "plan memory and lower to VM instructions", lambda p=p: p)
          for p in backend.finalize_passes(target)],
        Step("ShapeFunctionsNoAlias", "shape functions marked noalias like the kernels (a TVM code generation "
             "bug otherwise drops noalias from every kernel of a symbolic build)", lambda: shape_functions_noalias),
    ]
    return steps


def int8_weight_bits(preset: TargetPreset, plan=None) -> int:
    """The int8 weight width of a build: the plan's (quantized by kiln), else what ``preset``'s int8
    kernels take (a pre-quantized model's weights are narrowed to it). Compile and tune both ask here."""
    return plan.weight_bits if plan is not None else as_resolved(preset).int8_weight_bits


def pipeline_steps(preset: TargetPreset, db: str | Path | None = None, precision: str = "fp32",
                   plan=None, fusion: bool = True, twins: dict | None = None, symbolic: bool = False,
                   inter_op: bool = False) -> list[Step]:
    """The ordered steps for ``preset`` (optionally applying tuning records from ``db``).

    ``precision="fp16"`` computes in float16 with float32 accumulation (TVM's
    ``ToMixedPrecision``); ``"int8"`` quantizes by ``plan`` (``compiler.quantization``, ``compiler.passes.insert_qdq``).
    Inputs and outputs keep their float32 interface. ``fusion=False`` leaves out kiln's own
    fusion steps (TVM's FuseOps/FuseTIR still run): the baseline of ``scripts/fusion_report.py``.
    """
    preset = as_resolved(preset)
    weight_bits = int8_weight_bits(preset, plan)
    # Layout before precision: INT8 is inserted into the NHWC graph, so int8 kernels exchange
    # NHWC tensors (4 consecutive channels contiguous: what the dot-product intrinsics read).
    return (simplify_steps(weight_bits, fusion, preset.int8_channel_multiple) + layout_steps(preset)
            + prequantized_steps(preset) + precision_steps(precision, plan)
            + lowering_steps(preset, db, fusion, twins, symbolic, inter_op))


def layout_steps(preset: TargetPreset) -> list[Step]:
    """Float convolutions in the preset's layout (nothing to do for NCHW, the importer's own)."""
    if preset.conv_layout == "NCHW":
        return []
    block = as_resolved(preset).vector_lanes
    return [Step("ClipAsMaxMin", "clip (ReLU6, in HardSwish) as maximum/minimum, which ConvertLayout converts "
                 "(TVM has no layout rule for clip: two transposes around each)", lambda: clip_as_max_min),
            Step("DeadCodeElimination", "drop the clip kernels ClipAsMaxMin replaced",
                 relax.transform.DeadCodeElimination),
            Step("ScalarConstants", "one-element constants of elementwise ops as 0-d constants, which "
                 "ConvertLayout passes (a [1]-shaped one got two transposes around its op)", lambda: scalar_constants),
            Step("ConvertConvLayout", f"float conv2d and the ops between them in {preset.conv_layout} "
                 "(one transpose at each end, weights transposed at compile time)",
                 lambda: convert_conv_layout(preset.conv_layout, block))]


def prequantized_steps(preset: TargetPreset) -> list[Step]:
    """A pre-quantized (QDQ) model's int8 convs in the layout kiln's int8 kernels want, with int8
    tensors between them. Both steps leave a module without int8 convs or quantizes as it is."""
    steps = []
    if (preset.int8_conv_layout or preset.conv_layout) == "NHWC":
        steps.append(Step("Int8ConvLayout", "int8 convs of a QDQ model (lowered in NCHW) and the ops between them "
                          "in NHWC: no activation packing per conv (ConvertLayout has no quantize rule)",
                          lambda: int8_conv_layout))
    steps.append(Step("HoistQuantize", "a QDQ model's DQ -> max-pool/concat -> Q: pool and concat move uint8, "
                      "the quantize meets its dequantize and both go", lambda: hoist_quantize))
    steps.append(Step("QuantizedLookup", "a quantize that is a function of one 8-bit tensor (ORT's Q/DQ around "
                      "each op of HardSwish) becomes a 256-entry table lookup", lambda: quantized_lookup))
    return steps


def _as_one_pass(preset: TargetPreset, steps: list[Step], name: str) -> tvm.transform.Pass:
    target = preset.tvm_target()
    passes = [step.make() for step in steps]

    @tvm.transform.module_pass(opt_level=0, name=name)
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with target:
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def tuning_input_pipeline(preset: TargetPreset, precision: str = "fp32", plan=None,
                          fusion: bool = True, symbolic: bool = False) -> tvm.transform.Pass:
    """The steps before scheduling: what MetaSchedule extracts its tuning tasks from."""
    steps = pipeline_steps(preset, None, precision, plan, fusion, symbolic=symbolic)
    last = max(i for i, step in enumerate(steps) if step.name in ("FuseTIR", "AttachAttrLayoutFreeBuffers",
                                                                  "AttachAttrLayoutFreeBuffersInPlace"))
    extract = Step("InPlaceCallsAsCallTIR", "extract_tasks sees call_tir only: show in-place kernels too",
                   lambda: in_place_calls_as_call_tir)
    return _as_one_pass(preset, [*steps[: last + 1], extract], "TuningInputPipeline")


def build_pipeline(preset: TargetPreset, db: str | Path | None = None, precision: str = "fp32",
                   plan=None, fusion: bool = True, twins: dict | None = None,
                   inter_op: bool = False) -> tvm.transform.Pass:
    """The whole pipeline as one pass, run under the target (``twins``: a symbolic build;
    ``inter_op``: with stage functions, ``compiler.passes.split_parallel_branches``)."""
    return _as_one_pass(preset, pipeline_steps(preset, db, precision, plan, fusion, twins, symbolic=twins is not None,
                                               inter_op=inter_op), "BuildPipeline")


def schedule_twins(preset: TargetPreset, static_mod: tvm.IRModule, precision: str = "fp32",
                   fusion: bool = True) -> dict:
    """The kernels of ``static_mod`` (the model imported for one static size) as the scheduling
    step sees them, built with the symbolic build's steps (``symbolic=True``): name → PrimFunc,
    for ``lowering_steps(twins=...)``. Build the symbolic module with the same ``fusion``:
    kernels pair up by name."""
    from tvm import tirx

    with tvm.transform.PassContext(opt_level=3):
        mod = tuning_input_pipeline(preset, precision, fusion=fusion, symbolic=True)(static_mod)
    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}


def simplify_pipeline(preset: TargetPreset) -> tvm.transform.Pass:
    """Only the simplification steps: the module INT8 calibration runs on."""
    return _as_one_pass(preset, simplify_steps(as_resolved(preset).int8_weight_bits), "SimplifyPipeline")


def int8_probe_pipeline(preset: TargetPreset, plan) -> tvm.transform.Pass:
    """A simplified module to the INT8 sensitivity probe: quantized by ``plan``, each layer switchable."""
    return _as_one_pass(preset, precision_steps("int8", plan, probe=True) + lowering_steps(preset), "Int8ProbePipeline")


def lowering_pipeline(preset: TargetPreset, db: str | Path | None = None) -> tvm.transform.Pass:
    """Only the lowering steps, for a module that is already simplified (calibration builds)."""
    return _as_one_pass(preset, lowering_steps(preset, db), "LoweringPipeline")


def simplified_module(imported, preset: TargetPreset) -> tvm.IRModule:
    """``imported.mod`` (an ``ImportedModel``'s) after kiln's simplification steps: what
    calibration and ``InsertQDQ`` see."""
    with tvm.transform.PassContext(opt_level=3):
        return simplify_pipeline(preset)(imported.mod)
