"""A tuning database that survives ``kill -9``: TVM's JSON format, written durably.

Files are TVM's own (``database_workload.json``, ``database_tuning_record.json``, one
JSON value per line), so ``ms.database.JSONDatabase`` reads them. What kiln adds:

- every line is appended in one ``write`` and ``fsync``-ed before the call returns, so a
  record reported as committed is on disk;
- a partial last line (a kill or a full disk mid-write) is cut off on open, and any
  unreadable line is skipped with a warning instead of failing the whole database;
- one writer per directory: a second tuner gets ``TuningError`` naming the holder;
- a failed write (e.g. disk full) is rolled back to the last complete line and raised as
  ``TuningError`` (registered with TVM's FFI, so it stays one when TVM's C++ calls us).

Queries are answered by TVM's ``MemoryDatabase`` holding the same records.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import weakref
from pathlib import Path

import tvm_ffi
from tvm.ir import IRModule
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.database import PyDatabase, TuningRecord, Workload

from targets.errors import KilnError

log = logging.getLogger(__name__)

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
LOCK_FILE = ".kiln-tune.lock"
# Measured time of kiln's default schedule per workload (structural hash → seconds); a tuned
# record is applied only when it beats this, so a partially tuned build is never slower.
BASELINE_FILE = "default_baselines.json"
# How ``schedules.tune`` times a candidate (weights flushed from the caches before each call):
# a baseline timed another way is not comparable with today's records.
TIMING = "cold-weights"


@tvm_ffi.register_error
class TuningError(KilnError):
    """The tuning directory cannot be used (locked by another tuner, unwritable, disk full)."""


def _plain(obj):
    """TVM containers and numbers as plain Python (what ``json.dumps`` accepts)."""
    from tvm.tirx import FloatImm, IntImm

    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (IntImm, FloatImm)):
        return obj.value
    if isinstance(obj, dict) or hasattr(obj, "items"):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) or hasattr(obj, "__len__"):
        return [_plain(x) for x in obj]
    raise TypeError(f"cannot store a {type(obj).__name__} in the tuning database")


def record_json(record: TuningRecord) -> list:
    """``record.as_json()``, also for traces that change layouts.

    TVM 0.27's ``TuningRecord.as_json`` raises TypeError on the ``IndexMap`` a
    ``transform_layout`` (weight packing) leaves in a trace; ``Trace.as_json`` stores it as
    a JSON string, which ``TuningRecord.from_json`` reads back. Same layout as TVM's
    (trace, run_secs, target, args_info), so TVM's own ``JSONDatabase`` reads the file.
    """
    run_secs = None if record.run_secs is None else [float(x) for x in record.run_secs]
    target = None if record.target is None else _plain(record.target.export())
    args = None if record.args_info is None else [_plain(a.as_json()) for a in record.args_info]
    return [_plain(record.trace.as_json(remove_postproc=False)), run_secs, target, args]


def _drop_partial_last_line(path: Path) -> None:
    """Cut a file back to its last newline (what an interrupted append leaves behind)."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        log.warning("%s: dropping a partial last line (%d bytes) left by an interrupted run", path, len(data) - keep)
        with open(path, "r+b") as f:
            f.truncate(keep)
            os.fsync(f.fileno())


def _read_lines(path: Path) -> list[object | None]:
    """Each line parsed as JSON; None (with a warning) where a line is unreadable."""
    if not path.exists():
        return []
    values: list[object | None] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            try:
                values.append(json.loads(line))
            except (ValueError, RecursionError) as err:  # not JSON, or nested too deep to parse
                log.warning("%s:%d: skipping an unreadable line (%s)", path, number, type(err).__name__)
                values.append(None)
    return values


def _close_in_child(database: "DurableDatabase | None") -> None:
    """In a forked child: drop its copy of the lock file (the parent keeps the lock)."""
    if database is not None and database._lock_file is not None:
        database._lock_file.close()
        database._lock_file = None


@derived_object
class DurableDatabase(PyDatabase):
    """TVM JSON database in ``work_dir``; ``writable=True`` takes the directory's lock."""

    def __init__(self, work_dir: str | Path, writable: bool = False, module_equality: str = "structural"):
        super().__init__()
        self.work_dir = Path(work_dir)
        self.writable = writable
        self.skipped_lines = 0
        # The first failed write; TVM's C++ callers turn our exception into a RuntimeError,
        # so the tuner looks here to report it as what it is.
        self.write_error: TuningError | None = None
        self._memory = ms.database.MemoryDatabase(module_equality=module_equality)
        self._workloads: list[Workload | None] = []
        self._lock_file = None
        self.baselines: dict[str, float] = {}
        if writable:
            self._take_lock()
            for name in (WORKLOAD_FILE, RECORD_FILE):
                _drop_partial_last_line(self.work_dir / name)
        elif not self.work_dir.is_dir():
            raise TuningError(f"tuning database {self.work_dir} does not exist; create it with `kiln tune --db`")
        self._load()

    # -- opening -------------------------------------------------------------------------------
    def _take_lock(self) -> None:
        try:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            self._lock_file = open(self.work_dir / LOCK_FILE, "a+")
        except OSError as err:
            raise TuningError(f"cannot use {self.work_dir} as a tuning database: {err}") from None
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.seek(0)
            holder = self._lock_file.read().strip() or "another process"
            self._lock_file.close()
            raise TuningError(
                f"{self.work_dir} is in use by another tuner ({holder}); wait for it or use another --db"
            ) from None
        self._lock_file.seek(0)
        self._lock_file.truncate()
        self._lock_file.write(f"pid {os.getpid()}\n")
        self._lock_file.flush()
        # A forked child (the builder's compiles) shares the locked file description: left open
        # there, the lock outlives a killed tuner until its last build ends, and the run that
        # resumes is refused as "in use" (seen on a fast machine). Children close their copy.
        os.register_at_fork(after_in_child=lambda ref=weakref.ref(self): _close_in_child(ref()))

    def _load(self) -> None:
        baseline_path = self.work_dir / BASELINE_FILE
        if baseline_path.is_file():
            try:
                self.baselines = {str(k): float(v) for k, v in json.loads(baseline_path.read_text()).items()}
            except (ValueError, AttributeError, TypeError, RecursionError) as err:  # not JSON, not an object, null
                log.warning("%s: unreadable (%s); tuned records are applied without the default-schedule check",
                            baseline_path, err)
        for value in _read_lines(self.work_dir / WORKLOAD_FILE):
            workload = None
            if value is not None:
                try:
                    workload = self._memory.commit_workload(Workload.from_json(value).mod)
                except Exception as err:  # TVM raises its own types for a malformed module
                    log.warning("%s: skipping an unreadable workload (%s)", WORKLOAD_FILE, str(err)[:200])
            self.skipped_lines += workload is None
            self._workloads.append(workload)
        for value in _read_lines(self.work_dir / RECORD_FILE):
            if value is None:
                self.skipped_lines += 1
                continue
            try:
                index, record_json = value  # type: ignore[misc]
                workload = self._workloads[index]
                if workload is None:
                    raise ValueError(f"its workload #{index} is unreadable")
                self._memory.commit_tuning_record(TuningRecord.from_json(record_json, workload))
            except Exception as err:  # malformed JSON structure or TVM refusing the trace
                log.warning("%s: skipping an unreadable record (%s)", RECORD_FILE, str(err)[:200])
                self.skipped_lines += 1

    def close(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    # -- durable appends -----------------------------------------------------------------------
    def _append(self, name: str, value: object) -> None:
        if not self.writable:
            raise TuningError(f"{self.work_dir} was opened read-only")
        path = self.work_dir / name
        line = (json.dumps(value, separators=(",", ":")) + "\n").encode("utf-8")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            rest = memoryview(line)
            while rest:  # a short write (the disk filled mid-line) is retried to get the real error
                written = os.write(fd, rest)
                if written == 0:
                    raise OSError(f"no progress writing {len(rest)} of {len(line)} bytes")
                rest = rest[written:]
            os.fsync(fd)
        except OSError as err:
            os.ftruncate(fd, start)  # keep the file ending on a complete line
            self.write_error = TuningError(f"could not write to {path} ({err}); records written so far are safe")
            raise self.write_error from None
        finally:
            os.close(fd)

    # -- default-schedule baselines -------------------------------------------------------------
    @staticmethod
    def workload_key(workload: Workload) -> str:
        """TVM's structural hash of the workload, tagged with the default rules' version.

        A baseline measured with other default rules, or timed another way, does not vouch for
        today's defaults: records for such kernels are not applied until ``kiln tune`` measures
        them again.
        """
        from schedules.defaults import RULES_VERSION

        return f"{workload.as_json()[0]}@{RULES_VERSION}@{TIMING}"

    def record_baseline(self, workload: Workload, seconds: float) -> None:
        """Remember the measured time of kiln's default schedule for ``workload`` (atomic write)."""
        baselines = {**self.baselines, self.workload_key(workload): seconds}
        path = self.work_dir / BASELINE_FILE
        partial = path.with_name(path.name + ".partial")
        try:
            with open(partial, "w", encoding="utf-8") as f:
                json.dump(baselines, f)
                f.flush()
                os.fsync(f.fileno())
            partial.replace(path)
        except OSError as err:
            partial.unlink(missing_ok=True)  # the previous baseline file is untouched
            self.write_error = TuningError(f"could not write to {path} ({err}); records written so far are safe")
            raise self.write_error from None
        self.baselines = baselines

    def _beats_default(self, record: TuningRecord | None) -> bool:
        if record is None:
            return False
        baseline = self.baselines.get(self.workload_key(record.workload))
        secs = [float(s) for s in record.run_secs] if record.run_secs else []
        if baseline is None:  # never compared with today's default schedule: keep the default
            return False
        return bool(secs) and sum(secs) / len(secs) < baseline

    # -- the Database interface ----------------------------------------------------------------
    def has_workload(self, mod: IRModule) -> bool:
        return self._memory.has_workload(mod)

    def commit_workload(self, mod: IRModule) -> Workload:
        workload = self._memory.commit_workload(mod)
        # Checked against the file's list, not the memory: a workload whose line failed to
        # write (disk full) is in memory but not on disk, and is written on the next commit.
        if not any(known is not None and known.same_as(workload) for known in self._workloads):
            if self.writable:
                self._append(WORKLOAD_FILE, workload.as_json())
            self._workloads.append(workload)
        return workload

    def _index_of(self, workload: Workload) -> int:
        for i, known in enumerate(self._workloads):
            if known is not None and known.same_as(workload):
                return i
        self.commit_workload(workload.mod)
        return self._index_of(self._memory.commit_workload(workload.mod))

    def commit_tuning_record(self, record: TuningRecord) -> None:
        index = self._index_of(record.workload)
        self._append(RECORD_FILE, [index, record_json(record)])
        self._memory.commit_tuning_record(record)

    def get_top_k(self, workload: Workload, top_k: int) -> list[TuningRecord]:
        return self._memory.get_top_k(workload, top_k)

    def get_all_tuning_records(self) -> list[TuningRecord]:
        return self._memory.get_all_tuning_records()

    # Queries (what MetaScheduleApplyDatabase asks) answer only with records faster than the default.
    def query_tuning_record(self, mod: IRModule, target, workload_name: str):
        record = self._memory.query_tuning_record(mod, target, workload_name)
        return record if self._beats_default(record) else None

    def query_schedule(self, mod: IRModule, target, workload_name: str):
        if self.query_tuning_record(mod, target, workload_name) is None:
            return None
        return self._memory.query_schedule(mod, target, workload_name)

    def query_ir_module(self, mod: IRModule, target, workload_name: str):
        if self.query_tuning_record(mod, target, workload_name) is None:
            return None
        return self._memory.query_ir_module(mod, target, workload_name)

    def __len__(self) -> int:
        return len(self._memory)


def apply_database_pass(work_dir: str | Path):
    """A Relax pass applying the best record of each kernel from kiln's database in ``work_dir``.

    Kernels with a record are replaced by their tuned schedule and marked scheduled;
    the others are left for the default schedules.
    """
    import tvm
    from tvm import relax

    @tvm.transform.module_pass(opt_level=0, name="ApplyTuningDatabase")
    def _apply(mod: IRModule, _ctx) -> IRModule:
        database = DurableDatabase(work_dir)
        with database:
            return relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)

    return _apply
