"""The benchmark harness every script in ``scripts/`` uses: machine, timing, reference, result file.

- ``Machine`` / ``describe_machine()``: the CPU model, its SIMD flags (AVX2, AVX-512, VNNI, AMX,
  NEON, …), the cores this process may use, and the preset ``--target host`` picks here.
- Timing, from ``compiler.runtime`` (one implementation): ``time_calls`` (p50/p90/p99 and CPU
  time per call), ``alternating_rounds`` (runners timed in turn, round after round, a pause
  before each block), ``alternating_p50_ms`` / ``alternating_calls_p50_ms`` (the median over
  rounds of each runner's p50), and ``both_orders_p50_ms`` (the same in both runner orders).
- ``onnxruntime_reference(model, threads)``: an ONNX Runtime session at kiln's thread count.
- ``Result`` / ``write_result`` / ``read_result``: the JSON envelope of ``scripts/results/*.json``,
  which ``scripts/benchmarks_doc.py`` turns into ``docs/benchmarks.md``::

      {"kind": "bench", "command": "python scripts/bench.py --threads 2", "commit": "a709244…",
       "machine": {...}, "date": "2026-12-06", "rows": [{...}, ...], "summary": {...}}

  ``kind``: what was measured (the script's name); ``command``/``commit``: null where unknown;
  ``rows``: one dict per measured thing; ``summary`` (optional): the run's settings and totals.

Importing it needs only numpy and the TVM runtime, like ``compiler.runtime``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from compiler.runtime import (
    PAUSE_S,
    LatencyStats,
    alternating_calls_p50_ms,
    alternating_p50_ms,
    alternating_rounds,
    time_calls,
)

__all__ = [
    "ENVELOPE_FIELDS", "PAUSE_S", "LatencyStats", "Machine", "Result", "alternating_calls_p50_ms",
    "alternating_p50_ms", "alternating_rounds", "both_orders_p50_ms", "current_command", "describe_machine",
    "geometric_mean", "git_commit", "onnxruntime_reference", "parse_cpuinfo", "read_result", "time_calls",
    "write_result",
]

# Flags worth recording: the vector extensions kiln's presets and schedules choose by.
SIMD_FLAG_PREFIXES = ("avx", "amx", "fma", "f16c", "sse4", "asimd", "neon", "sve", "i8mm", "bf16", "dotprod")


# -- machine -----------------------------------------------------------------------------------


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """(CPU model name, feature flags) from the text of ``/proc/cpuinfo`` (x86 ``model name`` and
    ``flags``; ARM ``Features``, and ``Model``/``Hardware`` where there is no model name)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    name = next((fields[k] for k in ("model name", "Model", "Hardware", "cpu model") if fields.get(k)), "")
    flags = fields.get("flags") or fields.get("Features") or ""
    return name, frozenset(flags.split())


@dataclass(frozen=True)
class Machine:
    """The machine a measurement ran on."""

    cpu: str  # model name, e.g. "AMD EPYC 9R14" ("" when the system does not say)
    arch: str  # "x86_64", "aarch64"
    cores: int  # the cores this process may run on
    simd_flags: tuple[str, ...]  # the vector-extension flags among the CPU's (SIMD_FLAG_PREFIXES)
    host_preset: str | None  # the preset `--target host` builds like ("x86-vnni"), None when none matches
    host_target: dict[str, Any] = field(default_factory=dict)  # the TVM target `--target host` uses
    python: str = ""

    @classmethod
    def from_cpuinfo(cls, text: str, cores: int, arch: str | None = None, python: str | None = None,
                     extra_flags: Iterable[str] = ()) -> "Machine":
        """The description of a CPU from its ``/proc/cpuinfo`` text (``extra_flags``: flags known
        otherwise, e.g. AArch64 HWCAP bits where cpuinfo lists none)."""
        from targets.registry import PRESETS, detect_host

        arch = (arch or platform.machine()).lower()
        name, flags = parse_cpuinfo(text)
        flags = flags | frozenset(extra_flags)
        host = detect_host(flags, arch)
        preset = next((p.name for p in PRESETS.values() if p.device == "cpu" and p.target == host.target), None)
        simd = tuple(sorted(f for f in flags if f.startswith(SIMD_FLAG_PREFIXES)))
        return cls(name or platform.processor() or arch, arch, cores, simd, preset, dict(host.target),
                   python or platform.python_version())

    def to_json(self) -> dict[str, Any]:
        return {"cpu": self.cpu, "arch": self.arch, "cores": self.cores, "simd_flags": list(self.simd_flags),
                "host_preset": self.host_preset, "host_target": self.host_target, "python": self.python}


def describe_machine() -> Machine:
    """This machine (``/proc/cpuinfo``; on AArch64 without flags there, the HWCAP bits)."""
    from targets.registry import cpu_flags

    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:  # not Linux
        text = ""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return Machine.from_cpuinfo(text, cores, extra_flags=cpu_flags())


# -- timing ------------------------------------------------------------------------------------


def both_orders_p50_ms(calls: Mapping[str, Callable[[], object]], rounds: int = 3, runs: int = 10) -> dict[str, float]:
    """``alternating_calls_p50_ms`` in the given runner order and reversed, averaged: a runner that
    gains or loses from following another does so once each way."""
    forward = alternating_calls_p50_ms(calls, rounds, runs)
    backward = alternating_calls_p50_ms(dict(reversed(list(calls.items()))), rounds, runs)
    return {name: (forward[name] + backward[name]) / 2 for name in calls}


def geometric_mean(values: Iterable[float]) -> float:
    """The geometric mean of positive ``values`` (the average of ratios)."""
    logs = [math.log(v) for v in values]
    return math.exp(sum(logs) / len(logs))


def onnxruntime_reference(model, threads: int, fixed: dict | None = None,
                          providers: Sequence[str] = ("CPUExecutionProvider",)):
    """ONNX Runtime on ``model`` (a path or ``onnx.ModelProto``) with ``threads`` intra-op threads:
    pass a loaded library's ``threads`` so both run at the same count. Its ``timed_call(inputs)``
    is what the timing functions take; ``run(inputs)`` gives outputs by name."""
    from compiler.reference import OnnxRuntimeReference

    return OnnxRuntimeReference(model, threads, fixed, providers)


# -- result files ------------------------------------------------------------------------------

ENVELOPE_FIELDS = ("kind", "command", "commit", "machine", "date", "rows")


def git_commit(path: str | Path | None = None) -> str | None:
    """``git rev-parse HEAD`` of the checkout holding ``path`` (default: this package), or None
    outside a git checkout or without git."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where if where.is_dir() else where.parent,
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None


def current_command(argv: Sequence[str] | None = None) -> str:
    """How this process was started, as one shell line: ``python scripts/NAME.py ARGS``."""
    argv = list(sys.argv if argv is None else argv)
    script = argv[0] if argv else ""
    try:
        relative = os.path.relpath(script)
        script = relative if not relative.startswith("..") else script
    except ValueError:  # another drive
        pass
    return shlex.join(["python", script, *argv[1:]])


def _jsonable(value: Any) -> Any:
    """What ``json`` cannot write by itself: numpy scalars and arrays, paths, sets, dataclasses."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (Path, os.PathLike)):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if hasattr(value, "to_json"):
        return value.to_json()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


@dataclass
class Result:
    """One result file: what was measured, how, where, when, and the measurements."""

    kind: str
    rows: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)
    command: str | None = None
    commit: str | None = None
    machine: dict[str, Any] | None = None
    date: str | None = None

    @classmethod
    def new(cls, kind: str, rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any] | None = None,
            machine: Machine | Mapping[str, Any] | None = None, command: str | None = None) -> "Result":
        """A result of this run: the command, commit, machine and date filled in unless given."""
        if machine is None:
            machine = describe_machine()
        machine_json = machine.to_json() if isinstance(machine, Machine) else dict(machine)
        return cls(kind, [dict(r) for r in rows], dict(summary or {}), command or current_command(), git_commit(),
                   machine_json, time.strftime("%Y-%m-%d"))

    def to_json(self) -> dict[str, Any]:
        data = {"kind": self.kind, "command": self.command, "commit": self.commit, "machine": self.machine,
                "date": self.date, "rows": self.rows}
        if self.summary:
            data["summary"] = self.summary
        return data

    @classmethod
    def from_json(cls, data: Any, source: str = "result") -> "Result":
        """The result in ``data`` (a parsed file); ``ValueError`` naming ``source`` if it is not an envelope."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: not a result envelope (a JSON object with {', '.join(ENVELOPE_FIELDS)})")
        missing = [k for k in ENVELOPE_FIELDS if k not in data]
        extra = sorted(set(data) - set(ENVELOPE_FIELDS) - {"summary"})
        if missing or extra:
            parts = ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unknown {', '.join(extra)}"] if extra else [])
            raise ValueError(f"{source}: not a result envelope ({'; '.join(parts)})")
        if not isinstance(data["rows"], list) or not all(isinstance(r, dict) for r in data["rows"]):
            raise ValueError(f"{source}: 'rows' must be a list of objects")
        if not isinstance(data.get("summary", {}), dict):
            raise ValueError(f"{source}: 'summary' must be an object")
        return cls(data["kind"], data["rows"], data.get("summary", {}), data["command"], data["commit"],
                   data["machine"], data["date"])

    def write(self, path: str | Path) -> Path:
        """Write the envelope to ``path`` (its folder made if needed)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1, ensure_ascii=False, default=_jsonable) + "\n",
                        encoding="utf-8")
        return path


def write_result(path: str | Path, kind: str, rows: Sequence[Mapping[str, Any]],
                 summary: Mapping[str, Any] | None = None, machine: Machine | Mapping[str, Any] | None = None,
                 command: str | None = None) -> Result:
    """Write this run's result to ``path`` (see ``Result.new``) and return it."""
    result = Result.new(kind, rows, summary, machine, command)
    result.write(path)
    print(f"wrote {path}", file=sys.stderr)
    return result


def read_result(path: str | Path) -> Result:
    """The result in ``path``; ``ValueError`` if the file is not a result envelope."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err})") from None
    return Result.from_json(data, str(path))
