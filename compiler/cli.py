"""kiln's command line: a thin layer over the Python API.

Every user error (``KilnError``) prints one line on stderr and exits with code 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from schedules.tune import SPACES
from targets.errors import InputError, KilnError

log = logging.getLogger("kiln")


def _cmd_compile(args: argparse.Namespace) -> int:
    from compiler.build import CompileOptions, compile_model
    from compiler.control_flow import parse_input_values
    from compiler.frontend import parse_input_shapes

    precision = _precision(args)
    options = CompileOptions(target=args.target, input_shapes=parse_input_shapes(args.input_shape),
                             input_values=parse_input_values(args.input_value), db=args.db, precision=precision,
                             cuda_archs=args.cuda_arch, conv_layout=args.layout,
                             int8=_int8_options(args) if precision == "int8" and not args.int8_plan else None,
                             int8_plan=args.int8_plan, inter_op=args.inter_op)
    report = compile_model(args.model, args.output, options)
    if report.conv_layout is not None:
        timed = ", ".join(f"{layout} {ms:.2f} ms" for layout, ms in report.layout_p50_ms.items())
        print(f"layout auto: {timed} -> kept {report.conv_layout}")
    if report.int8 is not None:
        c = report.int8.calibration
        fp32 = sorted(report.int8.plan.keep_fp32)
        print(f"int8: {report.int8.quantized}/{len(report.int8.layers)} layers quantized "
              f"({c.method} calibration over {c.samples} samples, {c.seconds:.1f} s)"
              + (f"; kept in FP32: {', '.join(fp32)}" if fp32 else ""))
    if args.inter_op != "off":
        from compiler.inter_op import describe_inter_op

        print("\n".join(describe_inter_op(report.inter_op)))
    if report.int8 is None and report.int8_kernels:
        print(f"pre-quantized model: {report.int8_kernels} conv/matmul kernels compute on int8 data "
              "(QDQ lowered to int8 with int32 accumulation)")
    print(f"wrote {report.output} ({report.size_bytes / 1e6:.1f} MB) for target '{report.target}': "
          f"{report.kernels} kernels ({report.tuned_kernels} from tuning records), "
          f"compiled in {report.seconds_total:.1f} s")
    for spec in report.inputs:
        print(f"  input  {spec.describe()}")
    for spec in report.outputs:
        print(f"  output {spec.describe()}")
    return 0


def _precision(args: argparse.Namespace) -> str:
    """--precision, where --int8-plan implies int8; --calibration and --int8-plan need int8."""
    precision = args.precision or ("int8" if args.int8_plan else "fp32")
    if args.int8_plan and precision != "int8":
        raise InputError(f"--int8-plan is for --precision int8, not {precision}")
    if args.int8_plan and args.calibration:
        raise InputError("pass either --int8-plan or --calibration: the plan already holds the calibration")
    if args.calibration and precision != "int8":
        raise InputError("--calibration is for --precision int8")
    return precision


def _int8_options(args: argparse.Namespace):
    from compiler.quantization import Int8Options

    if not args.calibration:
        raise InputError("--precision int8 needs --calibration DATA (.npz keyed by input name, .npy, or a "
                         "directory of them; e.g. 100 representative inputs)")
    keep = tuple(n.strip() for n in (args.keep_fp32 or "").split(",") if n.strip())
    return Int8Options(calibration=args.calibration, method=args.calibration_method, percentile=args.percentile,
                       samples=args.calibration_samples, keep_fp32=keep, auto_keep=args.auto_keep_fp32,
                       min_agreement=args.min_agreement, sensitivity=args.sensitivity,
                       evaluate=_load_function(args.evaluate) if args.evaluate else None,
                       max_accuracy_drop=args.max_accuracy_drop, per_channel_depthwise=args.per_channel_depthwise,
                       bias_correction=args.bias_correction, requantize=args.requantize.replace("-", "_"),
                       weight_rounding=args.weight_rounding)


def _load_function(spec: str):
    """``FILE.py:NAME`` -> the function ``NAME`` defined in that file (for ``--evaluate``)."""
    import importlib.util

    path, _, name = spec.rpartition(":")
    if not path or not name:
        raise InputError(f"--evaluate {spec}: expected FILE.py:FUNCTION")
    if not Path(path).is_file():
        raise InputError(f"--evaluate {spec}: no such file {path}")
    module_spec = importlib.util.spec_from_file_location(f"kiln_evaluate_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    function = getattr(module, name, None)
    if not callable(function):
        raise InputError(f"--evaluate {spec}: {path} defines no function '{name}'")
    return function


def _calibrate_from_args(args: argparse.Namespace, layout: str | None = None, input_values: list | None = None):
    """``kiln quantize``/``quantize-report``: (preset, imported model, int8 options, ``Int8Result``)."""
    from compiler.build import int8_plan_for
    from compiler.control_flow import parse_input_values
    from compiler.frontend import import_onnx, parse_input_shapes
    from schedules.resolved_target import resolve

    preset = resolve(args.target, layout, "int8")
    imported = import_onnx(args.model, parse_input_shapes(args.input_shape), preset.tvm_target(),
                           parse_input_values(input_values))
    options = _int8_options(args)
    return preset, imported, options, int8_plan_for(imported, preset, options, None)


def _cmd_quantize_report(args: argparse.Namespace) -> int:
    from compiler.quantization import describe_layers

    preset, _, _, result = _calibrate_from_args(args)
    print(describe_layers(result))
    if args.json:
        from dataclasses import asdict

        payload = {"model": str(args.model), "target": preset.name, "method": result.calibration.method,
                   "samples": result.calibration.samples, "weight_bits": result.plan.weight_bits,
                   "layers": [asdict(layer) for layer in result.layers]}
        Path(args.json).write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.json}")
    return 0


def _cmd_quantize(args: argparse.Namespace) -> int:
    from compiler.build import model_input_shapes
    from compiler.quantization import describe_layers
    from compiler.quantization.plan_file import save_plan

    preset, imported, options, result = _calibrate_from_args(args, args.layout, args.input_value)
    print(describe_layers(result))
    save_plan(result, args.output, imported.sha256, model_input_shapes(imported), preset.name, options)
    print(f"wrote {args.output}: use it with kiln compile {args.model} --int8-plan {args.output} (and kiln tune "
          "with the same plan)")
    return 0


def _add_int8_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calibration", metavar="DATA", help="int8: calibration inputs (.npz by input name, .npy, or a dir)")
    p.add_argument("--calibration-method", default="percentile", choices=["minmax", "percentile", "entropy", "mse"],
                   help="int8: how activation ranges are chosen (default percentile; entropy is TensorRT's KL "
                        "method; mse the least squared quantization error)")
    p.add_argument("--percentile", type=float, default=99.99, help="int8 with --calibration-method percentile")
    p.add_argument("--calibration-samples", type=int, default=100, help="int8: use at most N calibration samples")
    p.add_argument("--keep-fp32", metavar="NODE,...",
                   help="int8: layers kept in FP32: ONNX node names, first, last, or depthwise (every depthwise conv)")
    p.add_argument("--auto-keep-fp32", type=int, default=0, metavar="N",
                   help="int8: also keep the N most sensitive layers in FP32")
    p.add_argument("--min-agreement", type=float, metavar="PCT",
                   help="int8: keep the fewest most sensitive layers in FP32 for which the INT8 top-1 agrees "
                        "with FP32 on PCT%% of the calibration samples")
    p.add_argument("--evaluate", metavar="FILE.py:FUNC",
                   help="int8: FUNC(run) returns the model's accuracy (%%) on your labelled validation data, "
                        "run(inputs) -> first output; keep the most sensitive layers in FP32 until INT8 is within "
                        "--max-accuracy-drop of FP32")
    p.add_argument("--max-accuracy-drop", type=float, default=0.5, metavar="PTS",
                   help="int8 with --evaluate: accuracy points INT8 may lose against FP32 (default 0.5)")
    p.add_argument("--per-channel-depthwise", action="store_true",
                   help="int8: depthwise convs quantize their input per channel (each channel its own scale and "
                        "zero point; exact with int32 accumulation)")
    p.add_argument("--bias-correction", action="store_true",
                   help="int8: subtract from each layer's bias the output shift its weight rounding causes on the "
                        "calibration data's mean input (sum((w_q - w) * mean))")
    p.add_argument("--weight-rounding", default="gptq", choices=["gptq", "nearest"],
                   help="int8: round weights by GPTQ (default: in an order and direction that keep each layer's "
                        "output on the calibration data), or each to its nearest step (faster to compile)")
    p.add_argument("--requantize", default="float", choices=["float", "fixed-point"],
                   help="int8: return each int32 accumulator to 8 bits by a float scale (default: faster on x86, "
                        "as ONNX Runtime) or an integer multiplier and shift")
    p.add_argument("--sensitivity", default="measured", choices=["measured", "estimated"],
                   help="int8: rank layers for --auto-keep-fp32/--min-agreement by the output error each one "
                        "causes, measured on one probe build (default), or by the error estimate (no build)")


def _load_inputs(args: argparse.Namespace, model) -> dict[str, np.ndarray]:
    if not args.inputs:
        return model.random_inputs(seed=0, fill=args.fill)
    from compiler.array_files import read_npz

    return read_npz(args.inputs, "--inputs")


def _print_top(outputs: dict[str, np.ndarray], n: int) -> None:
    for name, value in outputs.items():
        flat = value.reshape(-1)
        top = np.argsort(flat)[::-1][:n]
        print(f"{name}: top-{n} " + ", ".join(f"{int(i)}={float(flat[i]):.5f}" for i in top))


def _cmd_run(args: argparse.Namespace) -> int:
    from compiler.runtime import check_streams, load

    check_streams(args.streams, args.threads)
    model = load(args.library, threads=args.threads)
    inputs = _load_inputs(args, model)
    outputs = model.run(inputs)
    print(f"ran {args.library} on {model.metadata.device} with {model.threads} threads")
    for name, value in outputs.items():
        print(f"  output {name}: {value.dtype}[{'x'.join(map(str, value.shape))}]")
    if args.print_top:
        _print_top(outputs, args.print_top)
    if args.output:
        np.savez(args.output, **outputs)
        print(f"wrote outputs to {args.output}")
    if args.bench and args.streams > 1:
        _bench_streams(args, inputs, outputs)
    elif args.bench:
        stats = model.benchmark(args.bench, inputs)
        print(f"kiln         {stats.describe()}")
    if args.reference:
        return _compare_reference(args, model, inputs, outputs, stats if args.bench and args.streams == 1 else None)
    return 0


def _bench_streams(args: argparse.Namespace, inputs, single: dict[str, np.ndarray]) -> None:
    """Throughput and latency with 1..--streams streams sharing the threads; each configuration's
    outputs against the single-stream run's."""
    import time

    from compiler.runtime import PAUSE_S, check_streams, load, measure_throughput

    total = check_streams(args.streams, args.threads)
    for streams in range(1, args.streams + 1):
        time.sleep(PAUSE_S)
        model = load(args.library, threads=total, streams=streams)
        try:
            same = all(np.array_equal(value, single[name]) for name, value in model.run(inputs).items())
            stats = measure_throughput(model, inputs, args.bench)
        finally:
            if streams > 1:
                model.close()
        print(f"kiln  {stats.describe()}  outputs {'identical' if same else 'DIFFERENT'} to 1 stream")


def _compare_reference(args, model, inputs, outputs, stats) -> int:
    """Print the agreement with ONNX Runtime; 1 when the outputs disagree in kind (NaN, shape, names)."""
    from compiler.frontend import read_model
    from compiler.reference import OnnxRuntimeReference, compare_outputs

    proto, data, _ = read_model(args.reference)
    from targets.library_format import sha256_bytes

    if sha256_bytes(data) != model.metadata.source_sha256:
        print(f"note: {args.reference} is not the file this library was compiled from (sha256 differs)")
    ref = OnnxRuntimeReference(proto, model.threads, model.metadata.extra.get("input_values"))
    comparison = compare_outputs(outputs, ref.run(inputs))
    for problem in comparison.problems:
        print(f"onnxruntime MISMATCH: {problem}")
    if comparison.ok:
        print(f"onnxruntime agreement: max abs diff {comparison.max_abs:.3g} "
              f"({comparison.max_rel:.3g} of output scale)")
    if stats is not None:
        import time

        from compiler.runtime import PAUSE_S

        time.sleep(PAUSE_S)  # TVM's pool still spins after kiln's runs and would slow ONNX Runtime's
        ref_stats = ref.benchmark(inputs, args.bench)
        print(f"onnxruntime  {ref_stats.describe()}")
        print(f"kiln / onnxruntime latency (p50): {stats.p50_ms / ref_stats.p50_ms:.2f}x "
              f"(same process, {model.threads} threads)")
    return 0 if comparison.ok else 1


def _cmd_profile(args: argparse.Namespace) -> int:
    from compiler.frontend import read_model
    from compiler.profile import format_profile, profile_library
    from compiler.runtime import load

    model = load(args.library, threads=args.threads)
    if model.metadata.device != "cpu":
        raise KilnError(f"kiln profile times CPU libraries; {args.library} targets {model.metadata.device}")
    if args.repeat < 1 or args.runs < 1 or args.rounds < 1:
        raise InputError("--repeat, --runs and --rounds must be at least 1")
    if args.reference:
        read_model(args.reference)  # a clear error for a missing or malformed file, before the slow part
    profile = profile_library(model, _load_inputs(args, model), repeat=args.repeat, runs=args.runs,
                              reference=args.reference, rounds=args.rounds)
    print(format_profile(profile, top=args.top))
    if args.json:
        Path(args.json).write_text(json.dumps(profile.to_json(), indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from compiler.control_flow import parse_input_values
    from compiler.frontend import parse_input_shapes
    from compiler.tune import TuneOptions, tune_model
    from schedules.tune import parse_budget

    precision = _precision(args)
    options = TuneOptions(
        target=args.target, trials=args.trials,
        budget_seconds=parse_budget(args.budget) if args.budget else None, per_task=args.per_task,
        trials_per_iter=args.trials_per_iter, threads=args.threads,
        input_shapes=parse_input_shapes(args.input_shape), input_values=parse_input_values(args.input_value),
        rpc_tracker=args.rpc_tracker, rpc_key=args.rpc_key, rpc_trust=tuple(args.rpc_trust or ()),
        progress=not args.no_progress, population=args.population, space=args.space, conv_layout=args.layout,
        precision=precision, int8=_int8_options(args) if precision == "int8" and not args.int8_plan else None,
        int8_plan=args.int8_plan, network_check=not args.no_network_check,
    )
    report = tune_model(args.model, args.db, options)
    print(f"tuned {args.model} for '{report.target}' with {report.threads} threads into {report.db}: "
          f"{report.trials_run} trials this run ({report.trials_before} before), {report.seconds:.0f} s, "
          f"stopped by {report.stopped_by}")
    print(f"{'task':48s} {'weight':>6s} {'trials':>6s} {'best (us)':>10s}")
    for t in report.tasks:
        best = f"{t.best_ms * 1e3:10.1f}" if t.best_ms is not None else f"{'-':>10s}"
        print(f"{t.name[:48]:48s} {t.weight:6.0f} {t.trials:6d} {best}  {t.note}")
    if report.estimated_ms is not None:
        print(f"estimated end-to-end kernel time: {report.estimated_ms:.3f} ms (each kernel alone, as the search timed it)")
    if report.network is not None:
        from compiler.network_check import format_network_check

        print(format_network_check(report.network))
    if args.int8_plan:
        int8 = f" --int8-plan {args.int8_plan}"
    elif precision == "int8":
        int8 = f" --precision int8 --calibration {args.calibration} (and the same int8 options; or save them once: kiln quantize -o model.kq)"
    else:
        int8 = ""
    same = (f" --layout {args.layout}" if args.layout else "") + int8
    print(f"use it: kiln compile {args.model} --target {args.target} --db {args.db}{same} -o OUT.so")
    return 0


def _cmd_tune_report(args: argparse.Namespace) -> int:
    from schedules.report import tune_report

    summary = tune_report(args.db, args.output)
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from compiler.frontend import parse_input_shapes
    from compiler.inspect import inspect_passes, inspect_path

    if args.passes:
        info = inspect_passes(args.path, args.target, parse_input_shapes(args.input_shape))
        if not args.json:
            print(f"{'pass':32s} {'bindings':>8s} {'kernels':>7s} {'launches':>8s}  why")
            for p in info["passes"]:
                print(f"{p['pass']:32s} {p['bindings']:8d} {p['kernels']:7d} {p['launches']:8d}  {p['why']}")
            print(f"kernels: TVM stock fusion {info['kernels_stock']}, kiln {info['kernels_kiln']}; "
                  f"launches per inference: stock {info['launches_stock']}, kiln {info['launches_kiln']}")
            print("fused kernels: " + ", ".join(info["fused_kernels"]))
            return 0
        print(json.dumps(info, indent=2))
        return 0
    info = inspect_path(args.path)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            if isinstance(value, list):
                print(f"{key}:")
                for item in value:
                    print(f"  {item}")
            else:
                print(f"{key}: {value}")
    return 0


def _cmd_targets(args: argparse.Namespace) -> int:
    from targets.registry import list_presets

    presets = list_presets()
    if args.json:
        print(json.dumps([p.to_json() for p in presets], indent=2))
        return 0
    for p in presets:
        extra = f"  (cross: {p.cross_compiler})" if p.cross_compiler else ""
        layouts = p.conv_layout + (f"/int8 {p.int8_conv_layout}" if p.int8_conv_layout else "")
        print(f"{p.name:14s} {p.device:5s} {layouts:15s} {p.description}{extra}")
    print('\nor a TVM target JSON object, e.g. --target \'{"kind": "llvm", "mcpu": "znver3"}\'')
    return 0


def _cmd_example(args: argparse.Namespace) -> int:
    from compiler.examples import EXAMPLES, example_model

    if not args.name:
        for e in EXAMPLES.values():
            print(f"{e.name:14s} {e.description}")
        return 0
    import onnx

    out = Path(args.output or f"{args.name}.onnx")
    onnx.save(example_model(args.name, seed=args.seed), out)
    print(f"wrote {out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """The main job on a built-in model: compile for this machine, run, compare with ONNX Runtime."""
    import onnx

    from compiler.build import compile_model
    from compiler.examples import example_model

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    model_path, lib_path = workdir / f"{args.name}.onnx", workdir / f"{args.name}.so"
    onnx.save(example_model(args.name), model_path)
    print(f"1. wrote the example model {model_path}")
    report = compile_model(model_path, lib_path, target="host")
    print(f"2. compiled it for this machine into {lib_path} in {report.seconds_total:.1f} s ({report.kernels} kernels)")
    print("3. running it next to ONNX Runtime:")
    run_args = argparse.Namespace(library=str(lib_path), threads=args.threads, inputs=None, fill="random",
                                  print_top=5, output=None, bench=args.bench, streams=1, reference=str(model_path))
    return _cmd_run(run_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiln", description="Compile ONNX models into deployable libraries with TVM.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compile", help="compile an ONNX model into one shared library")
    p.add_argument("model", help="ONNX file")
    p.add_argument("-o", "--output", required=True, help="the .so to write")
    p.add_argument("--target", default="host", help="preset name (see `kiln targets`) or TVM target JSON")
    p.add_argument("--input-shape", action="append", metavar="NAME:1x3x224x224", help="fix an input's shape")
    p.add_argument("--input-value", action="append", metavar="NAME=VALUE",
                   help="fix an input to a value at compile time (e.g. sr=16000); If nodes it decides fold")
    p.add_argument("--db", help="tuning database directory whose records to apply")
    p.add_argument("--layout", choices=["NCHW", "NHWC", "NCHWc", "auto"],
                   help="activation layout of convolutions (default: the target's, see kiln targets; int8 on "
                        "x86: NHWC; NCHWc: channel blocks of the vector width, float32 CPU; auto: build all three, "
                        "time them here, keep the fastest)")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"],
                   help="fp32 (default); fp16: float16 compute with float32 accumulation (CUDA, ARM64 +fullfp16); "
                        "int8: post-training quantization from --calibration data or --int8-plan")
    p.add_argument("--int8-plan", metavar="MODEL.kq", help="int8 from a plan saved by kiln quantize (no calibration)")
    p.add_argument("--cuda-arch", help="CUDA archs to embed SASS for, e.g. sm_80,sm_90 (PTX for the newest)")
    p.add_argument("--inter-op", choices=["off", "on", "auto"], default="off",
                   help="run independent branches side by side on split CPU threads (Python runtime): off (default), "
                        "on (every region), auto (time each region here, keep those faster; needs --target host)")
    _add_int8_arguments(p)
    p.set_defaults(func=_cmd_compile)

    p = sub.add_parser("quantize", help="calibrate a model for int8 and save the plan (for compile and tune)")
    p.add_argument("model", help="ONNX file")
    p.add_argument("-o", "--output", required=True, metavar="MODEL.kq", help="the plan file to write")
    p.add_argument("--target", default="host", help="the target the plan is for (its int8 weight width)")
    p.add_argument("--layout", choices=["NCHW", "NHWC"], help="as for compile (default: the target's int8 layout)")
    p.add_argument("--input-shape", action="append", metavar="NAME:1x3x224x224")
    p.add_argument("--input-value", action="append", metavar="NAME=VALUE", help="as for compile")
    _add_int8_arguments(p)
    p.set_defaults(func=_cmd_quantize)

    p = sub.add_parser("quantize-report", help="calibrate a model and list per-layer int8 scales and errors")
    p.add_argument("model", help="ONNX file")
    p.add_argument("--target", default="host")
    p.add_argument("--input-shape", action="append", metavar="NAME:1x3x224x224")
    p.add_argument("--json", metavar="OUT.json", help="also write the table as JSON")
    _add_int8_arguments(p)
    p.set_defaults(func=_cmd_quantize_report)

    p = sub.add_parser("tune", help="search kernel schedules with MetaSchedule into a tuning database")
    p.add_argument("model", help="ONNX file")
    p.add_argument("--db", required=True, help="tuning database directory (created; resumed when it exists)")
    p.add_argument("--target", default="host")
    p.add_argument("--trials", type=int, help="total trials for this model, counting those already in --db")
    p.add_argument("--budget", help="wall-clock budget, e.g. 30m or 8h (ends cleanly on time)")
    p.add_argument("--per-task", type=int, help="at most N trials per kernel")
    p.add_argument("--trials-per-iter", type=int, default=16, help="candidates measured per batch")
    p.add_argument("--threads", type=int, help="threads to measure with (default: this machine's cores)")
    p.add_argument("--layout", choices=["NCHW", "NHWC", "NCHWc"],
                   help="activation layout of float convolutions; compile with the same --layout to use the records")
    p.add_argument("--input-shape", action="append", metavar="NAME:1x3x224x224")
    p.add_argument("--input-value", action="append", metavar="NAME=VALUE", help="as for compile")
    p.add_argument("--rpc-tracker", metavar="HOST:PORT", help="measure on RPC servers registered with this tracker")
    p.add_argument("--rpc-key", help="device key of those RPC servers")
    p.add_argument("--rpc-trust", action="append", metavar="ADDRESS",
                   help="a private tracker address on a network you control: no warning (TVM RPC is unauthenticated)")
    p.add_argument("--population", type=int, default=512, help="evolutionary search population (smaller: faster batches)")
    p.add_argument("--space", choices=SPACES, default="kiln",
                   help="kiln: search kiln's default rules with their decisions open where a kernel's rule allows it "
                        "(MetaSchedule's space for the others); generic: MetaSchedule's space for every kernel")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    p.add_argument("--no-network-check", action="store_true",
                   help="skip the check that builds the model with and without the records and keeps only the "
                        "records whose kernels are faster inside the whole network (host targets)")
    p.add_argument("--precision", choices=["fp32", "int8"],
                   help="fp32 (default); int8: tune the quantized model's kernels (calibrated from --calibration, "
                        "or --int8-plan); compile with the same int8 plan or options to use the records")
    p.add_argument("--int8-plan", metavar="MODEL.kq", help="int8 from a plan saved by kiln quantize (no calibration)")
    _add_int8_arguments(p)
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser("tune-report", help="summarise a tuning database: JSON and a latency curve")
    p.add_argument("db")
    p.add_argument("-o", "--output", default=None, help="PNG to write (default: DB/curve.png)")
    p.set_defaults(func=_cmd_tune_report)

    p = sub.add_parser("run", help="run a compiled library")
    p.add_argument("library")
    p.add_argument("--inputs", help=".npz keyed by input name")
    p.add_argument("--fill", choices=["random", "zeros"], default="random", help="inputs when --inputs is not given")
    p.add_argument("-o", "--output", help=".npz to write the outputs to")
    p.add_argument("--print-top", type=int, metavar="N", help="print the N largest values of each output")
    p.add_argument("--bench", type=int, metavar="N", help="time N runs and print p50/p90/p99")
    p.add_argument("--streams", type=int, default=1, metavar="N",
                   help="with --bench: throughput and latency with 1..N streams serving requests at once, the "
                        "threads split between them (N <= threads)")
    p.add_argument("--reference", metavar="MODEL.onnx", help="compare with ONNX Runtime on the same inputs")
    p.add_argument("--threads", type=int, help="CPU threads (default: this machine's cores)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("profile", help="time every kernel of a library on this machine (beside ONNX Runtime's nodes)")
    p.add_argument("library")
    p.add_argument("--inputs", help=".npz keyed by input name (default: seeded random inputs)")
    p.add_argument("--threads", type=int, help="CPU threads (default: this machine's cores)")
    p.add_argument("--repeat", type=int, default=5, help="timings per kernel call; the median is kept")
    p.add_argument("--runs", type=int, default=30,
                   help="end-to-end runs per round; also the runs timing kernels in sequence, and ONNX Runtime's")
    p.add_argument("--rounds", type=int, default=3, help="rounds of end-to-end and per-kernel timing; medians kept")
    p.add_argument("--reference", metavar="MODEL.onnx", help="profile ONNX Runtime on the same model and inputs")
    p.add_argument("--top", type=int, default=25, metavar="N", help="kernels to list (the rest are summed)")
    p.add_argument("--json", metavar="FILE", help="also write the whole profile as JSON")
    p.set_defaults(func=_cmd_profile, fill="random")

    p = sub.add_parser("inspect", help="show what a library or ONNX model holds")
    p.add_argument("path")
    p.add_argument("--json", action="store_true")
    p.add_argument("--passes", action="store_true", help="ONNX model: bindings and kernels after each pass")
    p.add_argument("--target", default="host", help="with --passes: the target whose pipeline to run")
    p.add_argument("--input-shape", action="append", metavar="NAME:1x3x224x224")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("targets", help="list target presets")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_targets)

    p = sub.add_parser("example", help="write a built-in example model (no name: list them)")
    p.add_argument("name", nargs="?")
    p.add_argument("-o", "--output", help="where to write the .onnx (default NAME.onnx)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_example)

    p = sub.add_parser("demo", help="compile a built-in model for this machine and compare it with ONNX Runtime")
    p.add_argument("name", nargs="?", default="squeezenet")
    p.add_argument("--workdir", default="kiln-demo")
    p.add_argument("--bench", type=int, default=20)
    p.add_argument("--threads", type=int)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except KilnError as err:
        if args.debug:
            raise
        print(f"kiln: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kiln: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
