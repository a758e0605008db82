"""``kiln tune-report``: what a tuning database holds, and how the estimate improved."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

from schedules.database import RECORD_FILE, WORKLOAD_FILE, TuningError, _read_lines
from schedules.tune import LOG_FILE

log = logging.getLogger(__name__)


LOG_FIELDS = ("trials", "elapsed_s", "tasks", "tasks_measured")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read_log(path: Path) -> list[dict]:
    """The run log's entries that have the fields the report reads (a damaged line is skipped)."""
    return [e for e in _read_lines(path) if isinstance(e, dict) and all(_is_number(e.get(k)) for k in LOG_FIELDS)
            and (e.get("estimated_ms") is None or _is_number(e["estimated_ms"]))]


def _latencies(record) -> tuple[int, list[float]] | None:
    """(workload index, measured seconds) of a record line ``[index, [trace, [seconds...], ...]]``;
    None for a line of another shape (a damaged file)."""
    try:
        index, body = record
        seconds = [float(s) for s in (body[1] or [])]
        return (index, seconds) if isinstance(index, int) and not isinstance(index, bool) else None
    except (TypeError, ValueError, IndexError, KeyError):
        return None


def tune_report(db: str | Path, png: str | Path | None = None) -> dict:
    """JSON summary of ``db`` (records per kernel, best latency) and a PNG curve of the run log."""
    work_dir = Path(db)
    if not (work_dir / WORKLOAD_FILE).is_file():
        raise TuningError(f"{work_dir} is not a tuning database (no {WORKLOAD_FILE}); create one with `kiln tune`")
    records = [r for r in map(_latencies, _read_lines(work_dir / RECORD_FILE)) if r is not None]
    best: dict[int, float] = {}
    counts: dict[int, int] = defaultdict(int)
    for index, secs in records:
        counts[index] += 1
        if secs and all(s < 1e9 for s in secs):
            best[index] = min(best.get(index, float("inf")), 1e3 * sum(secs) / len(secs))
    entries = _read_log(work_dir / LOG_FILE)
    summary = {
        "db": str(work_dir),
        "workloads": len(_read_lines(work_dir / WORKLOAD_FILE)),
        "records": len(records),
        "kernels": [{"workload": i, "records": counts[i], "best_ms": best.get(i)} for i in sorted(counts)],
        "log_entries": len(entries),
        "final_estimated_ms": next((e["estimated_ms"] for e in reversed(entries)
                                    if e.get("estimated_ms") is not None and e["tasks_measured"] == e["tasks"]),
                                   None),
    }
    png_path = Path(png) if png else work_dir / "curve.png"
    if entries:
        _plot(entries, png_path)
        summary["curve"] = str(png_path)
    (work_dir / "report.json").write_text(json.dumps(summary, indent=2))
    summary["json"] = str(work_dir / "report.json")
    return summary


def _plot(entries: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = [e for e in entries if e.get("estimated_ms") is not None and e["tasks_measured"] == e["tasks"]]
    fig, (by_trials, by_time) = plt.subplots(1, 2, figsize=(10, 4))
    trials = [e["trials"] for e in full]
    est = [e["estimated_ms"] for e in full]
    # Elapsed time restarts with every resumed run: plot cumulative wall clock.
    elapsed, offset, last = [], 0.0, 0.0
    for e in entries:
        if e["elapsed_s"] < last:
            offset += last
        last = e["elapsed_s"]
        if e in full:
            elapsed.append((offset + e["elapsed_s"]) / 60)
    best = [min(est[: i + 1]) for i in range(len(est))]
    by_trials.plot(trials, best, marker=".")
    by_trials.set_xlabel("trials")
    by_trials.set_ylabel("estimated kernel time (ms), best so far")
    by_time.plot(elapsed, best, marker=".", color="tab:orange")
    by_time.set_xlabel("tuning time (min)")
    for ax in (by_trials, by_time):
        ax.grid(alpha=0.3)
    fig.suptitle("kiln tune: estimated end-to-end latency")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
