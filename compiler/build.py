"""Compile an ONNX model into one deployable shared library.

``compile_model`` runs frontend → pipeline → ``tvm.compile`` → ``export_library`` and
links kiln's metadata (interface, target, versions, source hash) into the ``.so``.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

import compiler
from targets.errors import BuildError, InputError, KilnError, TargetError, ToolMissingError
from compiler.frontend import ImportedModel, import_onnx, printable
from targets.library_format import LibraryMetadata, TensorSpec, metadata_source, seal_library
from compiler.pipeline import PRECISIONS, build_pipeline
from compiler.pipeline import simplified_module
from compiler.relax_utils.kernel_flops import kernel_flops
from compiler.quantization.planner import Int8Options, Int8Result, plan_int8
from targets.cpu_features import required_features
from targets.cuda import cuda_compile_hook, enable_cuda_codegen, parse_archs
from schedules.resolved_target import ResolvedTarget, as_resolved, resolve
from targets.registry import TargetPreset, fp16_refusal, resolve_target, runs_on_this_machine

log = logging.getLogger(__name__)


@dataclass
class CompileOptions:
    """What to build: for which target, with which fixed shapes and tuning records."""

    target: str | TargetPreset = "host"
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # inputs fixed to values at compile time (e.g. {"sr": 16000}): no longer inputs of the library
    input_values: dict[str, object] = field(default_factory=dict)
    db: str | Path | None = None
    precision: str = "fp32"
    cuda_archs: str | None = None  # e.g. "sm_80,sm_90"; default: the preset's arch
    int8: Int8Options | None = None  # calibration and layer choices for precision "int8"
    int8_plan: str | Path | None = None  # or a saved plan (``kiln quantize -o model.kq``) instead of calibrating
    fusion: bool = True  # kiln's own fusion steps; False: TVM's FuseOps/FuseTIR alone (before/after comparisons)
    # "NCHW" | "NHWC" | "NCHWc" | "auto" (build each, time here, keep the fastest); None: the preset's
    conv_layout: str | None = None
    # (for precision "int8" the preset's int8_conv_layout: NHWC on x86)
    # independent branches side by side (CPU): "off" (main alone), "on" (every region), "auto" (the
    # regions measured faster here; needs --target host). compiler.passes.split_parallel_branches
    inter_op: str = "off"


@dataclass
class CompileReport:
    """What was built, and how long each phase took."""

    output: Path
    target: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    kernels: int
    tuned_kernels: int
    seconds_import: float
    seconds_build: float
    seconds_export: float
    size_bytes: int
    int8: Int8Result | None = None  # per-layer quantization (precision "int8")
    conv_layout: str | None = None  # the layout kept by --layout auto
    layout_p50_ms: dict[str, float] = field(default_factory=dict)  # --layout auto: each layout's measured p50
    int8_kernels: int = 0  # conv/matmul kernels computing on int8 data (precision int8, or a QDQ model)
    inter_op: dict | None = None  # --inter-op: the regions found, measured and kept (metadata "inter_op")

    @property
    def seconds_total(self) -> float:
        return self.seconds_import + self.seconds_build + self.seconds_export


def int8_plan_for(imported: ImportedModel, preset: TargetPreset, int8: Int8Options | None,
                  int8_plan: str | Path | None) -> Int8Result:
    """The INT8 plan of a build of ``imported`` for ``preset``: read from the plan file ``int8_plan``
    (``kiln quantize``), or calibrated now from ``int8``. Compile and tune both take it from here."""
    target = as_resolved(preset)
    if int8_plan is not None:
        if int8 is not None:
            raise InputError("pass either --int8-plan or --calibration (with int8 options), not both: "
                             "the plan already holds the calibration")
        from compiler.quantization.plan_file import load_plan

        return load_plan(int8_plan, imported.sha256, model_input_shapes(imported),
                         weight_bits=target.int8_weight_bits, channel_multiple=target.int8_channel_multiple,
                         signed_activations=target.int8_signed_activations, onnx_model=imported.onnx_model)
    if int8 is None:
        raise KilnError("precision int8 needs calibration data: pass --calibration DATA (.npz, .npy or a "
                        "directory of them), or a saved plan --int8-plan model.kq (kiln quantize)")
    from compiler.host_runner import HostRunner

    # calibration and the sensitivity probe run on this machine, whatever the target
    return plan_int8(simplified_module(imported, target), imported, target, int8, HostRunner(int8.threads))


def model_input_shapes(imported: ImportedModel) -> dict[str, list]:
    """Input name -> shape (symbolic axes by name) of an imported model: what a plan file records."""
    return {spec.name: [d if isinstance(d, int) else str(d) for d in spec.shape] for spec in imported.inputs}


def _linker(preset: TargetPreset):
    """The ``fcompile`` for ``export_library``: the host compiler or the preset's cross compiler."""
    from tvm.support import cc

    if not preset.is_cross:
        return None
    if shutil.which(preset.cross_compiler) is None:
        raise ToolMissingError(
            f"target '{preset.name}' needs the cross compiler {preset.cross_compiler}, which is not installed; "
            f"install it with: apt-get install {preset.cross_package}"
        )
    triple = preset.cross_triple
    return cc.cross_compiler(preset.cross_compiler, get_target_triple=lambda: triple)


def int8_layer_kernels(mod) -> int:
    """How many conv/matmul kernels of a lowered module read 8-bit integer data."""
    import tvm

    from schedules.int8 import reads_int8

    return sum(1 for gvar, func in mod.functions_items()
               if isinstance(func, tvm.tirx.PrimFunc) and ("conv2d" in gvar.name_hint or "matmul" in gvar.name_hint)
               and reads_int8(func))


def kernel_schedules(mod, device: str) -> dict[str, str]:
    """Who scheduled each TIR kernel: ``tuned`` (a database record from MetaSchedule's space),
    ``tuned:<rule>`` (a record from that kiln rule's space), ``default:<rule>``, or ``naive``."""
    import tvm

    from schedules.defaults import RULE_ATTR, SCHEDULED_ATTR
    from schedules.rules.common import space_of

    sources = {}
    for gvar, func in mod.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        attrs = func.attrs if func.attrs is not None else {}
        if RULE_ATTR in attrs:
            sources[gvar.name_hint] = f"default:{attrs[RULE_ATTR]}"
        elif SCHEDULED_ATTR in attrs and bool(attrs[SCHEDULED_ATTR]):
            # On CUDA both tuning records and dlight's rules set the same attribute.
            space = space_of(func)
            sources[gvar.name_hint] = ("tuned or dlight" if device == "cuda" else
                                       f"tuned:{space}" if space is not None else "tuned")
        else:
            sources[gvar.name_hint] = "naive"
    return sources


def _symbolic_twins(imported: ImportedModel, preset: ResolvedTarget, options: CompileOptions) -> dict | None:
    """For a model with symbolic input sizes: its kernels built for one static size (each
    symbolic axis near the middle of its range, rounded up to a multiple of 16 where the range
    allows, at least 2), whose default schedules the symbolic kernels replay
    (``schedules.defaults``). None for static models."""
    symbolic = [s for s in imported.inputs if s.ranges]
    if not symbolic:
        return None
    if options.precision != "fp32" or preset.device != "cpu" or options.db is not None:
        raise KilnError("symbolic input sizes (--input-shape with ? or LOW..HIGH) are supported for float32 CPU "
                        "builds without tuning records; fix the sizes for this build")
    from compiler.pipeline import schedule_twins

    sizes = {}
    for spec in imported.inputs:
        shape = list(spec.example_shape())
        for axis, low, high in spec.ranges:  # a multiple of 16 where the range allows: even tiles
            rounded = -(-shape[axis] // 16) * 16
            shape[axis] = max(2, rounded if high < 0 or rounded <= high else shape[axis])
        sizes[spec.name] = tuple(shape)
    twin = import_onnx(imported.onnx_model, sizes, preset.tvm_target())
    return schedule_twins(preset, twin.mod, options.precision, fusion=options.fusion)


def _cpu_features(preset: TargetPreset) -> dict:
    """The host CPU's architecture and the Linux feature names (``/proc/cpuinfo``) the library's
    CPU code needs, so that a runtime without kiln's tables (the C API) can refuse it exactly."""
    arch, features = required_features(preset.host or preset.target)
    return {"arch": arch, "features": sorted(features)}


def build_imported(imported: ImportedModel, output: str | Path, options: CompileOptions) -> CompileReport:
    """Build an already imported model; see ``compile_model``."""
    import tvm

    preset = resolve(options.target, options.conv_layout, options.precision)
    _check_inter_op(options.inter_op, preset)
    if options.precision not in PRECISIONS:
        raise KilnError(f"precision '{options.precision}' is not supported; use one of {', '.join(PRECISIONS)}")
    if preset.conv_layout == "NCHWc" and (options.precision != "fp32" or preset.kind != "llvm"):
        raise TargetError(f"--layout NCHWc is for float32 CPU builds (here: {options.precision} on {preset.name}); "
                          "use NCHW or NHWC")
    if options.precision == "fp16" and (why := fp16_refusal(preset)):
        raise TargetError(why)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fcompile = _linker(preset)  # fail on a missing tool before the slow part
    t0 = time.perf_counter()
    extra: dict = {}
    device_compile = contextlib.nullcontext()
    if preset.device == "cuda":
        archs = parse_archs(options.cuda_archs, preset.target["arch"])
        # Generate code for the oldest requested arch, so every listed GPU can run it.
        preset = replace(preset, target=dict(preset.target, arch=archs[0]))
        enable_cuda_codegen()
        device_compile = cuda_compile_hook(archs)
        extra = {"cuda_archs": archs, "cuda_ptx": archs[-1]}
    try:
        target = preset.tvm_target()
    except Exception as err:  # TVM's own error types for a bad target
        raise TargetError(f"TVM refused target '{preset.name}': {str(err).splitlines()[0]}") from None
    twins = _symbolic_twins(imported, preset, options)
    int8 = None
    if options.precision == "int8":
        int8 = int8_plan_for(imported, preset, options.int8, options.int8_plan)
        extra["int8"] = {"method": int8.calibration.method, "samples": int8.calibration.samples,
                         "layers_int8": int8.quantized, "layers_fp32": sorted(int8.plan.keep_fp32),
                         "weight_bits": int8.plan.weight_bits, "requantize": int8.plan.requantize,
                         "weight_rounding": int8.plan.weight_rounding}
    with tvm.transform.PassContext(opt_level=3), device_compile:
        lowered = build_pipeline(preset, options.db, options.precision, int8.plan if int8 else None,
                                 fusion=options.fusion, twins=twins, inter_op=options.inter_op != "off")(imported.mod)
        schedules = kernel_schedules(lowered, preset.device)
        flops = kernel_flops(lowered) if twins is None else {}
        kernels = len(schedules)
        int8_kernels = int8_layer_kernels(lowered)
        try:
            executable = tvm.compile(lowered, target, relax_pipeline=None)
        except (RuntimeError, ValueError, TypeError) as err:  # TVM's errors (InternalError is a RuntimeError)
            reason = printable(str(err).strip().splitlines()[-1])[:300]
            hint = "; fixing the sizes (--input-shape without ? or ..) may avoid it" if twins is not None else ""
            raise BuildError(f"TVM failed to generate code: {reason}. This is a kiln or TVM bug, not a "
                             f"problem with the model: please report it with the model and the command{hint}") from err
    t1 = time.perf_counter()
    meta = LibraryMetadata(
        inputs=imported.inputs,
        outputs=imported.outputs,
        target=dict(preset.target, host=preset.host) if preset.host else dict(preset.target),
        target_name=preset.name,
        device=preset.device,
        precision=options.precision,
        kiln_version=compiler.__version__,
        tvm_version=tvm.__version__,
        source_sha256=imported.sha256,
        source_name=imported.name,
        opset=imported.opset,
        tuned_kernels=sum(v.startswith("tuned") for v in schedules.values()),
        default_kernels=sum(not v.startswith("tuned") for v in schedules.values()),
        extra=dict(extra, kernel_schedules=schedules, kernel_flops=flops, conv_layout=preset.conv_layout,
                   cpu_features=_cpu_features(preset), **_inter_op_metadata(lowered, options.inter_op),
                   **({"input_values": {k: np.asarray(v).tolist() for k, v in options.input_values.items()}}
                      if options.input_values else {})),
    )
    _export(executable, meta, output, fcompile)
    if options.inter_op == "auto" and meta.extra["inter_op"]["plan"] is not None:
        from compiler.inter_op import choose_side_by_side

        meta.extra["inter_op"]["measured"] = choice = choose_side_by_side(output).to_dict()
        meta.extra["inter_op"]["side_by_side"] = choice["side_by_side"]
        _export(executable, meta, output, fcompile)  # again, with what was measured
    t2 = time.perf_counter()
    log.info("built %s for %s: %d kernels (%d tuned)", output, preset.name, kernels, meta.tuned_kernels)
    return CompileReport(output, preset.name, imported.inputs, imported.outputs, kernels, meta.tuned_kernels,
                         0.0, t1 - t0, t2 - t1, output.stat().st_size, int8, int8_kernels=int8_kernels,
                         inter_op=meta.extra.get("inter_op"))


INTER_OP = ("off", "on", "auto")


def _check_inter_op(mode: str, preset: ResolvedTarget) -> None:
    """``InputError`` for an unknown ``--inter-op`` mode, or ``auto`` for a target this machine does not run."""
    if mode not in INTER_OP:
        raise InputError(f"--inter-op '{mode}' is not one of {', '.join(INTER_OP)}")
    if mode != "off" and preset.device != "cpu":
        raise InputError(f"--inter-op runs branches on CPU threads; target '{preset.name}' is {preset.device}")
    if mode == "auto" and not runs_on_this_machine(preset):
        raise InputError(f"--inter-op auto times the branches on this machine, so it needs --target host "
                         f"(not '{preset.name}'); use --inter-op on or off for other targets")


def _inter_op_metadata(lowered, mode: str) -> dict:
    """The metadata entry ``inter_op`` of a build with stage functions: the plan, and the regions
    to run side by side (all for ``on``; chosen later by measuring for ``auto``). Nothing for a
    build without them (``off``); no plan where no independent branches were found."""
    import json

    from compiler.passes.split_parallel_branches import PLAN_ATTR

    attrs = lowered.attrs if lowered.attrs is not None else {}
    if mode == "off":
        return {}
    if PLAN_ATTR not in attrs:
        return {"inter_op": {"mode": mode, "plan": None, "side_by_side": []}}
    plan = json.loads(str(attrs[PLAN_ATTR]))
    regions = sum(1 for stage in plan["stages"] if stage["region"] is not None)
    return {"inter_op": {"mode": mode, "plan": plan, "side_by_side": list(range(regions)) if mode == "on" else []}}


def _export(executable, meta: LibraryMetadata, output: Path, fcompile) -> None:
    """``export_library`` with kiln's metadata linked in, sealed; written beside ``output`` and
    renamed, so a failed export never leaves half a library."""
    with tempfile.TemporaryDirectory(prefix="kiln-export-") as tmp:
        meta_cc = Path(tmp) / "kiln_metadata.cc"
        meta_cc.write_text(metadata_source(meta))
        partial = output.with_name(output.name + ".partial")
        try:
            executable.export_library(str(partial), fcompile=fcompile, addons=[str(meta_cc)])
            seal_library(partial)  # a later modification of the file is detected at load
            partial.replace(output)
        finally:
            partial.unlink(missing_ok=True)


def compile_model(
    model: str | Path | onnx.ModelProto, output: str | Path, options: CompileOptions | None = None, **kwargs
) -> CompileReport:
    """Compile ``model`` (ONNX path or ModelProto) into the shared library ``output``.

    ``kwargs`` are ``CompileOptions`` fields, e.g. ``compile_model(m, "m.so", target="x86-avx2")``.
    """
    options = options or CompileOptions(**kwargs)
    if options.int8_plan is not None and options.precision != "int8":
        raise InputError(f"an INT8 plan is for precision int8, not {options.precision}")
    # Cheap checks first: an unknown target or a missing cross compiler fails before the import.
    preset = resolve(options.target)
    _linker(preset)
    options = replace(options, target=preset)
    t0 = time.perf_counter()
    imported = import_onnx(model, options.input_shapes, preset.tvm_target(), options.input_values)
    seconds_import = time.perf_counter() - t0
    if options.conv_layout is not None and options.conv_layout.lower() == "auto":
        report = _build_faster_layout(imported, output, options)
    else:
        report = build_imported(imported, output, options)
    report.seconds_import = seconds_import
    return report


def _build_faster_layout(imported: ImportedModel, output: str | Path, options: CompileOptions) -> CompileReport:
    """Build with convolutions in each of ``CONV_LAYOUTS`` (NCHW, NHWC, blocked NCHWc), time the
    builds on this machine, keep the fastest.

    The better layout depends on the model (on x86 SqueezeNet runs faster in NHWC, ShuffleNet
    slower), so it is measured, not guessed. Needs a target this machine
    runs: the libraries are timed here.
    """
    from compiler.runtime import alternating_p50_ms, load
    from targets.registry import CONV_LAYOUTS

    preset = resolve_target(options.target)
    if not runs_on_this_machine(preset):
        raise InputError(f"--layout auto times both builds on this machine, so it needs --target host "
                         f"(not '{preset.name}'); choose --layout NCHW, NHWC or NCHWc for other targets")
    reports: dict[str, CompileReport] = {}
    with tempfile.TemporaryDirectory(prefix="kiln-layout-") as tmp:
        for layout in CONV_LAYOUTS:
            reports[layout] = build_imported(imported, Path(tmp) / f"{layout}.so", replace(options, conv_layout=layout))
        libs = {layout: load(Path(tmp) / f"{layout}.so") for layout in CONV_LAYOUTS}
        medians = alternating_p50_ms(libs, libs[CONV_LAYOUTS[0]].random_inputs(seed=0), rounds=3, runs=10)
        best = min(medians, key=medians.get)
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(tmp) / f"{best}.so", output)
    report = reports[best]
    report.output = Path(output)
    report.conv_layout = best
    report.layout_p50_ms = {layout: round(ms, 3) for layout, ms in medians.items()}
    report.seconds_build = sum(r.seconds_build for r in reports.values())
    return report
