#!/usr/bin/env python3
"""Fuzz kiln's frontend with mutated ONNX models; every case must end in a kiln error or a clean import.

Mutations of three base models: the built-in ``tiny`` CNN, a small stacked LSTM/GRU
(kiln's own recurrent converter) and a model with an ``If`` on its input's sum. Byte
flips, truncation, huge or mismatched dimensions, missing initializers, cycles, unknown
domains and operators, wrong attribute types, duplicated outputs, and random values for
the recurrent attributes (direction, hidden_size, activations, layout, clip). Cases run in a worker subprocess (one per
batch, restarted after a crash) so a segfault or hang inside TVM is recorded as an
outcome instead of killing the run; each case has a time limit.

    python scripts/fuzz_frontend.py --cases 3000 --seed 0 --out fuzz.json

Outcomes: ``imported`` (valid model, imported), ``kiln_error:<Type>`` (rejected with
kiln's error), ``other_error:<Type>`` (a bug: an exception that is not kiln's),
``crash`` (the worker died), ``timeout``. Exit code 1 if any case is a bug, crash or timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

BAD_OUTCOMES = ("other_error", "crash", "timeout")


def mutate(base: bytes, rng: random.Random) -> bytes:
    import onnx

    kind = rng.choice(["flip", "truncate", "dims", "drop_init", "cycle", "domain", "attr", "dup_output",
                       "input_shape", "unknown_op", "recurrent_attr"])
    if kind == "flip":
        data = bytearray(base)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if kind == "truncate":
        return base[: rng.randrange(len(base))]
    model = onnx.load_model_from_string(base)
    graph = model.graph
    if kind == "dims":
        vi = rng.choice(list(graph.input) + list(graph.output))
        dims = vi.type.tensor_type.shape.dim
        if dims:
            dims[rng.randrange(len(dims))].dim_value = rng.choice([0, 1, 7, 2**31, 2**40])
    elif kind == "drop_init" and graph.initializer:
        del graph.initializer[rng.randrange(len(graph.initializer))]
    elif kind == "cycle" and len(graph.node) > 2:
        first, later = graph.node[0], graph.node[rng.randrange(1, len(graph.node))]
        first.input[0] = later.output[0]
    elif kind == "domain":
        rng.choice(graph.node).domain = rng.choice(["com.example", "ai.onnx.ml", "x" * 50])
    elif kind == "attr":
        node = rng.choice([n for n in graph.node if n.attribute] or list(graph.node))
        if node.attribute:
            a = node.attribute[rng.randrange(len(node.attribute))]
            a.type = rng.choice([onnx.AttributeProto.STRING, onnx.AttributeProto.FLOAT, onnx.AttributeProto.TENSOR])
    elif kind == "dup_output":
        graph.node[-1].output[0] = graph.node[0].output[0]
    elif kind == "input_shape":
        dims = graph.input[0].type.tensor_type.shape.dim
        del dims[rng.randrange(len(dims))]
    elif kind == "unknown_op":
        rng.choice(graph.node).op_type = rng.choice(["NoSuchOp", "QLinearConv", "Loop", ""])
    elif kind == "recurrent_attr":
        from onnx import helper

        node = rng.choice([n for n in graph.node if n.op_type in ("LSTM", "GRU", "RNN")] or list(graph.node))
        name, value = rng.choice([("direction", rng.choice(["backward", "", "bidirectional", "reverse"])),
                                  ("hidden_size", rng.choice([0, 1, 3, -5, 2**20])),
                                  ("activations", rng.choice([["Gelu"], ["Relu"], ["Sigmoid"] * 7, []])),
                                  ("layout", rng.choice([1, 2, -1])), ("clip", rng.choice([0.0, -1.0, 1e30])),
                                  ("linear_before_reset", rng.choice([1, 7])), ("input_forget", 1)])
        for a in [a for a in node.attribute if a.name == name]:
            node.attribute.remove(a)
        if value != []:
            node.attribute.append(helper.make_attribute(name, value))
    return model.SerializeToString()


def _branchy_model():
    """``out = sum(x) > 0 ? x + x : -x``: an ``If`` that depends on data (kept as a Relax If)."""
    from onnx import TensorProto, helper

    def branch(name: str, node) -> object:
        return helper.make_graph([node], name, [], [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT,
                                                                                  [1, 8])])

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Sign", ["s"], ["sign"]), helper.make_node("Cast", ["sign"], ["cond"], to=TensorProto.BOOL),
             helper.make_node("If", ["cond"], ["out"], then_branch=branch("then", helper.make_node("Add", ["x", "x"], ["t"])),
                              else_branch=branch("else", helper.make_node("Neg", ["x"], ["e"])))]
    graph = helper.make_graph(nodes, "branchy", [x], [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def worker(case_dir: Path, start: int, results: Path) -> None:
    """Import cases start.. in order; append one JSON line per finished case."""

    from targets.errors import KilnError
    from compiler.frontend import import_onnx

    files = sorted(case_dir.glob("*.onnx"))
    with open(results, "a", encoding="utf-8") as out:
        for path in files[start:]:
            out.write(json.dumps({"case": path.name, "started": True}) + "\n")
            out.flush()
            try:
                import_onnx(path)
                outcome = "imported"
            except KilnError as err:
                outcome = f"kiln_error:{type(err).__name__}"
            except Exception as err:  # noqa: BLE001 — exactly what the fuzzer is looking for
                outcome = f"other_error:{type(err).__name__}: {str(err)[:200]}"
            out.write(json.dumps({"case": path.name, "outcome": outcome}) + "\n")
            out.flush()


def run(cases: int, seed: int, timeout: float) -> dict:
    from compiler.examples import example_model, recurrent_stack

    rng = random.Random(seed)
    bases = [example_model("tiny").SerializeToString(),
             recurrent_stack("LSTM", layers=2, input_size=6, hidden=8, steps=5).SerializeToString(),
             recurrent_stack("GRU", layers=1, input_size=6, hidden=8, steps=5).SerializeToString(),
             _branchy_model().SerializeToString()]
    with tempfile.TemporaryDirectory(prefix="kiln-fuzz-") as tmp:
        case_dir, results = Path(tmp) / "cases", Path(tmp) / "results.jsonl"
        case_dir.mkdir()
        for i in range(cases):
            (case_dir / f"{i:06d}.onnx").write_bytes(mutate(rng.choice(bases), rng))
        outcomes: dict[str, str] = {}
        names = sorted(p.name for p in case_dir.glob("*.onnx"))
        start_time = time.monotonic()
        while len(outcomes) < len(names):
            start = len(outcomes)
            proc = subprocess.Popen([sys.executable, __file__, "--worker", str(case_dir), str(start), str(results)])
            last_progress, seen = time.monotonic(), -1
            while proc.poll() is None:
                time.sleep(0.2)
                lines = results.read_text().splitlines() if results.exists() else []
                if len(lines) != seen:
                    seen, last_progress = len(lines), time.monotonic()
                elif time.monotonic() - last_progress > timeout:
                    proc.kill()
                    proc.wait()
                    break
            for line in results.read_text().splitlines():
                entry = json.loads(line)
                if "outcome" in entry:
                    outcomes[entry["case"]] = entry["outcome"]
            pending = [n for n in names if n not in outcomes]
            if pending and len(outcomes) == start:  # the worker stopped inside this case
                outcomes[pending[0]] = "timeout" if proc.returncode == -9 else f"crash (exit {proc.returncode})"
            results.unlink(missing_ok=True)
            # keep what finished; the next worker starts after it
            with open(results, "w", encoding="utf-8") as f:
                for name in names:
                    if name in outcomes:
                        f.write(json.dumps({"case": name, "outcome": outcomes[name]}) + "\n")
    counts = Counter(o if not o.startswith(("other_error", "crash")) else o.split(":")[0].split(" ")[0]
                     for o in outcomes.values())
    bad = {k: v for k, v in outcomes.items() if v.startswith(BAD_OUTCOMES)}
    return {"cases": cases, "seed": seed, "seconds": round(time.monotonic() - start_time, 1),
            "outcomes": dict(counts.most_common()), "bad_cases": bad}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds one case may take")
    parser.add_argument("--out", default="fuzz_frontend.json")
    args = parser.parse_args()
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    from compiler.benchmark import write_result

    summary = run(args.cases, args.seed, args.timeout)
    rows = [{"outcome": outcome, "cases": count} for outcome, count in summary.pop("outcomes").items()]
    write_result(args.out, "fuzz_frontend", rows, summary)
    print(json.dumps({**{k: v for k, v in summary.items() if k != "bad_cases"},
                      "outcomes": {r["outcome"]: r["cases"] for r in rows}}, indent=2))
    for case, outcome in list(summary["bad_cases"].items())[:20]:
        print(f"BAD {case}: {outcome}")
    sys.exit(1 if summary["bad_cases"] else 0)


if __name__ == "__main__":
    main()
