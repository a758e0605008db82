#!/usr/bin/env python3
"""Benchmark kiln's ForkedBuilder against TVM's stock LocalBuilder on the same candidates.

Extracts the tuning tasks of a built-in example model, samples the same candidate
schedules for both builders (each task's design spaces replayed with fresh random
decisions and a fixed seed, then MetaSchedule's postprocessors, as a tuning batch
would hand them over), and times ``builder.build`` on the same batches, one builder
after the other in this process. Build only: the runner would be the same for both.
A third row runs the stock builder with workers that import the tensor intrinsics the
fast way (``schedules.intrinsics``), to show how much of its cost is that import.
Writes JSON and prints a Markdown table.

    python scripts/bench_builder.py --model squeezenet --candidates 32 --batch 16 --out bench_builder.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time


def extract_contexts(model_name: str, threads: int, seed: int, work_dir: str):
    """The model's tuning tasks as TuneContexts (kiln's tuning pipeline and target), and the target."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from compiler.examples import example_model
    from compiler.frontend import import_onnx
    from compiler.pipeline import tuning_input_pipeline
    from schedules.intrinsics import import_tensor_intrinsics
    from schedules.tune import tuning_target
    from targets.registry import resolve_target

    import_tensor_intrinsics()  # as kiln tune does (TuneContext would otherwise import them slowly)
    preset = resolve_target("host")
    target = tuning_target(preset, threads)
    imported = import_onnx(example_model(model_name), {})
    with tvm.transform.PassContext(opt_level=3):
        mod = tuning_input_pipeline(preset)(imported.mod)
    extracted = ms.relax_integration.extract_tasks(mod, target)
    contexts, _ = ms.relax_integration.extracted_tasks_to_tune_contexts(
        extracted, work_dir=work_dir, num_threads=threads, seed=seed)
    return contexts, target


def sample_candidates(contexts, count: int, seed: int) -> list[tuple[str, object]]:
    """``count`` (task name, scheduled IRModule) pairs, round robin over the tasks with a search space."""
    from tvm.s_tir import Schedule, Trace

    spaces = []
    for context in contexts:
        found = [s for s in context.generate_design_space() if len(s.trace.decisions) > 0]
        if found:
            spaces.append((context, found))
    candidates: list[tuple[str, object]] = []
    attempt = 0
    while len(candidates) < count and attempt < count * 20:
        context, designs = spaces[attempt % len(spaces)]
        design = designs[(attempt // len(spaces)) % len(designs)]
        attempt += 1
        sch = Schedule(context.mod, seed=seed + attempt, debug_mask=0)
        try:
            Trace(design.trace.insts, {}).apply_to_schedule(sch, remove_postproc=True)  # fresh decisions
        except Exception:  # a sampled decision can be invalid; tuning retries too  # noqa: BLE001
            continue
        if all(postproc.apply(sch) for postproc in context.space_generator.postprocs):
            candidates.append((context.task_name, sch.mod))
    if len(candidates) < count:
        raise SystemExit(f"only {len(candidates)} valid candidates after {attempt} samples")
    return candidates


def time_builder(name: str, builder, inputs, batch: int) -> dict:
    """Build ``inputs`` in batches of ``batch`` (one ``build`` call each, as the tuner does)."""
    built = failed = 0
    batch_seconds, errors, artifacts = [], [], []
    start = time.perf_counter()
    for i in range(0, len(inputs), batch):
        t0 = time.perf_counter()
        results = builder.build(inputs[i:i + batch])
        batch_seconds.append(round(time.perf_counter() - t0, 2))
        for result in results:
            if result.error_msg is None:
                built += 1
                artifacts.append(result.artifact_path)
            else:
                failed += 1
                errors.append(result.error_msg.strip().splitlines()[-1][:300])
        print(f"{name}: batch {len(batch_seconds)} ({len(results)} candidates) {batch_seconds[-1]:.1f} s",
              file=sys.stderr)
    seconds = time.perf_counter() - start
    for path in artifacts:  # both builders leave one temporary directory per candidate
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)
    return {
        "builder": name, "candidates": len(inputs), "built": built, "failed": failed,
        "seconds": round(seconds, 2), "batch_seconds": batch_seconds,
        "built_per_minute": round(60 * built / seconds, 2) if seconds else None,
        "candidates_per_minute": round(60 * len(inputs) / seconds, 2) if seconds else None,
        "first_errors": sorted(set(errors))[:3],
    }


def markdown(rows: list[dict], speedup: float | None) -> str:
    lines = ["| builder | candidates | built | failed | seconds | per batch (s) | built / min | kiln speedup |",
             "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for r in rows:
        per_batch = ", ".join(f"{s:.1f}" for s in r["batch_seconds"])
        lines.append(f"| {r['builder']} | {r['candidates']} | {r['built']} | {r['failed']} | {r['seconds']:.1f} | "
                     f"{per_batch} | {r['built_per_minute']:.1f} | {r['kiln_speedup']}x |")
    if speedup is not None:
        lines.append(f"\nForkedBuilder vs stock LocalBuilder (built candidates per minute): **{speedup:.1f}x**")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="squeezenet", help="built-in example model (kiln example)")
    parser.add_argument("--candidates", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16, help="candidates per build call (kiln's --trials-per-iter)")
    parser.add_argument("--threads", type=int, default=2, help="num-cores of the tuning target")
    parser.add_argument("--stock-timeout", type=float, default=600, help="LocalBuilder timeout_sec (its default 30 s fails here)")
    parser.add_argument("--stock-workers", type=int, default=None, help="LocalBuilder max_workers (default: CPU count)")
    parser.add_argument("--no-fast-import-row", action="store_true",
                        help="skip the LocalBuilder whose workers use schedules.intrinsics' fast import")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench_builder.json")
    args = parser.parse_args()

    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.builder import BuilderInput

    from compiler.benchmark import write_result
    from schedules.builder import ForkedBuilder

    load_at_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="kiln-bench-builder-") as work_dir:
        t0 = time.perf_counter()
        contexts, target = extract_contexts(args.model, args.threads, args.seed, work_dir)
        candidates = sample_candidates(contexts, args.candidates, args.seed)
        prepare_s = time.perf_counter() - t0
        tasks_used = sorted({name for name, _ in candidates})
        print(f"{len(contexts)} tasks, {len(candidates)} candidates from {len(tasks_used)} tasks "
              f"({prepare_s:.0f} s to extract and sample)", file=sys.stderr)
        inputs = [BuilderInput(mod, target) for _, mod in candidates]

        rows = [time_builder("kiln ForkedBuilder", ForkedBuilder(), inputs, args.batch)]
        t0 = time.perf_counter()
        stock = ms.builder.LocalBuilder(timeout_sec=args.stock_timeout, max_workers=args.stock_workers)
        stock_init_s = time.perf_counter() - t0  # its constructor starts (and stops) one process pool
        rows.append(time_builder("TVM LocalBuilder", stock, inputs, args.batch))
        rows[-1].update(constructor_seconds=round(stock_init_s, 2), max_workers=stock.max_workers,
                        timeout_sec=args.stock_timeout)
        if not args.no_fast_import_row:
            # The same stock builder whose workers first import the intrinsics kiln's fast way.
            from schedules.intrinsics import import_tensor_intrinsics

            stock = ms.builder.LocalBuilder(timeout_sec=args.stock_timeout, max_workers=args.stock_workers,
                                            initializer=import_tensor_intrinsics)
            rows.append(time_builder("TVM LocalBuilder + fast-import initializer", stock, inputs, args.batch))
            rows[-1].update(max_workers=stock.max_workers, timeout_sec=args.stock_timeout)

    ours, theirs = rows[0]["built_per_minute"], rows[1]["built_per_minute"]
    speedup = ours / theirs if ours and theirs else None
    for row in rows:
        row["kiln_speedup"] = round(ours / row["built_per_minute"], 2) if ours and row["built_per_minute"] else None
    summary = {
        "model": args.model, "target": str(target), "tasks": len(contexts), "tasks_sampled": tasks_used,
        "candidates": len(candidates), "batch": args.batch, "seed": args.seed,
        "prepare_seconds": round(prepare_s, 1), "speedup_built_per_minute": round(speedup, 2) if speedup else None,
        "loadavg_at_start": load_at_start, "loadavg_at_end": os.getloadavg(),
    }
    write_result(args.out, "bench_builder", rows, summary)
    print(markdown(rows, speedup))


if __name__ == "__main__":
    main()
