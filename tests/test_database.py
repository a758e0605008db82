"""The durable tuning database: TVM format, partial lines, corrupt lines, locks, full disks, baselines."""

from __future__ import annotations

import errno
import json
import os
import signal
import time

import pytest
import tvm
from tvm import te
from tvm.s_tir import meta_schedule as ms

from schedules.database import BASELINE_FILE, RECORD_FILE, WORKLOAD_FILE, DurableDatabase, TuningError

TARGET = tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})


def matmul_mod(n: int = 32) -> tvm.IRModule:
    a = te.placeholder((n, n), name="A")
    b = te.placeholder((n, n), name="B")
    k = te.reduce_axis((0, n), name="k")
    c = te.compute((n, n), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="C")
    return tvm.IRModule({"main": te.create_prim_func([a, b, c])})


def record(db: DurableDatabase, mod: tvm.IRModule, seconds: float, vectorize: bool = False) -> ms.database.TuningRecord:
    """Commit a record with a real (non-empty) trace: TVM ignores records whose trace is empty."""
    workload = db.commit_workload(mod)
    sch = tvm.s_tir.Schedule(mod)
    loops = sch.get_loops(sch.get_sblock("C"))
    sch.parallel(loops[0])
    if vectorize:
        sch.unroll(loops[1])
    args = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
    rec = ms.database.TuningRecord(sch.trace, workload, [tvm.tirx.FloatImm("float64", seconds)], TARGET, args)
    db.commit_tuning_record(rec)
    return rec


def best_seconds(db: DurableDatabase, mod) -> list[float]:
    return [float(r.run_secs[0]) for r in db.get_top_k(db.commit_workload(mod), 100)]


def test_records_persist_and_tvm_reads_the_files(tmp_path):
    mod = matmul_mod()
    db = DurableDatabase(tmp_path, writable=True)
    for s in (3e-3, 1e-3, 2e-3):
        record(db, mod, s)
    db.close()
    again = DurableDatabase(tmp_path)
    assert best_seconds(again, mod) == [1e-3, 2e-3, 3e-3]
    assert len(ms.database.JSONDatabase(work_dir=str(tmp_path))) == 3  # TVM's own reader


def test_partial_last_line_is_cut_and_appends_stay_clean(tmp_path):
    mod = matmul_mod()
    db = DurableDatabase(tmp_path, writable=True)
    record(db, mod, 2e-3)
    db.close()
    with open(tmp_path / RECORD_FILE, "a") as f:
        f.write('[0,[[[],[]],[0.0005')  # what a kill mid-write leaves
    reader = DurableDatabase(tmp_path)  # readers skip it
    assert best_seconds(reader, mod) == [2e-3] and reader.skipped_lines == 1
    writer = DurableDatabase(tmp_path, writable=True)  # writers cut it off
    record(writer, mod, 1e-3)
    writer.close()
    lines = (tmp_path / RECORD_FILE).read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line) for line in lines)


def test_corrupt_lines_are_skipped_with_a_warning(tmp_path, caplog):
    mod = matmul_mod()
    db = DurableDatabase(tmp_path, writable=True)
    record(db, mod, 2e-3)
    db.close()
    with open(tmp_path / RECORD_FILE, "a") as f:
        f.write("garbage that is not json\n[7, [1, 2]]\n")
    reader = DurableDatabase(tmp_path)
    assert best_seconds(reader, mod) == [2e-3]
    assert reader.skipped_lines == 2
    assert "skipping an unreadable" in caplog.text


def test_second_writer_gets_a_clear_error(tmp_path):
    first = DurableDatabase(tmp_path, writable=True)
    with pytest.raises(TuningError, match="in use by another tuner"):
        DurableDatabase(tmp_path, writable=True)
    first.close()
    DurableDatabase(tmp_path, writable=True).close()  # free again once the first is gone


def test_a_forked_child_does_not_keep_the_lock(tmp_path):
    """The builder forks compiles; when the tuner is gone, a still-running child must not
    keep the database locked against the run that resumes."""
    first = DurableDatabase(tmp_path, writable=True)
    started, ready = os.pipe()
    child = os.fork()
    if child == 0:  # a build that outlives its tuner (fork's handlers have run by now)
        os.write(ready, b"1")
        time.sleep(3)
        os._exit(0)
    try:
        assert os.read(started, 1) == b"1"
        first.close()  # the tuner's end: its copy of the lock goes
        DurableDatabase(tmp_path, writable=True).close()
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        os.close(started), os.close(ready)


def test_failed_write_rolls_back_to_a_complete_line(tmp_path, monkeypatch):
    mod = matmul_mod()
    db = DurableDatabase(tmp_path, writable=True)
    record(db, mod, 2e-3)
    size = (tmp_path / RECORD_FILE).stat().st_size
    real_write = os.write

    def full_disk(fd, data):
        real_write(fd, data[: len(data) // 2])  # half the line lands, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises((TuningError, RuntimeError), match="No space left"):  # RuntimeError: through TVM's FFI
        record(db, mod, 1e-3)
    monkeypatch.undo()
    assert isinstance(db.write_error, TuningError)
    assert (tmp_path / RECORD_FILE).stat().st_size == size
    db.close()
    assert best_seconds(DurableDatabase(tmp_path), mod) == [2e-3]


def test_records_slower_than_the_default_schedule_are_not_applied(tmp_path):
    mod = matmul_mod()
    db = DurableDatabase(tmp_path, writable=True)
    rec = record(db, mod, 2e-3)
    db.record_baseline(rec.workload, 1e-3)  # the default schedule measured faster
    assert db.query_tuning_record(mod, TARGET, "main") is None
    assert db.query_schedule(mod, TARGET, "main") is None
    record(db, mod, 5e-4, vectorize=True)  # a record that beats the default
    db.close()
    reader = DurableDatabase(tmp_path)
    assert json.loads((tmp_path / BASELINE_FILE).read_text())
    assert float(reader.query_tuning_record(mod, TARGET, "main").run_secs[0]) == 5e-4
    assert reader.query_schedule(mod, TARGET, "main") is not None


def test_a_baseline_timed_another_way_does_not_vouch_for_records(tmp_path, monkeypatch):
    import schedules.database as database

    mod = matmul_mod()
    db = DurableDatabase(tmp_path, writable=True)
    rec = record(db, mod, 5e-4)
    db.record_baseline(rec.workload, 1e-3)  # the record beats the default, both timed the same way
    db.close()
    assert DurableDatabase(tmp_path).query_tuning_record(mod, TARGET, "main") is not None
    monkeypatch.setattr(database, "TIMING", "warm-caches")  # the way candidates are timed changed
    assert DurableDatabase(tmp_path).query_tuning_record(mod, TARGET, "main") is None


def test_missing_database_is_a_clear_error(tmp_path):
    with pytest.raises(TuningError, match="does not exist"):
        DurableDatabase(tmp_path / "nope")


def test_workload_file_is_tvm_format(tmp_path):
    db = DurableDatabase(tmp_path, writable=True)
    db.commit_workload(matmul_mod())
    db.close()
    shash, encoded = json.loads((tmp_path / WORKLOAD_FILE).read_text().splitlines()[0])
    assert shash.isdigit() and isinstance(encoded, str)


def test_records_that_pack_weights_are_stored_and_reapplied(tmp_path):
    """A trace with transform_layout (an IndexMap) is stored; TVM's own as_json cannot do it."""
    from schedules.database import record_json

    mod = matmul_mod()
    db = DurableDatabase(tmp_path, writable=True)
    workload = db.commit_workload(mod)
    sch = tvm.s_tir.Schedule(mod)
    sch.transform_layout(sch.get_sblock("C"), ("read", 1), lambda k, j: (j // 8, k, j % 8))
    args = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
    rec = ms.database.TuningRecord(sch.trace, workload, [tvm.tirx.FloatImm("float64", 1e-3)], TARGET, args)
    with pytest.raises(TypeError):
        rec.as_json()  # TVM 0.27's own serialiser
    db.commit_tuning_record(rec)
    db.close()
    again = DurableDatabase(tmp_path)
    (loaded,) = again.get_top_k(again.commit_workload(mod), 1)
    replay = tvm.s_tir.Schedule(mod)
    loaded.trace.apply_to_schedule(replay, remove_postproc=False)
    tvm.ir.assert_structural_equal(replay.mod, sch.mod)
    assert len(ms.database.JSONDatabase(work_dir=str(tmp_path))) == 1  # TVM's own reader
    plain = record(DurableDatabase(tmp_path / "b", writable=True), mod, 2e-3)
    assert record_json(plain) == json.loads(json.dumps(plain.as_json()))  # same layout as TVM's
