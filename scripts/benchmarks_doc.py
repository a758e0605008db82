#!/usr/bin/env python3
"""Write docs/benchmarks.md from the result files in scripts/results/.

One section per kind of result (the script that makes it), and in it, per result file: the
command, the machine, the date and commit (where recorded), the run's settings and totals,
and its rows as a table. Every ``*.json`` there must be a result envelope
(``compiler.benchmark``); anything else stops the run with the file's name.

    python scripts/benchmarks_doc.py [--results scripts/results] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import ast
import math
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from compiler.benchmark import Result, read_result

SCRIPTS = Path(__file__).resolve().parent
# Kinds in reading order (end to end first); kinds not listed follow by name.
KIND_ORDER = ("bench", "bench_tuned", "tune_report", "real_models", "bench_recurrent", "bench_symbolic",
              "bench_dynamic_quant", "int8_report", "bench_requantize", "bench_int8_kernel", "layout_report",
              "fusion_report", "profile_zoo", "gpu_check", "bench_builder", "load_test", "kill_test",
              "fuzz_files", "fuzz_frontend", "fuzz_hypothesis")
# Kinds made by something other than a script of the same name.
KIND_TITLES = {"tune_report": "Tuning runs: records and best kernel times (`kiln tune-report`)"}
LABEL_KEYS = ("model", "case", "setting", "builder", "library", "file", "outcome", "threads")
KEY_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512fp16", "avx_vnni", "amx_tile", "amx_int8",
             "amx_bf16", "asimd", "asimddp", "asimdhp", "i8mm", "sve")
MAX_LIST = 6  # lists longer than this are left to the JSON
MAX_TEXT = 100  # and so are longer texts
MAX_COLUMNS = 10  # wider tables are shown transposed (one column per row) when their rows have distinct labels


def script_title(kind: str) -> str:
    """The first sentence of ``scripts/KIND.py``'s docstring (read, not imported), or the kind's title."""
    path = SCRIPTS / f"{kind}.py"
    if kind in KIND_TITLES or not path.exists():
        return KIND_TITLES.get(kind, f"`{kind}`")
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or kind
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    return paragraph.split(". ")[0].rstrip(".").replace("``", "`")


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of dotted keys."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def too_long(value: Any) -> bool:
    """A value a table cell cannot show: a long list, a list of objects, a paragraph of text."""
    if isinstance(value, str):
        return len(value) > MAX_TEXT
    return isinstance(value, list) and (len(value) > MAX_LIST or any(isinstance(v, (dict, list)) for v in value))


def cell(value: Any) -> str:
    """One value as Markdown table text."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value == 0 or value == int(value) and abs(value) < 1e6:
            return f"{value:g}"
        return f"{value:.3g}" if abs(value) < 1e-3 or abs(value) >= 1e5 else f"{value:.4g}"
    if isinstance(value, list):
        if not value:
            return "none"
        if too_long(value):
            return f"{len(value)} items"
        return ", ".join(cell(v) for v in value)
    if isinstance(value, dict):
        return "–" if not value else f"{len(value)} entries"
    text = str(value) if len(str(value)) <= MAX_TEXT else str(value)[:MAX_TEXT - 1] + "…"
    return text.replace("|", "\\|").replace("\n", " ")


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The rows as a Markdown table (transposed when wide); a note on the columns left to the JSON."""
    flat = [flatten(r) for r in rows]
    columns: list[str] = []
    for r in flat:
        columns += [k for k in r if k not in columns]
    left_out = [c for c in columns if all(too_long(r.get(c)) or r.get(c) in (None, []) for r in flat)
                and any(too_long(r.get(c)) for r in flat)]
    columns = [c for c in columns if c not in left_out]
    if not columns:
        return []
    label = next((k for k in LABEL_KEYS if k in columns and all(isinstance(r.get(k), (str, int)) for r in flat)), None)
    labels = [str(r.get(label)) for r in flat] if label else []
    lines: list[str] = []
    if len(columns) > MAX_COLUMNS and label and len(set(labels)) == len(labels):
        lines.append(f"| {label} | " + " | ".join(cell(v) for v in labels) + " |")
        lines.append("| --- |" + " ---: |" * len(labels))
        for c in columns:
            if c != label:
                lines.append(f"| {c} | " + " | ".join(cell(r.get(c)) for r in flat) + " |")
    else:
        numeric = [all(isinstance(r.get(c), (int, float)) and not isinstance(r.get(c), bool) or r.get(c) is None
                       for r in flat) for c in columns]
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "".join(" ---: |" if n else " --- |" for n in numeric))
        lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in flat]
    if left_out:
        lines += ["", f"Left to the JSON: {', '.join(f'`{c}`' for c in left_out)}."]
    return lines


def describe_machine(machine: Any) -> str:
    """A machine record (``compiler.benchmark.Machine`` or an older file's fields) in one line."""
    if not machine:
        return "not recorded"
    if not isinstance(machine, dict):
        return cell(machine)
    rest = dict(machine)
    parts = []
    if rest.get("cpu"):
        parts.append(str(rest.pop("cpu")))
    for key, unit in (("cores", "cores"), ("cpus", "CPUs")):
        if key in rest:
            parts.append(f"{rest.pop(key)} {unit}")
    if rest.get("host_preset"):
        parts.append(f"`--target host` = {rest.pop('host_preset')}")
    elif isinstance(rest.get("host_target"), dict):
        target = rest["host_target"]
        parts.append(f"host target {target.get('mcpu') or target.get('mtriple') or target.get('kind')}")
    rest.pop("host_preset", None)
    rest.pop("host_target", None)
    flags = rest.pop("simd_flags", None)
    if flags:
        key = [f for f in flags if f in KEY_FLAGS or f.startswith("amx")]
        parts.append(", ".join(key or flags))
    if rest.get("python"):
        parts.append(f"Python {rest.pop('python')}")
    rest.pop("python", None)
    rest.pop("arch", None)
    parts += [f"{k}: {cell(v)}" for k, v in flatten(rest).items()]
    return "; ".join(parts)


def summary_lines(summary: dict[str, Any], results: Path, out_dir: Path) -> list[str]:
    """The summary as a bullet list (PNG files in the results folder shown as images)."""
    lines = []
    for key, value in summary.items():
        if isinstance(value, str) and value.endswith(".png") and (results / Path(value).name).exists():
            link = os.path.relpath(results / Path(value).name, out_dir)
            lines.append(f"- {key}: [{Path(value).name}]({link})\n\n  ![{key}]({link})\n")
        elif isinstance(value, dict) and len(flatten(value)) > 12:
            lines.append(f"- {key}: {len(flatten(value))} entries (in the JSON)")
        elif isinstance(value, dict):
            lines.append(f"- {key}: " + (", ".join(f"{k} {cell(v)}" for k, v in flatten(value).items()) or "none"))
        else:
            lines.append(f"- {key}: {cell(value)}")
    return lines


def section(kind: str, files: list[tuple[Path, Result]], results: Path, out_dir: Path) -> list[str]:
    lines = [f"## {script_title(kind)}", ""]
    if (SCRIPTS / f"{kind}.py").exists() and kind not in KIND_TITLES:
        lines += [f"Made by `scripts/{kind}.py`.", ""]
    for path, result in sorted(files, key=lambda f: (f[1].date or "", f[0].name), reverse=True):
        link = os.path.relpath(path, out_dir)
        commit = f"commit `{result.commit[:12]}`" if result.commit else "commit not recorded"
        lines += [f"### [{path.name}]({link})", "",
                  f"- command: `{result.command}`" if result.command else "- command: not recorded",
                  f"- machine: {describe_machine(result.machine)}",
                  f"- date: {result.date or 'not recorded'}, {commit}"]
        lines += summary_lines(result.summary, results, out_dir)
        lines.append("")
        rows = table(result.rows)
        if rows:
            lines += rows + [""]
    return lines


def render(results: Path, out: Path) -> str:
    """The page for every result file in ``results`` (``ValueError`` on a file that is not an envelope)."""
    by_kind: dict[str, list[tuple[Path, Result]]] = defaultdict(list)
    for path in sorted(results.glob("*.json")):
        result = read_result(path)
        by_kind[result.kind].append((path, result))
    kinds = [k for k in KIND_ORDER if k in by_kind] + sorted(k for k in by_kind if k not in KIND_ORDER)
    out_dir = out.resolve().parent
    repo = SCRIPTS.parent
    shown = results.resolve().relative_to(repo) if results.resolve().is_relative_to(repo) else results.resolve()
    lines = ["# Benchmarks", "",
             f"Generated by `python scripts/benchmarks_doc.py` from the result files in "
             f"[`{shown}/`]({os.path.relpath(results.resolve(), out_dir)}/): re-run the scripts, not edit this page. "
             "One section per kind of result; for each result file the command, the machine, the date and commit "
             "(where recorded), the run's settings and totals, and its rows. Numbers are shown to four significant "
             "digits; the JSON files have them in full.", ""]
    lines += [f"- [{script_title(k)}](#{anchor(script_title(k))})" for k in kinds] + [""]
    for kind in kinds:
        lines += section(kind, by_kind[kind], results.resolve(), out_dir)
    return "\n".join(lines).rstrip() + "\n"


def anchor(title: str) -> str:
    """GitHub's anchor for a heading."""
    kept = "".join(ch for ch in title.lower() if ch.isalnum() or ch in " -_")
    return kept.replace(" ", "-")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=SCRIPTS / "results")
    parser.add_argument("--out", type=Path, default=SCRIPTS.parent / "docs" / "benchmarks.md")
    args = parser.parse_args()
    try:
        text = render(args.results, args.out)
    except ValueError as err:
        print(f"benchmarks_doc: {err}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
