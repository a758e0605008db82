#!/usr/bin/env python3
"""Throughput with streams: N requests at once, each stream with its share of the threads.

For each model: compile for the host, then in alternating rounds serve ``--requests``
requests with 1 stream of ``--threads`` threads and with ``--streams`` streams of
``threads / streams`` threads (``compiler.runtime.load(..., streams=N)``), one client per
stream, each sending its next request when its last returned. Reports inferences per second
and per-request latency (medians over the rounds), the throughput ratio, and whether every
configuration's outputs equal the single-stream run's bit for bit. With ``--reference``,
ONNX Runtime is served the same way (one session, ``threads / streams`` intra-op threads,
one client thread per stream) for comparison.

    python scripts/bench_streams.py --threads 2 --streams 2 --out scripts/results/bench_streams.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from compiler.benchmark import onnxruntime_reference, write_result
from compiler.build import compile_model
from compiler.examples import example_model
from compiler.runtime import PAUSE_S, LatencyStats, closed_loop, load, measure_throughput


def onnxruntime_throughput(ref, inputs, clients: int, requests: int) -> tuple[float, LatencyStats]:
    """(inferences/s, latency) of ONNX Runtime session ``ref`` called from ``clients`` threads at once."""
    seconds, latency = closed_loop(ref.timed_call(inputs), clients, requests)
    return requests / seconds, latency


def bench_model(name: str, threads: int, streams: int, requests: int, rounds: int, reference: bool,
                workdir: Path) -> list[dict]:
    model = example_model(name)
    lib = workdir / f"{name}.so"
    compile_model(model, lib, target="host")
    configs = {"1 stream": 1, f"{streams} streams": streams}
    loaded = {label: load(lib, threads=threads, streams=count) for label, count in configs.items()}
    inputs = loaded["1 stream"].random_inputs(seed=0)
    single = loaded["1 stream"].run(inputs)
    identical = {label: all(np.array_equal(v, single[k]) for k, v in m.run(inputs).items())
                 for label, m in loaded.items()}
    refs = {}
    if reference:
        refs = {"onnxruntime 1 stream": (onnxruntime_reference(model, threads), 1),
                f"onnxruntime {streams} streams": (onnxruntime_reference(model, threads // streams), streams)}
    per_round: dict[str, list[tuple[float, float]]] = {label: [] for label in [*loaded, *refs]}
    for _ in range(rounds):
        for label, m in loaded.items():
            time.sleep(PAUSE_S)
            stats = measure_throughput(m, inputs, requests)
            per_round[label].append((stats.per_second, stats.latency.p50_ms))
        for label, (ref, clients) in refs.items():
            time.sleep(PAUSE_S)
            per_second, latency = onnxruntime_throughput(ref, inputs, clients, requests)
            per_round[label].append((per_second, latency.p50_ms))
    for m in loaded.values():
        if hasattr(m, "close"):
            m.close()
    rows = []
    for label, values in per_round.items():
        count = configs.get(label) or (1 if label.endswith("1 stream") else streams)
        rows.append({
            "model": name, "runtime": "onnxruntime" if label.startswith("onnxruntime") else "kiln",
            "streams": count, "threads_per_stream": threads // count,
            "inferences_per_s": round(float(np.median([v[0] for v in values])), 2),
            "latency_p50_ms": round(float(np.median([v[1] for v in values])), 3),
            "identical_to_1_stream": identical.get(label), "requests": requests, "rounds": rounds,
        })
        print(f"{name} {label}: {rows[-1]['inferences_per_s']} inferences/s, p50 {rows[-1]['latency_p50_ms']} ms",
              file=sys.stderr)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["squeezenet", "shufflenet"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--streams", type=int, default=2)
    parser.add_argument("--requests", type=int, default=200, help="requests per configuration per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (1 stream, N streams, …)")
    parser.add_argument("--reference", action="store_true", help="serve ONNX Runtime the same way, for comparison")
    parser.add_argument("--out", default="bench_streams.json")
    args = parser.parse_args()
    if args.threads % args.streams:
        raise SystemExit(f"--threads {args.threads} must split evenly into --streams {args.streams}")
    with tempfile.TemporaryDirectory(prefix="kiln-streams-") as tmp:
        rows = [row for name in args.models for row in bench_model(
            name, args.threads, args.streams, args.requests, args.rounds, args.reference, Path(tmp))]
    ratios = {}
    for name in args.models:
        kiln = {r["streams"]: r["inferences_per_s"] for r in rows if r["model"] == name and r["runtime"] == "kiln"}
        ratios[name] = round(kiln[args.streams] / kiln[1], 2)
    write_result(args.out, "bench_streams", rows, {"threads": args.threads, "streams": args.streams,
                                                   "throughput_ratio": ratios})
    print(ratios)


if __name__ == "__main__":
    main()
