#!/usr/bin/env python3
"""Fuzz the files kiln reads: every damaged file must end in one clean error, never a traceback.

File kinds, each damaged by truncation, bit flips, zero length, random bytes and (for the
text files) valid JSON of the wrong shape:

- ``library``: a compiled ``.so``, through ``kiln inspect`` and ``kiln run``;
- ``inputs``: an ``.npz`` for ``kiln run --inputs``;
- ``calibration``: an ``.npz`` for int8 calibration (``compiler.quantization.calibration_data``);
- ``tuning-db``: each file of a tuning database (workloads, records, baselines, run log),
  through ``kiln tune-report`` and the database loader ``compile --db`` uses;
- ``model``: an ONNX file, through ``kiln inspect``;
- ``plan``: an INT8 plan (``kiln quantize -o``), through ``load_plan`` and, where it refuses the
  file, ``kiln compile --int8-plan``; besides byte damage, its ``plan.json`` is replaced by valid
  JSON of the wrong shape or has one field replaced so.

Commands run in this process through ``compiler.cli.main``, which turns kiln's errors into
exit code 2 and one line on stderr; any other exception escaping it is a traceback (a bug).

    python scripts/fuzz_files.py --cases 2500 --seed 0 --out scripts/results/fuzz_files.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import shutil
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

KINDS = ("library", "inputs", "calibration", "tuning-db", "model", "plan")


def damage(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One damaged variant of ``data``: (what was done, the bytes)."""
    how = rng.choice(["truncate", "flip", "flips", "zero", "random", "tail"])
    if how == "truncate" and data:
        cut = rng.randrange(len(data))
        return f"truncate@{cut}", data[:cut]
    if how in ("flip", "flips") and data:
        out = bytearray(data)
        for _ in range(1 if how == "flip" else rng.randint(2, 64)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        return how, bytes(out)
    if how == "zero":
        return how, b""
    if how == "tail" and data:
        cut = rng.randrange(max(1, len(data) - 64), len(data))
        return f"tail@{cut}", data[:cut] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    return "random", bytes(rng.randrange(256) for _ in range(rng.choice([1, 16, 1000, 100_000])))


WRONG_SHAPES = ["null", "[]", "{}", "[null, null]", '["a", {}]', "[0, [null, null]]", "[0, [1, \"x\"]]", "1e999",
                '{"a": null}', '{"trials": "x"}', "[" * 5000 + "]" * 5000, '"text"', "[-1, [[], [1.0]]]"]


def wrong_json_lines(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """A text file with one line replaced by valid JSON of the wrong shape."""
    lines = data.decode("utf-8", "replace").splitlines() or [""]
    i = rng.randrange(len(lines))
    lines[i] = rng.choice(WRONG_SHAPES)
    return f"json-line@{i}", ("\n".join(lines) + "\n").encode()


def make_bases(work: Path) -> dict[str, Path]:
    """Undamaged files of every kind (a tiny library, its inputs, a small tuning database)."""
    import tvm
    from tvm import te
    from tvm.s_tir import meta_schedule as ms

    from compiler.build import compile_model
    from compiler.examples import example_model
    from compiler.runtime import load
    from schedules.database import BASELINE_FILE, DurableDatabase
    from schedules.tune import LOG_FILE

    work.mkdir(parents=True, exist_ok=True)
    model = work / "tiny.onnx"
    onnx.save(example_model("tiny"), model)
    lib = work / "tiny.so"
    compile_model(model, lib, target="host")
    inputs = work / "inputs.npz"
    np.savez(inputs, **load(lib, threads=1).random_inputs())
    calibration = work / "calibration.npz"
    np.savez(calibration, data=np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32))
    plan = work / "tiny.kq"
    code, err = run_cli(["quantize", str(model), "--calibration", str(calibration), "--weight-rounding", "gptq",
                         "--bias-correction", "-o", str(plan)])
    if code != 0:
        raise SystemExit(f"could not write the base INT8 plan: {err}")

    db_dir = work / "db"
    db = DurableDatabase(db_dir, writable=True)
    a, b = te.placeholder((16, 16), name="A"), te.placeholder((16, 16), name="B")
    k = te.reduce_axis((0, 16), name="k")
    c = te.compute((16, 16), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="C")
    mod = tvm.IRModule({"main": te.create_prim_func([a, b, c])})
    workload = db.commit_workload(mod)
    sch = tvm.s_tir.Schedule(mod)
    sch.parallel(sch.get_loops(sch.get_sblock("C"))[0])
    target = tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})
    for seconds in (2e-5, 1e-5):
        db.commit_tuning_record(ms.database.TuningRecord(sch.trace, workload, [tvm.tirx.FloatImm("float64", seconds)],
                                                         target, ms.arg_info.ArgInfo.from_prim_func(mod["main"])))
    db.close()
    (db_dir / BASELINE_FILE).write_text(json.dumps({"w": 1e-4}))
    (db_dir / LOG_FILE).write_text("".join(json.dumps({"trials": t, "elapsed_s": 1.0 * t, "tasks": 1, "tasks_measured": 1,
                                                       "estimated_ms": 0.5 / t}) + "\n" for t in (1, 2, 3)))
    return {"model": model, "library": lib, "inputs": inputs, "calibration": calibration, "tuning-db": db_dir,
            "plan": plan}


PLACEHOLDER = "<kiln-fuzz-wrong-shape>"


def wrong_plan_json(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """The plan archive with ``plan.json`` (or one of its top-level fields) replaced by valid JSON of
    the wrong shape."""
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    document = json.loads(entries["plan.json"])
    wrong = rng.choice(WRONG_SHAPES)
    if rng.random() < 0.3:
        how, entries["plan.json"] = "plan.json", wrong.encode()
    else:  # a placeholder spliced out after dumping: WRONG_SHAPES holds JSON json.loads cannot nest
        field = rng.choice(sorted(document))
        section = document[field]
        if isinstance(section, dict) and section and rng.random() < 0.6:
            key = rng.choice(sorted(section))
            how, section[key] = f"{field}.{key}", PLACEHOLDER
        else:
            how, document[field] = field, PLACEHOLDER
        entries["plan.json"] = json.dumps(document).replace(json.dumps(PLACEHOLDER), wrong, 1).encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return f"json:{how}", out.getvalue()


def run_cli(args: list[str]) -> tuple[int | None, str]:
    """``kiln ARGS`` in this process: (exit code, stderr), or (None, traceback) when an exception escapes."""
    from compiler.cli import main

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return main(args), err.getvalue()
    except SystemExit as exit_:  # argparse
        return int(exit_.code or 0), err.getvalue()
    except Exception:
        return None, traceback.format_exc()


def one_case(kind: str, bases: dict[str, Path], case_dir: Path, rng: random.Random) -> tuple[str, list[tuple]]:
    """Damage one file of ``kind`` and run the commands that read it: (what was done, results)."""
    from targets.errors import KilnError
    from compiler.quantization.calibration_data import load_calibration
    from compiler.runtime import load
    from schedules.database import DurableDatabase

    if kind == "tuning-db":
        db = case_dir / "db"
        shutil.copytree(bases["tuning-db"], db)
        victim = rng.choice(sorted(p for p in db.iterdir() if p.is_file()))
        data = victim.read_bytes()
        how, damaged = wrong_json_lines(data, rng) if rng.random() < 0.4 else damage(data, rng)
        victim.write_bytes(damaged)
        results = [("tune-report", *run_cli(["tune-report", str(db), "-o", str(case_dir / "curve.png")]))]
        try:
            DurableDatabase(db).close()
            results.append(("database", 0, ""))
        except KilnError as err:
            results.append(("database", 2, str(err)))
        except Exception:
            results.append(("database", None, traceback.format_exc()))
        return f"{victim.name}:{how}", results

    source = bases[kind]
    path = case_dir / source.name
    if kind == "plan" and rng.random() < 0.4:
        how, damaged = wrong_plan_json(source.read_bytes(), rng)
    else:
        how, damaged = damage(source.read_bytes(), rng)
    path.write_bytes(damaged)
    if kind == "plan":
        return how, plan_results(path, bases, case_dir)
    if kind == "library":
        results = [("inspect", *run_cli(["inspect", str(path)]))]
        try:
            load(path, threads=1)
            results.append(("load", 0, "loaded"))  # only an undamaged file may load
        except KilnError as err:
            results.append(("load", 2, str(err)))
        except Exception:
            results.append(("load", None, traceback.format_exc()))
        return how, results
    if kind == "inputs":
        return how, [("run --inputs", *run_cli(["run", str(bases["library"]), "--inputs", str(path), "--threads", "1"]))]
    if kind == "calibration":
        from targets.library_format import TensorSpec

        try:
            load_calibration(path, [TensorSpec("data", (1, 3, 32, 32), "float32")])
            return how, [("calibration", 0, "")]
        except KilnError as err:
            return how, [("calibration", 2, str(err))]
        except Exception:
            return how, [("calibration", None, traceback.format_exc())]
    return how, [("inspect model", *run_cli(["inspect", str(path)]))]


def plan_results(path: Path, bases: dict[str, Path], case_dir: Path) -> list[tuple]:
    """``load_plan`` on a damaged plan; where it refuses the file, ``kiln compile --int8-plan`` too."""
    from compiler.build import model_input_shapes
    from compiler.frontend import import_onnx
    from compiler.quantization.plan_file import load_plan
    from targets.errors import KilnError

    imported = import_onnx(bases["model"])
    try:
        load_plan(path, imported.sha256, model_input_shapes(imported), weight_bits=8, channel_multiple=4,
                  signed_activations=False)
        return [("load_plan", 0, "")]  # damage the format tolerates (e.g. a report field): it loads
    except KilnError as err:
        results = [("load_plan", 2, str(err))]
    except Exception:
        return [("load_plan", None, traceback.format_exc())]
    results.append(("compile --int8-plan", *run_cli(["compile", str(bases["model"]), "--int8-plan", str(path),
                                                      "-o", str(case_dir / "out.so")])))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="scripts/results/fuzz_files.json")
    args = parser.parse_args()

    from compiler.benchmark import write_result

    rng = random.Random(args.seed)
    outcomes: dict[str, Counter] = {kind: Counter() for kind in KINDS}
    tracebacks: list[dict] = []
    multi_line: list[dict] = []
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="kiln-fuzz-files-") as tmp:
        bases = make_bases(Path(tmp) / "bases")
        for number in range(args.cases):
            kind = KINDS[number % len(KINDS)]
            case_dir = Path(tmp) / f"case{number}"
            case_dir.mkdir()
            how, results = one_case(kind, bases, case_dir, rng)
            for command, code, message in results:
                outcomes[kind][f"{command}: {'traceback' if code is None else f'exit {code}'}"] += 1
                if code is None:
                    tracebacks.append({"kind": kind, "damage": how, "command": command,
                                       "traceback": message.strip().splitlines()[-1]})
                elif code == 2 and len(message.strip().splitlines()) != 1:
                    multi_line.append({"kind": kind, "damage": how, "command": command, "stderr": message[:500]})
            shutil.rmtree(case_dir, ignore_errors=True)
    rows = [{"file": kind, "result": outcome, "cases": count}
            for kind, counter in outcomes.items() for outcome, count in sorted(counter.items())]
    summary = {"cases": args.cases, "seconds": round(time.time() - start, 1),
               "tracebacks": len(tracebacks), "multi_line_errors": len(multi_line),
               "first_tracebacks": tracebacks[:20], "first_multi_line_errors": multi_line[:10]}
    write_result(args.out, "fuzz_files", rows, summary,
                 command=f"python scripts/fuzz_files.py --cases {args.cases} --seed {args.seed}")
    print(json.dumps({k: summary[k] for k in ("cases", "tracebacks", "multi_line_errors", "seconds")}))
    for t in tracebacks[:10]:
        print(t)
    raise SystemExit(1 if tracebacks or multi_line else 0)


if __name__ == "__main__":
    main()
