#!/usr/bin/env python3
"""CUDA check on a GPU machine: build (or take prebuilt) kiln libraries, run, compare, benchmark.

For each (model, precision): load the CUDA library, run it on a seeded input, compare
with ONNX Runtime on the same input (CUDAExecutionProvider when onnxruntime-gpu is
installed, else CPU), and time both. Writes one JSON file.

    python scripts/gpu_check.py --arch sm_90 --out gpu_check.json            # compiles here (needs full TVM)
    python scripts/gpu_check.py --prebuilt gpu_bundle/libs --out gpu.json     # libraries built elsewhere

Use ``scripts/gpu_check.sh`` for the one-shot flow.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from compiler.benchmark import describe_machine, onnxruntime_reference, time_calls, write_result
from compiler.examples import example_model
from compiler.runtime import load

CASES = [("resnet50", "fp32"), ("resnet50", "fp16"), ("squeezenet", "fp32"), ("squeezenet", "fp16"),
         ("squeezenet", "int8")]
# INT8 cases calibrate on seeded random inputs and use 7-bit weights, so the x86 (AVX2) build of the
# same plan is an exact reference: both accumulate in int32, only the float requantize may round apart.
INT8_CALIBRATION_SAMPLES = 8
INT8_WEIGHT_BITS = 7
# "int8": the target's activation type (int8 on sm_72+, for the tensor cores); "int8u": uint8
# activations (scalar int32 loops), the A/B for the tensor-core path.
INT8_VARIANTS = {"int8": None, "int8u": False}


def lib_name(model: str, precision: str, arch: str) -> str:
    return f"{model}-{precision}-{arch}.so"


def int8_options(signed_activations: bool | None = None):
    from compiler.quantization import Int8Options

    rng = np.random.default_rng(1)
    samples = [rng.standard_normal((1, 3, 224, 224)).astype(np.float32) for _ in range(INT8_CALIBRATION_SAMPLES)]
    return Int8Options(calibration=samples, samples=INT8_CALIBRATION_SAMPLES, weight_bits=INT8_WEIGHT_BITS,
                       signed_activations=signed_activations)


def expected_path(lib: Path) -> Path:
    return lib.with_suffix(".expected.npy")


def build(cases: list[tuple[str, str]], arch: str, outdir: Path) -> dict[str, float]:
    """Compile each case for CUDA ``arch``; returns compile seconds per library.

    For an INT8 case also builds the same plan for this CPU and stores its output on the check's
    input next to the library (``*.expected.npy``)."""
    from compiler.build import compile_model

    outdir.mkdir(parents=True, exist_ok=True)
    seconds = {}
    cpu_outputs: dict[str, np.ndarray] = {}  # per model: int8 and int8u share one plan, so one reference
    for model, precision in cases:
        name = lib_name(model, precision, arch)
        int8 = int8_options(INT8_VARIANTS[precision]) if precision in INT8_VARIANTS else None
        t0 = time.perf_counter()
        compile_model(example_model(model), outdir / name, target=f"cuda-{arch.replace('_', '')}",
                      precision="int8" if int8 else precision, cuda_archs=arch, int8=int8)
        seconds[name] = round(time.perf_counter() - t0, 1)
        print(f"built {name} in {seconds[name]} s", file=sys.stderr)
        if int8 is not None:
            if model not in cpu_outputs:
                cpu_lib = outdir / "cpu-reference.so"
                compile_model(example_model(model), cpu_lib, target="host", precision="int8", int8=int8_options())
                cpu = load(cpu_lib)
                cpu_outputs[model] = next(iter(cpu.run(cpu.random_inputs(seed=0)).values()))
                cpu_lib.unlink()
            np.save(expected_path(outdir / name), cpu_outputs[model])
    return seconds


def check(lib: Path, model_name: str, precision: str, runs: int) -> dict:
    model = example_model(model_name)
    m = load(lib)
    inputs = m.random_inputs(seed=0)
    ours = m.run(inputs)
    ref = onnxruntime_reference(model, os.cpu_count() or 1, providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    expected = ref.session.run(None, inputs)[0]
    got = next(iter(ours.values())).reshape(expected.shape)
    diff = float(np.max(np.abs(got.astype(np.float64) - expected)))
    scale = float(np.max(np.abs(expected)))
    top1 = bool(np.argmax(got) == np.argmax(expected))
    top5 = len(set(np.argsort(got.ravel())[-5:]) & set(np.argsort(expected.ravel())[-5:]))
    rms_rel = float(np.sqrt(np.mean((got.astype(np.float64) - expected) ** 2)) / np.sqrt(np.mean(expected ** 2.0)))
    same_plan = {}
    if expected_path(lib).is_file():  # INT8: the x86 build of the same quantization plan
        cpu = np.load(expected_path(lib)).reshape(expected.shape)
        same_plan = {"max_abs_diff_vs_cpu_int8": float(np.max(np.abs(got.astype(np.float64) - cpu))),
                     "max_abs_cpu_int8": float(np.max(np.abs(cpu)))}
    stats = m.benchmark(runs, inputs, warmup=10)
    ref_p50 = time_calls(ref.timed_call(inputs), runs, warmup=5).p50_ms
    torch_row: dict = {}
    try:  # fp16 PyTorch is the float baseline for the fp16 and int8 libraries
        torch_row = torch_reference(model, inputs, half=precision != "fp32", runs=runs)
        torch_out = torch_row.pop("torch_output").reshape(expected.shape)
        torch_row["torch_max_rel_diff_vs_ort"] = float(np.max(np.abs(torch_out - expected)) / scale)
        torch_row["ratio_vs_torch"] = round(stats.p50_ms / torch_row["torch_p50_ms"], 3)
    except Exception as err:  # reported in the row; the kiln/ORT check above stands on its own
        torch_row = {"torch_error": f"{type(err).__name__}: {err}"}
    return {
        "library": lib.name, "model": model_name, "precision": precision,
        "cuda_archs": m.metadata.extra.get("cuda_archs"),
        "max_abs_diff": diff, "max_rel_diff": diff / scale if scale else diff, "rms_rel_diff": rms_rel,
        **same_plan,
        "top1_agrees": top1, "top5_overlap": top5,
        "kiln_p50_ms": round(stats.p50_ms, 3), "kiln_p99_ms": round(stats.p99_ms, 3),
        "onnxruntime_provider": ref.session.get_providers()[0], "onnxruntime_p50_ms": round(ref_p50, 3),
        "ratio": round(stats.p50_ms / ref_p50, 3), **torch_row,
    }


def torch_reference(model, inputs: dict, half: bool, runs: int) -> dict:
    """PyTorch on the same GPU (the model through ``onnx2torch``, cuDNN autotuning on): the
    GPU-side reference where onnxruntime-gpu is not installed. fp32, or fp16 when ``half``."""
    import onnx.version_converter
    import torch
    from onnx2torch import convert

    if not torch.cuda.is_available():
        raise RuntimeError("PyTorch sees no CUDA device")
    torch.backends.cudnn.benchmark = True
    dtype = torch.float16 if half else torch.float32
    net = convert(onnx.version_converter.convert_version(model, 13)).eval().to("cuda", dtype)
    args = [torch.from_numpy(v).to("cuda", dtype) for v in inputs.values()]
    with torch.inference_mode():
        out = net(*args)
        stats = time_calls(lambda: (net(*args), torch.cuda.synchronize()), runs, warmup=10)
    got = (out[0] if isinstance(out, (list, tuple)) else out).float().cpu().numpy()
    return {"torch_version": torch.__version__, "torch_precision": "fp16" if half else "fp32",
            "torch_p50_ms": round(stats.p50_ms, 3), "torch_output": got}


def gpu_name() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError) as err:
        return f"unknown ({err})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--prebuilt", help="directory of libraries built by `--build-only`")
    parser.add_argument("--build-only", metavar="DIR", help="only compile the libraries into DIR (no GPU needed)")
    parser.add_argument("--cases", nargs="+", default=[f"{m}:{p}" for m, p in CASES], help="MODEL:PRECISION")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--out", default="gpu_check.json")
    args = parser.parse_args()
    cases = [tuple(c.split(":")) for c in args.cases]
    if args.build_only:
        build(cases, args.arch, Path(args.build_only))
        return
    compile_seconds: dict[str, float] = {}
    libdir = Path(args.prebuilt) if args.prebuilt else Path("gpu_check_libs")
    if not args.prebuilt:
        compile_seconds = build(cases, args.arch, libdir)
    rows, errors = [], []
    for model, precision in cases:
        lib = libdir / lib_name(model, precision, args.arch)
        if not lib.is_file():
            errors.append(f"{lib.name}: not built")
            continue
        try:
            rows.append(check(lib, model, precision, args.runs))
            print(json.dumps(rows[-1]), file=sys.stderr)
        except Exception as err:  # report every case, keep going
            errors.append(f"{lib.name}: {type(err).__name__}: {err}")
            print(errors[-1], file=sys.stderr)
    machine = {**describe_machine().to_json(), "gpu": gpu_name()}
    result = write_result(args.out, "gpu_check", rows, {"compiled_on_this_machine": not args.prebuilt,
                                                        "compile_seconds": compile_seconds, "errors": errors},
                          machine=machine)
    print(json.dumps(result.to_json(), indent=2))


if __name__ == "__main__":
    main()
