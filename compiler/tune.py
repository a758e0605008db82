"""``kiln tune`` for a model: import the ONNX file, run the passes a build runs, then search
schedules for the resulting kernels (``schedules.tune.tune_module``).

Expects an ONNX model (path or ModelProto) and a tuning directory; guarantees the kernels
tuned are the kernels ``kiln compile`` with the same target, shapes, precision, INT8 options
and layout builds, so the records apply to that build.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from schedules.tune import SearchOptions, TuneReport, check_rpc_options, tune_module
from targets.errors import InputError, TargetError


@dataclass
class TuneOptions(SearchOptions):
    """What to tune for (target, threads, shapes, precision, layout), and how long (``SearchOptions``)."""

    target: str = "host"
    threads: int | None = None
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    input_values: dict[str, object] = field(default_factory=dict)  # inputs fixed at compile time
    precision: str = "fp32"
    # precision "int8": calibration and layer choices, as for compile (compile with the same data
    # and options to use the records: the kernels' quantization constants are part of their workload)
    int8: object = None  # compiler.quantization.Int8Options
    int8_plan: str | Path | None = None  # or a saved plan (kiln quantize -o model.kq): compile with the same
    conv_layout: str | None = None  # as CompileOptions.conv_layout: compile with the same to use the records
    # After the search, build the model with and without the records and keep only the records whose
    # kernels are faster inside the network (compiler.network_check); host targets, not over RPC.
    network_check: bool = True


def tune_model(model, db: str | Path, options: TuneOptions | None = None) -> TuneReport:
    """Tune ``model`` (ONNX path or ModelProto) for ``options.target`` into the database ``db``."""
    import tvm

    from compiler.frontend import import_onnx
    from compiler.pipeline import int8_weight_bits, tuning_input_pipeline
    from schedules.intrinsics import import_tensor_intrinsics
    from schedules.resolved_target import resolve
    from targets.registry import default_threads, fp16_refusal, runs_on_this_machine

    options = options or TuneOptions()
    check_rpc_options(options)  # before the slow import
    if options.int8_plan is not None and options.precision != "int8":
        raise InputError(f"an INT8 plan is for precision int8, not {options.precision}")
    if options.conv_layout is not None and options.conv_layout.lower() == "auto":
        raise InputError("tuning needs one layout: pass --layout NCHW or NHWC (compile with the same)")
    preset = resolve(options.target, options.conv_layout, options.precision)
    if options.precision == "fp16" and (why := fp16_refusal(preset)):
        raise TargetError(why)
    threads = options.threads or default_threads()
    import_tensor_intrinsics()  # ~11 s instead of ~100 s (see schedules/intrinsics.py)
    imported = import_onnx(model, options.input_shapes, preset.tvm_target(), options.input_values)
    plan = None
    if options.precision == "int8":
        from compiler.build import int8_plan_for

        plan = int8_plan_for(imported, preset, options.int8, options.int8_plan).plan
    with tvm.transform.PassContext(opt_level=3):
        mod = tuning_input_pipeline(preset, options.precision, plan)(imported.mod)
    report = tune_module(mod, db, preset, threads, int8_weight_bits(preset, plan), options)
    if options.network_check and runs_on_this_machine(preset) and not options.rpc_tracker:
        from compiler.build import CompileOptions
        from compiler.network_check import check_in_network

        compile_options = CompileOptions(
            target=options.target, input_shapes=options.input_shapes, input_values=options.input_values,
            precision=options.precision, int8=options.int8, int8_plan=options.int8_plan,
            conv_layout=options.conv_layout)
        report.network = check_in_network(model, db, compile_options, mod, preset, threads)
    return report

