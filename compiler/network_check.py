"""Tuning records confirmed inside the whole network.

``kiln tune`` measures every candidate alone (on CPUs with its weights flushed from the caches,
``schedules.tune._evaluator``). Inside the network a kernel reads its inputs from the kernel
before it, shares the caches with its neighbours, and runs between them, and a record that won
alone can lose there (SqueezeNet, 60 minutes, timed with warm caches: the records' kernel sum
said 3.79 ms, the tuned library ran 0.99x of the untuned one). This check builds the model
twice, with the database and without, times every kernel of both in sequence (``compiler.profile.time_in_sequence``) in
alternating rounds, and keeps a record only where its kernel ran faster in sequence than the
default schedule by ``MARGIN``; for the others ``schedules.tune.keep_defaults`` lowers the
baseline, so ``kiln compile --db`` builds them with the default.

Expects the database ``kiln tune`` just wrote for the same model and options, and a host
target (the libraries run here). Guarantees that afterwards the database applies only records
confirmed in the network, and reports both libraries' end-to-end times (and, when records were
dropped, those of the library ``kiln compile --db`` now builds).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

MARGIN = 0.02  # a record must make its kernel this much faster in sequence to be kept
ROUNDS = 5  # alternating rounds of in-sequence timing (tuned, untuned)
RUNS = 10  # whole runs per round
# End-to-end rounds per ``ROUNDS`` in-sequence rounds: the same two SqueezeNet libraries measured
# three times (Zen 3, 2 cores) gave tuned/untuned 0.86, 0.88 and 1.16 over 5 rounds of 10 runs,
# 0.93, 0.90 and 0.91 over 15.
E2E_ROUNDS_PER_ROUND = 3


@dataclass
class KernelCheck:
    """One kernel compiled from a record: its time per run in sequence, with the record and with
    the default schedule (medians over the rounds), and whether the record stays."""

    name: str
    default_ms: float
    tuned_ms: float
    kept: bool


@dataclass
class NetworkCheck:
    """What the check measured: end-to-end p50s of the untuned and tuned libraries (alternating
    rounds), the tuned kernels, and ``confirmed_ms``, the p50 of the library built from the
    records kept (measured only when some were dropped; else the tuned library is that library)."""

    untuned_ms: float
    tuned_ms: float
    kernels: list[KernelCheck] = field(default_factory=list)
    confirmed_ms: float | None = None
    confirmed_untuned_ms: float | None = None  # the untuned library, timed beside it

    @property
    def dropped(self) -> list[str]:
        return [k.name for k in self.kernels if not k.kept]


def task_name(kernel: str) -> str:
    """The tuning task a library kernel comes from: TVM names the compute part of a kernel whose
    weight packing was split off ``<task>_prepacked``."""
    return kernel.removesuffix("_prepacked")


def _in_sequence(models: dict, inputs: dict, rounds: int, runs: int) -> dict[str, dict[str, float]]:
    """Per library, each kernel's time per run in sequence: the median over ``rounds`` rounds,
    the libraries alternating (and their order reversed every other round)."""
    from compiler.profile import time_in_sequence

    names = list(models)
    samples: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    for r in range(rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            per_call, _ = time_in_sequence(models[n], inputs[n], runs)
            for kernel, times in per_call.items():
                samples[n].setdefault(kernel, []).append(sum(times))
    return {n: {k: float(np.median(v)) for k, v in samples[n].items()} for n in names}


def _end_to_end(models: dict, inputs: dict, rounds: int, runs: int) -> dict[str, float]:
    """End-to-end p50s, the libraries alternating over ``E2E_ROUNDS_PER_ROUND * rounds`` rounds."""
    from compiler.runtime import alternating_calls_p50_ms

    return alternating_calls_p50_ms({n: m.timed_call(inputs[n]) for n, m in models.items()},
                                    E2E_ROUNDS_PER_ROUND * rounds, runs)


def check_in_network(model, db: str | Path, compile_options, mod, preset, threads: int,
                     rounds: int = ROUNDS, runs: int = RUNS) -> NetworkCheck:
    """Build ``model`` with the database ``db`` and without (``compile_options``: what tuning was
    for, without ``db``), compare their kernels in sequence, and keep only the records confirmed
    there (see the module docstring). ``mod``: the module ``kiln tune`` tuned (for its tasks)."""
    from dataclasses import replace

    from compiler.build import compile_model
    from compiler.runtime import load
    from schedules.tune import keep_defaults

    with tempfile.TemporaryDirectory(prefix="kiln-network-check-") as tmp:
        libs = {"tuned": Path(tmp) / "tuned.so", "untuned": Path(tmp) / "untuned.so"}
        compile_model(model, libs["tuned"], replace(compile_options, db=db))
        compile_model(model, libs["untuned"], replace(compile_options, db=None))
        models = {n: load(path, threads=threads) for n, path in libs.items()}
        schedules = models["tuned"].metadata.extra.get("kernel_schedules", {})
        tuned_kernels = [k for k, source in schedules.items() if source.startswith("tuned")]
        inputs = {n: m.random_inputs(seed=0) for n, m in models.items()}
        if not tuned_kernels:
            e2e = _end_to_end(models, inputs, rounds, runs)
            return NetworkCheck(untuned_ms=e2e["untuned"], tuned_ms=e2e["tuned"])
        sequence = _in_sequence(models, inputs, rounds, runs)
        e2e = _end_to_end(models, inputs, rounds, runs)
        checks = []
        for kernel in tuned_kernels:
            tuned, default = sequence["tuned"].get(kernel), sequence["untuned"].get(kernel)
            if tuned is None or default is None:  # not called (a view), or named otherwise untuned
                continue
            checks.append(KernelCheck(kernel, default, tuned, kept=tuned < default * (1 - MARGIN)))
        checks.sort(key=lambda k: k.tuned_ms - k.default_ms)
        result = NetworkCheck(untuned_ms=e2e["untuned"], tuned_ms=e2e["tuned"], kernels=checks)
        dropped = {task_name(k) for k in result.dropped}
        if dropped:
            changed = keep_defaults(mod, db, preset, threads, dropped)
            log.info("network check: %d of %d tuned kernels were not faster in sequence; compile keeps their "
                     "default (%s)", len(changed), len(checks), ", ".join(sorted(changed)))
            compile_model(model, libs["tuned"], replace(compile_options, db=db))
            models["tuned"] = load(libs["tuned"], threads=threads)
            again = _end_to_end(models, inputs, rounds, runs)
            result.confirmed_ms, result.confirmed_untuned_ms = again["tuned"], again["untuned"]
        return result


def format_network_check(check: NetworkCheck) -> str:
    """The check as text: each tuned kernel in sequence against its default, then the end-to-end times."""
    lines = [f"network check (each tuned kernel timed in sequence inside whole runs, beside its default; "
             f"kept when {MARGIN:.0%} faster):",
             f"{'kernel':<48} {'default ms':>10} {'tuned ms':>9} {'tuned/def':>9}  kept"]
    for k in check.kernels:
        lines.append(f"{k.name[:48]:<48} {k.default_ms:>10.3f} {k.tuned_ms:>9.3f} "
                     f"{k.tuned_ms / k.default_ms:>8.2f}x  {'yes' if k.kept else 'no: compile keeps the default'}")
    lines.append(f"end to end: untuned {check.untuned_ms:.3f} ms, with every record {check.tuned_ms:.3f} ms "
                 f"({check.tuned_ms / check.untuned_ms:.2f}x)")
    if check.confirmed_ms is not None:
        lines.append(f"with the records kept: {check.confirmed_ms:.3f} ms against untuned {check.confirmed_untuned_ms:.3f} "
                     f"ms ({check.confirmed_ms / check.confirmed_untuned_ms:.2f}x), measured side by side")
    return "\n".join(lines)
