#!/usr/bin/env python3
"""Independent branches side by side (``--inter-op``) against main alone, on this machine.

Per model: ``kiln compile --inter-op auto`` (which times every region both ways and keeps the
faster), then the whole model in alternating rounds (same process): ``main`` alone on
``--threads`` threads, every region side by side, and ``main`` on one thread. The last gives
the bound of any branch schedule: every kernel at one thread, the work split perfectly
evenly, no waiting (``best_inter_op_ms``: the one-thread latency / ``--threads``). Writes one
row per model with the per-region timings auto measured. The summary records ``TVM_THREAD_POOL_SPIN_COUNT``
(how long TVM's idle pool threads spin; set it in the environment to compare).

    python scripts/bench_inter_op.py --models inception_v1 squeezenet --threads 2 --out scripts/results/bench_inter_op.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from compiler.benchmark import write_result
from compiler.build import compile_model
from compiler.examples import example_model
from compiler.runtime import CompiledModel, StreamedModel, alternating_calls_p50_ms, load


def measure(name: str, threads: int, runs: int, rounds: int, workdir: Path) -> dict:
    lib = workdir / f"{name}.so"
    report = compile_model(example_model(name), lib, target="host", inter_op="auto")
    info = report.inter_op or {}
    row = {"model": name, "threads": threads, "regions": 0, "kept_regions": []}
    if info.get("plan") is None:
        print(f"{name}: no independent branches", file=sys.stderr)
        return row
    main = load(lib, threads=threads, inter_op=False)
    every = load(lib, threads=threads, inter_op=True)
    inputs = main.random_inputs(seed=0)
    # TVM keeps one thread pool per calling thread: the one-thread runs go to a worker thread whose
    # pool has one thread (a one-stream StreamedModel; its queue hand-off costs microseconds)
    one = StreamedModel(CompiledModel(main.path, main.metadata, 1, inter_op=False), streams=1, threads_per_stream=1)
    calls = {"main": main.timed_call(inputs), "every_region": every.timed_call(inputs), "one": lambda: one.run(inputs)}
    p50 = alternating_calls_p50_ms(calls, rounds=rounds, runs=runs)
    one.close()
    regions = info["measured"]["regions"]
    row.update({"regions": len(regions), "kept_regions": info["side_by_side"],
                "main_p50_ms": round(p50["main"], 3), "every_region_side_by_side_p50_ms": round(p50["every_region"], 3),
                "every_region_vs_main": round(p50["every_region"] / p50["main"], 3),
                "p50_1_thread_ms": round(p50["one"], 3), "best_inter_op_ms": round(p50["one"] / threads, 3),
                "region_timings": regions, "runs": runs, "rounds": rounds})
    print(f"{name}: {len(regions)} regions, kept {info['side_by_side']}; main {p50['main']:.2f} ms, "
          f"every region side by side {p50['every_region']:.2f} ms", file=sys.stderr)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["inception_v1", "squeezenet"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="bench_inter_op.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kiln-inter-op-") as tmp:
        rows = [measure(name, args.threads, args.runs, args.rounds, Path(tmp)) for name in args.models]
    write_result(args.out, "bench_inter_op", rows, {
        "threads": args.threads, "tvm_thread_pool_spin_count": os.environ.get("TVM_THREAD_POOL_SPIN_COUNT", "default")})


if __name__ == "__main__":
    main()
