#!/usr/bin/env python3
"""Kernels and latency of the light zoo with and without kiln's fusion passes.

For each model:

- ``kernels_stock`` / ``kernels_kiln``: distinct TIR kernels after fusion, TVM's stock lowering
  (LegalizeOps … FuseOps, FuseTIR, nothing before) against kiln's pipeline; the numbers
  ``kiln inspect MODEL.onnx --passes --json`` prints.
- ``launches_stock`` / ``launches_no_fusion`` / ``launches_kiln``: kernels launched per inference
  (a kernel called twice counts twice; reshapes that become views and weight packing folded at
  compile time do not count): TVM's stock lowering, kiln's pipeline without its fusion steps
  (``fusion=False``), and kiln's pipeline.
- with ``--latency [MODEL ...]`` (no names: every model): both libraries built (``compile_model(..., fusion=False/True)``, same
  default schedules), each checked against ONNX Runtime, then timed in the same process, rounds
  alternating between the two (``--runs`` calls per variant in all); the p50 is the median over
  rounds of each round's p50.

    python scripts/fusion_report.py                                   # kernel counts, all five models
    python scripts/fusion_report.py --latency --threads 2 --runs 50   # plus latency of all (a quiet machine!)
    python scripts/fusion_report.py --latency squeezenet --runs 20    # counts for all, latency for one
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import onnx

from compiler.benchmark import alternating_p50_ms, onnxruntime_reference, write_result
from compiler.examples import LIGHT_ZOO_BENCH, example_model
from compiler.inspect import kernel_launches

DEFAULT_OUT = Path(__file__).parent / "results" / "fusion_report.json"


def _fused(mod, steps):
    """``mod`` through ``steps`` up to FuseTIR."""
    last = max(i for i, s in enumerate(steps) if s.name == "FuseTIR")
    for step in steps[: last + 1]:
        mod = step.make()(mod)
    return mod


def count_kernels(model: onnx.ModelProto, path: Path, target: str = "host") -> dict:
    """The kernel columns for one model (passes only, nothing is built)."""
    import tvm
    from tvm import relax

    from compiler.frontend import import_onnx
    from compiler.inspect import inspect_passes
    from compiler.pipeline import pipeline_steps
    from targets.registry import resolve_target

    info = inspect_passes(path, target)
    preset = resolve_target(target)
    mod = import_onnx(model, {}).mod
    stock_steps = [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                   relax.transform.FoldConstant(), relax.transform.FuseOps(), relax.transform.FuseTIR()]
    with preset.tvm_target(), tvm.transform.PassContext(opt_level=3):
        stock = tvm.transform.Sequential(stock_steps)(mod)
        plain = _fused(mod, pipeline_steps(preset, fusion=False))
        kiln = _fused(mod, pipeline_steps(preset))
    return {
        "kernels_stock": info["kernels_stock"],
        "kernels_kiln": info["kernels_kiln"],
        "launches_stock": kernel_launches(stock),
        "launches_no_fusion": kernel_launches(plain),
        "launches_kiln": kernel_launches(kiln),
    }


def measure_latency(model: onnx.ModelProto, workdir: Path, threads: int, runs: int, rounds: int) -> dict:
    """Build without and with kiln's fusion, check both against ONNX Runtime, time them alternately."""
    from compiler.build import compile_model
    from compiler.reference import max_abs_diff
    from compiler.runtime import load

    libs, compile_s = {}, {}
    for key, fusion in (("no_fusion", False), ("kiln", True)):
        lib = workdir / f"{key}.so"
        t0 = time.perf_counter()
        compile_model(model, lib, target="host", fusion=fusion)
        compile_s[key] = round(time.perf_counter() - t0, 1)
        libs[key] = load(lib, threads=threads)
    inputs = libs["kiln"].random_inputs(seed=0)
    ref = onnxruntime_reference(model, threads).run(inputs)
    row: dict = {"threads": threads, "compile_s": compile_s}
    for key, m in libs.items():
        row[f"max_rel_diff_{key}"] = max_abs_diff(m.run(inputs), ref)[1]
    per_round = max(1, runs // rounds)
    for key, ms in alternating_p50_ms(libs, inputs, rounds, per_round).items():
        row[f"p50_ms_{key}"] = round(ms, 3)
        row[f"runs_{key}"] = per_round * rounds
    row["speedup"] = round(row["p50_ms_no_fusion"] / row["p50_ms_kiln"], 3)
    return row


def markdown(rows: list[dict]) -> str:
    head = ("| model | kernels stock | kernels kiln | launches stock | launches kiln (no fusion) | launches kiln "
            "| p50 no fusion (ms) | p50 kiln (ms) |")
    lines = [head, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lat = r.get("latency") or {}
        lines.append(f"| {r['model']} | {r['kernels_stock']} | {r['kernels_kiln']} | {r['launches_stock']} "
                     f"| {r['launches_no_fusion']} | {r['launches_kiln']} | {lat.get('p50_ms_no_fusion', '–')} "
                     f"| {lat.get('p50_ms_kiln', '–')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=LIGHT_ZOO_BENCH)
    ap.add_argument("--latency", nargs="*", metavar="MODEL",
                    help="also build both variants and time them (these models; no names: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=50, help="timed calls per variant")
    ap.add_argument("--rounds", type=int, default=5, help="alternations between the two variants")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory(prefix="kiln-fusion-") as tmp:
        for name in args.models:
            model = example_model(name)
            path = Path(tmp) / f"{name}.onnx"
            onnx.save(model, path)
            t0 = time.perf_counter()
            row = {"model": name, **count_kernels(model, path)}
            print(f"{name}: kernels {row['kernels_stock']} -> {row['kernels_kiln']}, launches "
                  f"{row['launches_stock']} (stock) / {row['launches_no_fusion']} (no fusion) -> "
                  f"{row['launches_kiln']} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
            if args.latency is not None and (not args.latency or name in args.latency):
                workdir = Path(tmp) / name
                workdir.mkdir()
                row["latency"] = measure_latency(model, workdir, args.threads, args.runs, args.rounds)
                lat = row["latency"]
                print(f"{name}: p50 {lat['p50_ms_no_fusion']} ms -> {lat['p50_ms_kiln']} ms "
                      f"(x{lat['speedup']}), rel diff {lat['max_rel_diff_kiln']:.2g}", file=sys.stderr)
            rows.append(row)
    command = None if argv is None else "python scripts/fusion_report.py " + " ".join(argv)
    write_result(args.out, "fusion_report", rows, command=command)
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
