#!/usr/bin/env python3
"""Profile the light zoo with ``kiln profile`` beside ONNX Runtime's per-node profile.

For each model: compile for the host, profile every kernel (``compiler.profile``) with ONNX
Runtime's profile of the same model at the same thread count, and record where the time goes
per operator class, how much of the end-to-end time the kernels account for, and the conv
kernels' GFLOP/s against this machine's FP32 peak. Writes JSON and prints a Markdown table.

    python scripts/profile_zoo.py --threads 2 --out scripts/results/profile_zoo.json

The peak is given two ways: the formula cores × FMA units × FP32 lanes per unit × 2 × clock at
the clock /proc/cpuinfo reports (a virtual machine often reports its base clock, below the
clock it runs at), and the GFLOP/s of a 2048×2048 OpenBLAS sgemm at the same thread count
(what a tuned library attains here).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from compiler.benchmark import time_calls, write_result
from compiler.build import compile_model
from compiler.examples import LIGHT_ZOO_BENCH, example_model
from compiler.profile import profile_library
from compiler.runtime import load
from targets.registry import cpu_flags


def fma_datapath() -> tuple[int, int, str]:
    """(FMA units per core, FP32 lanes per unit, why) for this x86 CPU, from its vendor and flags."""
    flags = cpu_flags()
    vendor = ""
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        vendor = next((line.split(":", 1)[1].strip() for line in f if line.startswith("vendor_id")), "")
    if "avx512f" in flags and vendor == "GenuineIntel":
        return 2, 16, "Intel with AVX-512: two 512-bit FMA units (Xeon Gold/Platinum class)"
    if "avx512f" in flags and vendor == "AuthenticAMD" and "avx512_vp2intersect" not in flags:
        return 2, 8, "AMD Zen 4: two 256-bit FMA units (AVX-512 runs in two halves)"
    if "avx512f" in flags:
        return 2, 16, "AMD Zen 5: two 512-bit FMA units"
    return 2, 8, "AVX2: two 256-bit FMA units"


def reported_clock_ghz() -> float:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        return max(float(line.split(":", 1)[1]) for line in f if line.startswith("cpu MHz")) / 1e3


def sgemm_gflops(threads: int, n: int = 2048, repeats: int = 5) -> float | None:
    """GFLOP/s of numpy's BLAS sgemm (n×n) at ``threads`` threads; None without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    with threadpool_limits(limits=threads, user_api="blas"):
        p50_ms = time_calls(lambda: a @ a, repeats, warmup=1).p50_ms
    return 2 * n**3 / p50_ms / 1e6


def profile_model(name: str, threads: int, runs: int, workdir: Path) -> dict:
    model = example_model(name)
    onnx_path, lib = workdir / f"{name}.onnx", workdir / f"{name}.so"
    import onnx

    onnx.save(model, onnx_path)
    compile_model(onnx_path, lib, target="host")
    profile = profile_library(load(lib, threads=threads), runs=runs, reference=onnx_path)
    convs = [k for k in profile.kernels if k.op_class == "conv" and k.flops]
    conv_ms = sum(k.total_ms for k in convs)
    conv_gflops = sum(k.flops * k.calls for k in convs) / conv_ms / 1e6 if conv_ms else None
    ort = profile.reference
    return {
        "model": name,
        "kiln_ms": round(profile.end_to_end_ms, 3),
        "ort_ms": round(ort.end_to_end_unprofiled_ms, 3),
        "kiln_over_ort": round(profile.end_to_end_ms / ort.end_to_end_unprofiled_ms, 3),
        "kernel_sum_ms": round(profile.kernel_sum_ms, 3),
        "kernel_sum_share": round(profile.kernel_sum_ms / profile.end_to_end_ms, 3),
        "in_sequence_sum_ms": round(profile.in_sequence_sum_ms, 3),
        "in_sequence_over_alone": round(profile.in_sequence_sum_ms / profile.kernel_sum_ms, 3),
        "conv_gflops_per_s": round(conv_gflops, 1) if conv_gflops else None,
        "classes": [{"op_class": c.op_class, "kiln_ms": round(c.kiln_ms, 3), "kiln_kernels": c.kiln_kernels,
                     "ort_ms": round(c.ort_ms, 3) if c.ort_ms is not None else None, "ort_nodes": c.ort_nodes}
                    for c in profile.classes()],
        "top_kernels": [{"name": k.name, "calls": k.calls, "total_ms": round(k.total_ms, 3),
                         "gflops_per_s": round(k.gflops_per_s, 1) if k.gflops_per_s else None,
                         "in_sequence_ms": round(k.in_sequence_ms, 3), "schedule": k.schedule}
                        for k in profile.kernels[:8]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--models", nargs="*", default=list(LIGHT_ZOO_BENCH))
    parser.add_argument("--out", default="scripts/results/profile_zoo.json")
    args = parser.parse_args()

    units, lanes, why = fma_datapath()
    clock = reported_clock_ghz()
    peak = {"formula_gflops": round(args.threads * units * lanes * 2 * clock, 1), "fma_units": units,
            "fp32_lanes_per_unit": lanes, "clock_ghz_reported": clock, "datapath": why,
            "sgemm_gflops": sgemm_gflops(args.threads)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="kiln-profile-zoo-") as tmp:
        for name in args.models:
            rows.append(profile_model(name, args.threads, args.runs, Path(tmp)))
            print(json.dumps({k: rows[-1][k] for k in ("model", "kiln_ms", "ort_ms", "kiln_over_ort",
                                                        "kernel_sum_share", "in_sequence_over_alone",
                                                        "conv_gflops_per_s")}), flush=True)
    write_result(args.out, "profile_zoo", rows, {"threads": args.threads, "peak": peak})
    print("| model | kiln ms | ORT ms | kiln/ORT | kernels' share of end-to-end | in sequence / alone | conv GFLOP/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['kiln_ms']:.2f} | {r['ort_ms']:.2f} | {r['kiln_over_ort']:.2f}x | "
              f"{r['kernel_sum_share']:.0%} | {r['in_sequence_over_alone']:.2f}x | {r['conv_gflops_per_s'] or '-'} |")
    print(f"peak: {peak}")


if __name__ == "__main__":
    main()
