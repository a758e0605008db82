#!/usr/bin/env python3
"""Runtime load test: N calls on one loaded model from several threads; results, throughput, RSS.

    python scripts/load_test.py --calls 20000 --threads 4 --out load_test.json [--library tiny.so]

Without ``--library`` it compiles the built-in ``tiny`` example first. Every result is
checked against a single-threaded reference run; RSS is sampled after warm-up and at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from compiler.benchmark import write_result
from compiler.runtime import load


def run(library: Path, calls: int, threads: int) -> dict:
    model = load(library)
    rng = np.random.default_rng(0)
    inputs = [model.random_inputs(seed=i) for i in range(8)]
    expected = [model.run(x) for x in inputs]
    for _ in range(200):  # warm-up, so allocator pools exist before the first RSS sample
        model.run(inputs[0])
    process = psutil.Process()
    rss_start = process.memory_info().rss
    wrong = []
    per_thread = calls // threads

    def worker(seed: int) -> None:
        local = np.random.default_rng(seed)
        for _ in range(per_thread):
            i = int(local.integers(len(inputs)))
            out = model.run(inputs[i])
            if any(not np.array_equal(out[k], expected[i][k]) for k in out):
                wrong.append(i)

    start = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(s,)) for s in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    seconds = time.perf_counter() - start
    rss_end = process.memory_info().rss
    del rng
    return {
        "library": str(library), "calls": per_thread * threads, "threads": threads, "wrong_results": len(wrong),
        "seconds": round(seconds, 2), "calls_per_second": round(per_thread * threads / seconds, 1),
        "rss_start_mb": round(rss_start / 2**20, 1), "rss_end_mb": round(rss_end / 2**20, 1),
        "rss_growth_mb": round((rss_end - rss_start) / 2**20, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library")
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--out", default="load_test.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kiln-load-") as tmp:
        library = Path(args.library) if args.library else Path(tmp) / "tiny.so"
        if not args.library:
            from compiler.build import compile_model
            from compiler.examples import example_model

            compile_model(example_model("tiny"), library)
        result = run(library, args.calls, args.threads)
    write_result(args.out, "load_test", [result])
    print(json.dumps(result, indent=2))
    sys.exit(1 if result["wrong_results"] else 0)


if __name__ == "__main__":
    main()
