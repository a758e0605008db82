"""The tuning database on a really full disk: a 64 KiB tmpfs and a size-limited file.

Each test commits records until a write fails, then checks that kiln raised its own
``TuningError`` (one line naming the file and the OS error), that both files still parse
line by line (TVM's own ``JSONDatabase`` reads them), that every record committed before
the failure is there, and that writing goes on once there is room again.

Two ways to fill: ``records`` (one workload, records until the record file cannot grow)
and ``workloads`` (a new 24 KB workload per record, so the workload file fails first).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tvm.s_tir import meta_schedule as ms

from schedules.database import BASELINE_FILE, RECORD_FILE, WORKLOAD_FILE, DurableDatabase, TuningError
from tests.test_database import matmul_mod, record

REPO = Path(__file__).resolve().parent.parent
MODES = ("records", "workloads")
TMPFS_SIZE = "64k"
RLIMIT_BYTES = 64 * 1024
MAX_STEPS = 5000  # far more records than 64 KiB can hold


def _mod_for(mode: str, step: int):
    return matmul_mod(8 + step) if mode == "workloads" else matmul_mod(8)


def _seconds(step: int) -> float:
    return (step + 1) * 1e-6


def fill(db: DurableDatabase, mode: str) -> tuple[list[float], TuningError, int]:
    """Commit records until a write fails: (seconds of the committed records, the error, failed step)."""
    committed: list[float] = []
    for step in range(MAX_STEPS):
        try:
            record(db, _mod_for(mode, step), _seconds(step))
        except TuningError as err:
            return committed, err, step
        committed.append(_seconds(step))
    raise AssertionError(f"{MAX_STEPS} records written and the disk is still not full")


def check_files(work_dir: Path, expected: list[float]) -> None:
    """Both files end on a complete line, every line parses, and exactly ``expected`` is there."""
    for name in (WORKLOAD_FILE, RECORD_FILE):
        data = (work_dir / name).read_bytes()
        assert data.endswith(b"\n"), f"{name} ends in a partial line"
        for number, line in enumerate(data.decode("utf-8").splitlines(), 1):
            json.loads(line)  # raises on a torn line
    assert len((work_dir / RECORD_FILE).read_text().splitlines()) == len(expected)
    tvm_db = ms.database.JSONDatabase(work_dir=str(work_dir))  # TVM's own reader
    assert sorted(float(r.run_secs[0]) for r in tvm_db.get_all_tuning_records()) == sorted(expected)
    kiln_db = DurableDatabase(work_dir)
    assert kiln_db.skipped_lines == 0
    assert sorted(float(r.run_secs[0]) for r in kiln_db.get_all_tuning_records()) == sorted(expected)


def check_error(err: BaseException, work_dir: Path, os_message: str) -> None:
    text = str(err)
    assert isinstance(err, TuningError), f"{type(err).__name__}: {text}"
    assert "\n" not in text.strip() and str(work_dir) in text
    assert "could not write to" in text and os_message in text and "records written so far are safe" in text


# -- a real 64 KiB tmpfs --------------------------------------------------------------------------

@pytest.fixture
def small_tmpfs(tmp_path):
    """A freshly mounted 64 KiB tmpfs, unmounted afterwards; skipped where mounting is not permitted."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    mountpoint = tmp_path / "tmpfs"
    mountpoint.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mountpoint)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs not permitted here: {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], check=True)  # busy: detach now, free when closed


@pytest.mark.parametrize("mode", MODES)
def test_full_tmpfs_keeps_the_database_readable(small_tmpfs, mode):
    work_dir = small_tmpfs / "db"
    db = DurableDatabase(work_dir, writable=True)
    # Room handed back after the failure: one page for records, one workload's worth otherwise.
    ballast = small_tmpfs / "ballast"
    ballast.write_bytes(b"\0" * (4096 if mode == "records" else 24 * 1024))
    baseline_workload = db.commit_workload(_mod_for(mode, 0))
    db.record_baseline(baseline_workload, 1.0)
    baselines_before = (work_dir / BASELINE_FILE).read_bytes()

    committed, err, failed_step = fill(db, mode)
    check_error(err, work_dir, "No space left on device")
    assert db.write_error is not None
    assert committed, "the first record already failed: the test filesystem is too small"
    assert (WORKLOAD_FILE if mode == "workloads" else RECORD_FILE) in str(err)
    if mode == "records":  # no page left at all: the baselines' atomic rewrite fails too
        with pytest.raises(TuningError, match="No space left on device"):
            db.record_baseline(baseline_workload, 2.0)
    assert (work_dir / BASELINE_FILE).read_bytes() == baselines_before
    assert not list(work_dir.glob("*.partial"))
    db.close()
    check_files(work_dir, committed)

    # The next run opens the full database, still cannot write, then goes on once there is room.
    db = DurableDatabase(work_dir, writable=True)
    try:
        assert len(db) == len(committed)
        with pytest.raises(TuningError, match="No space left on device"):
            record(db, _mod_for(mode, failed_step), _seconds(failed_step))
        ballast.unlink()
        record(db, _mod_for(mode, failed_step), _seconds(failed_step))
    finally:
        db.close()
    check_files(work_dir, [*committed, _seconds(failed_step)])


# -- a size-limited file: RLIMIT_FSIZE in a subprocess --------------------------------------------

CHILD = """
import json, resource, signal, sys
from pathlib import Path
from schedules.database import DurableDatabase
from tests.test_database_diskfull import _mod_for, _seconds, fill
from tests.test_database import record

work_dir, mode, limit = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
db = DurableDatabase(work_dir, writable=True)
committed, err, step = fill(db, mode)
result = {"committed": committed, "error_type": type(err).__name__, "error": str(err),
          "write_error": type(db.write_error).__name__, "failed_step": step,
          "sizes": [(work_dir / name).stat().st_size for name in sys.argv[4:]]}
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # room again: the same database goes on
record(db, _mod_for(mode, step), _seconds(step))
db.close()
print(json.dumps(result))
"""


@pytest.mark.parametrize("mode", MODES)
def test_size_limited_file_keeps_the_database_readable(tmp_path, mode):
    work_dir = tmp_path / "db"
    done = subprocess.run([sys.executable, "-c", CHILD, str(work_dir), mode, str(RLIMIT_BYTES),
                           WORKLOAD_FILE, RECORD_FILE],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["error_type"] == "TuningError" and result["write_error"] == "TuningError"
    err = TuningError(result["error"])
    check_error(err, work_dir, "File too large")
    assert (WORKLOAD_FILE if mode == "workloads" else RECORD_FILE) in result["error"]
    committed = result["committed"]
    assert committed
    assert all(size <= RLIMIT_BYTES for size in result["sizes"])  # cut back to the last complete line
    check_files(work_dir, [*committed, _seconds(result["failed_step"])])
