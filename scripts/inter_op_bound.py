#!/usr/bin/env python3
"""How much running independent branches side by side (inter-op parallelism) could gain at most.

Inter-op parallelism runs a graph's independent branches at the same time, each on its own
share of the cores. On ``--threads`` cores its best case is every kernel at one thread, the
work split perfectly evenly, no waiting: the one-thread latency divided by the core count.
Today's intra-op schedule runs every kernel on all the threads. This script times both
latencies in alternating rounds (same process) and writes the bound:
``best_inter_op_ms = p50(1 thread) / threads`` against ``p50(threads)``. Where the bound is
not below today's latency, no branch schedule can win on this machine.

    python scripts/inter_op_bound.py --models inception_v1 squeezenet --threads 2 --out scripts/results/inter_op_bound.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from compiler.benchmark import alternating_calls_p50_ms, write_result
from compiler.build import compile_model
from compiler.examples import example_model
from compiler.runtime import CompiledModel, StreamedModel, load


def bound(name: str, threads: int, runs: int, rounds: int, workdir: Path) -> dict:
    lib = workdir / f"{name}.so"
    compile_model(example_model(name), lib, target="host")
    # TVM keeps one thread pool per calling thread: the one-thread runs go to a worker thread whose
    # pool has one thread (a one-stream StreamedModel; its queue hand-off costs microseconds)
    many = load(lib, threads=threads)
    one = StreamedModel(CompiledModel(many.path, many.metadata, 1), streams=1, threads_per_stream=1)
    inputs = many.random_inputs(seed=0)
    calls = {"1": lambda: one.run(inputs), str(threads): many.timed_call(inputs)}
    p50 = alternating_calls_p50_ms(calls, rounds=rounds, runs=runs)
    one.close()
    best = p50["1"] / threads
    row = {"model": name, "threads": threads, "p50_1_thread_ms": round(p50["1"], 3),
           "p50_intra_op_ms": round(p50[str(threads)], 3), "best_inter_op_ms": round(best, 3),
           "intra_op_speedup": round(p50["1"] / p50[str(threads)], 2),
           "inter_op_could_win": best < p50[str(threads)], "runs": runs, "rounds": rounds}
    print(f"{name}: 1 thread {p50['1']:.2f} ms, {threads} threads {p50[str(threads)]:.2f} ms, "
          f"best inter-op {best:.2f} ms", file=sys.stderr)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["inception_v1", "squeezenet"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="inter_op_bound.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kiln-interop-") as tmp:
        rows = [bound(name, args.threads, args.runs, args.rounds, Path(tmp)) for name in args.models]
    write_result(args.out, "inter_op_bound", rows, {"threads": args.threads})


if __name__ == "__main__":
    main()
