"""kiln tune end to end: records land durably, SIGKILL loses nothing, the next run resumes, compile applies them."""

from __future__ import annotations

import json
import math
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest

from compiler.build import compile_model
from compiler.reference import OnnxRuntimeReference, max_abs_diff
from compiler.runtime import load
from compiler.testing.tuning import complete_lines, small_model
from schedules.database import RECORD_FILE, DurableDatabase
from schedules.rules.common import SPACE_ANNOTATION
from schedules.report import tune_report
from compiler.tune import TuneOptions, tune_model
from schedules.tune import parse_budget

@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tune") / "small.onnx"
    onnx.save(small_model(), path)
    return path


def test_parse_budget():
    assert parse_budget("90s") == 90 and parse_budget("30m") == 1800 and parse_budget("1h30m") == 5400
    with pytest.raises(Exception, match="not a duration"):
        parse_budget("8 hours")


def test_cpu_candidates_are_timed_one_call_at_a_time_with_their_weights_flushed():
    from schedules.tune import COLD_REPEATS, _evaluator

    cpu, gpu = _evaluator("cpu"), _evaluator("cuda")
    assert cpu.enable_cpu_cache_flush and cpu.number == 1 and cpu.repeat == COLD_REPEATS
    assert not gpu.enable_cpu_cache_flush  # TVM's flush reads each argument at its host address


@pytest.mark.slow
def test_tune_then_compile_applies_records(model_path, tmp_path):
    db = tmp_path / "db"
    report = tune_model(model_path, db, TuneOptions(trials=8, trials_per_iter=4, progress=False, population=64))
    assert report.trials_run > 0 and report.trials_before >= 0
    assert report.stopped_by == "trials"
    assert any(t.best_ms is not None for t in report.tasks)
    # the network check ran (host target): both libraries timed end to end
    assert report.network is not None and report.network.untuned_ms > 0 and report.network.tuned_ms > 0
    assert len(DurableDatabase(db)) >= report.trials_run
    # Every kernel's default schedule was measured (a finite baseline), so a record applies only
    # when it beats it. (A bug once made every packed-weight conv default fail to run: infinite
    # baselines let slower records in, and the tuned model ran slower than the untuned one.)
    baselines = json.loads((db / "default_baselines.json").read_text())
    assert baselines and all(math.isfinite(v) for v in baselines.values()), baselines
    lib = tmp_path / "tuned.so"
    compile_model(model_path, lib, db=db)
    m = load(lib)
    x = m.random_inputs(seed=1)
    _, rel = max_abs_diff(m.run(x), OnnxRuntimeReference(model_path, 2).run(x))
    assert rel <= 1e-4
    again = tune_model(model_path, db, TuneOptions(trials=8, trials_per_iter=4, progress=False, network_check=False, population=64))
    assert again.stopped_by == "already done" and again.trials_run == 0  # trials in the db count
    # The matmul was searched in kiln's own space (ChannelVectorized's): its records are that rule's
    # traces, the default schedule first. With every baseline made unbeatable-by-nothing (as if each
    # record had measured faster), compile applies them, and the kernel says where it came from.
    records = DurableDatabase(db).get_all_tuning_records()
    assert any(SPACE_ANNOTATION in str(r.trace) and "sample_categorical" in str(r.trace) for r in records)
    baselines_file = db / "default_baselines.json"
    baselines_file.write_text(json.dumps({k: 1e9 for k in json.loads(baselines_file.read_text())}))
    compile_model(model_path, tmp_path / "forced.so", db=db)
    m = load(tmp_path / "forced.so")
    assert "tuned:ChannelVectorized" in m.metadata.extra["kernel_schedules"].values()
    _, rel = max_abs_diff(m.run(x), OnnxRuntimeReference(model_path, 2).run(x))
    assert rel <= 1e-4
    summary = tune_report(db, tmp_path / "curve.png")
    assert summary["records"] == len(DurableDatabase(db)) and summary["final_estimated_ms"] > 0
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((db / "report.json").read_text())["records"] == summary["records"]


@pytest.mark.slow
def test_budget_ends_the_run_on_time(model_path, tmp_path):
    start = time.monotonic()
    report = tune_model(model_path, tmp_path / "db", TuneOptions(budget_seconds=5, trials_per_iter=4, progress=False, network_check=False, population=64))
    assert report.stopped_by == "budget"
    assert time.monotonic() - start < 120  # ends after the batch in flight, not after every trial


def test_budget_end_leaves_tasks_metaschedule_already_ended(tmp_path):
    """At the deadline every task still searching is ended, and a task MetaSchedule has ended
    itself (its space measured through) is not ended again: TVM's check fails on that, and an
    INT8 ShuffleNet run crashed at its deadline with a traceback."""
    from types import SimpleNamespace

    from schedules.tune import _RunState

    class Scheduler:
        def __init__(self):
            self.tasks_ = [SimpleNamespace(is_terminated=True), SimpleNamespace(is_terminated=False)]

        def terminate_task(self, i):
            if self.tasks_[i].is_terminated:
                raise RuntimeError("Check failed: (!task->is_terminated) is false")
            self.tasks_[i].is_terminated = True

    database = SimpleNamespace(commit_workload=lambda mod: mod, get_top_k=lambda workload, k: [])
    contexts = [SimpleNamespace(task_name=f"t{i}", mod=i) for i in range(2)]
    state = _RunState(tmp_path, contexts, [1, 1], database, cost_model=None, total=None,
                      deadline=time.monotonic() - 1, trials_before=0, progress=False)
    scheduler = Scheduler()
    state.after_batch(scheduler, 1, 4)
    assert state.budget_hit and all(t.is_terminated for t in scheduler.tasks_)


@pytest.mark.slow  # over a minute: a tuning run killed mid-batch, then resumed
def test_sigkill_loses_no_record_and_the_next_run_resumes(model_path, tmp_path):
    db = tmp_path / "db"
    rng = random.Random(7)
    survived: list[str] = []
    kills = 0
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-m", "compiler", "tune", str(model_path), "--db", str(db),
                                 "--trials", "200", "--trials-per-iter", "4", "--population", "64", "--no-progress"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Kill at a random moment once this run has added at least one record of its own.
        deadline = time.monotonic() + 120
        while len(complete_lines(db)) <= len(survived) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        time.sleep(rng.uniform(0.0, 2.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        lines = complete_lines(db)
        assert lines[: len(survived)] == survived, "a completed record was lost or changed"
        assert len(DurableDatabase(db)) == len(lines)  # every complete line parses
        survived = lines
    assert kills == 3 and len(survived) > 0
    report = tune_model(model_path, db, TuneOptions(trials=len(survived) + 4, trials_per_iter=4, progress=False, network_check=False, population=64))
    assert report.trials_before == len(survived)
    assert complete_lines(db)[: len(survived)] == survived


@pytest.mark.slow  # over 20 s of tuning
def test_tuning_a_concat_model_tunes_the_in_place_writers(tmp_path):
    """SqueezeNet's fire module: its conv kernels write into the concat buffer (WriteConcatInPlace);
    tuning them with packed weights must work end to end, and the tuned library stays correct."""
    from tests.test_passes_fusion import fire

    path = tmp_path / "fire.onnx"
    onnx.save(fire(), path)
    db = tmp_path / "db"
    report = tune_model(path, db, TuneOptions(trials=24, trials_per_iter=4, progress=False, network_check=False, population=64))
    assert report.stopped_by == "trials"
    assert any(t.best_ms is not None for t in report.tasks if "_into_concat" in t.name)
    compile_model(path, tmp_path / "fire.so", db=db)
    m = load(tmp_path / "fire.so")
    x = m.random_inputs(seed=2)
    _, rel = max_abs_diff(m.run(x), OnnxRuntimeReference(path, 2).run(x))
    assert rel <= 1e-4


@pytest.mark.slow
def test_tune_int8_then_compile_int8_with_the_records(model_path, tmp_path):
    """`kiln tune --int8-plan` tunes the quantized model's kernels (its int8 matmul among them);
    compiling with the same plan file and the database gives the int8 model's results."""
    import numpy as np

    from compiler.build import model_input_shapes
    from compiler.frontend import import_onnx
    from compiler.pipeline import simplified_module
    from compiler.quantization import Int8Options, plan_int8
    from compiler.quantization.plan_file import save_plan
    from targets.registry import resolve_target, with_build_layout

    calibration = np.random.default_rng(2).standard_normal((8, 8, 64)).astype("float32")
    int8 = Int8Options(calibration=calibration, method="minmax")
    imported = import_onnx(model_path)
    preset = with_build_layout(resolve_target("host"), None, "int8")
    result = plan_int8(simplified_module(imported, preset), imported, preset, int8)
    plan = save_plan(result, tmp_path / "m.kq", imported.sha256, model_input_shapes(imported), preset.name, int8)
    db = tmp_path / "db"
    report = tune_model(model_path, db, TuneOptions(trials=8, trials_per_iter=4, progress=False, network_check=False, population=64,
                                                    precision="int8", int8_plan=plan))
    assert report.trials_run > 0
    # The tuned kernels are the quantized ones: some record's workload reads int8 buffers.
    from schedules.database import DurableDatabase
    from schedules.int8 import reads_int8

    database = DurableDatabase(db)
    tuned = [r.workload.mod for r in database.get_all_tuning_records()]
    database.close()
    assert any(reads_int8(next(f for _, f in mod.functions_items())) for mod in tuned), \
        "no tuning record is for an int8 kernel"
    compile_model(model_path, tmp_path / "plain.so", precision="int8", int8=int8)
    compile_model(model_path, tmp_path / "tuned.so", precision="int8", int8_plan=plan, db=db)
    plain, tuned = load(tmp_path / "plain.so"), load(tmp_path / "tuned.so")
    x = plain.random_inputs(seed=3)
    np.testing.assert_allclose(tuned.run(x)["y"], plain.run(x)["y"], rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match="calibration"):
        tune_model(model_path, tmp_path / "db2", TuneOptions(trials=4, progress=False, network_check=False, precision="int8"))


@pytest.mark.slow  # over 20 s of tuning
def test_int8_tuning_tensorizes_with_kiln_dot_intrinsic_and_stays_exact(tmp_path):
    """On a CPU with an int8 dot intrinsic, MetaSchedule's design space for int8 convs includes
    kiln's intrinsic (TVM's own spaces have none for AVX2); the tensorized candidates it
    measures compute what the default build computes, even when every record is applied."""
    import numpy as np

    from compiler.quantization import Int8Options
    from schedules.database import BASELINE_FILE
    from schedules.rules.int8 import dot_intrins_for
    from schedules.tune import tuning_target
    from targets.registry import resolve_target
    from tests.test_passes_fusion import fire

    intrins = dot_intrins_for(tuning_target(resolve_target("host"), 2))
    if not intrins:
        pytest.skip("this CPU has no int8 dot intrinsic")
    path = tmp_path / "fire.onnx"
    onnx.save(fire(), path)
    calibration = np.random.default_rng(0).uniform(-1, 1, (8, *load_shape(path))).astype("float32")
    int8 = Int8Options(calibration=calibration, method="minmax")
    db = tmp_path / "db"
    tune_model(path, db, TuneOptions(trials=24, trials_per_iter=8, progress=False, network_check=False, population=32,
                                     precision="int8", int8=int8))
    records = (db / RECORD_FILE).read_text()
    assert intrins[0].name in records  # tensorized candidates were generated and measured
    # Every record applied, faster than the default or not (the baselines set to a second).
    baselines = json.loads((db / BASELINE_FILE).read_text())
    (db / BASELINE_FILE).write_text(json.dumps({key: 1.0 for key in baselines}))
    compile_model(path, tmp_path / "plain.so", precision="int8", int8=int8)
    compile_model(path, tmp_path / "tuned.so", precision="int8", int8=int8, db=db)
    plain, tuned = load(tmp_path / "plain.so"), load(tmp_path / "tuned.so")
    assert tuned.metadata.tuned_kernels >= 2
    x = plain.random_inputs(seed=4)
    np.testing.assert_allclose(tuned.run(x)["y"], plain.run(x)["y"], rtol=1e-5, atol=1e-6)


def load_shape(path: Path) -> tuple[int, ...]:
    """The model's single input shape without its batch dimension."""
    dims = onnx.load(path).graph.input[0].type.tensor_type.shape.dim
    return tuple(d.dim_value for d in dims[1:])


@pytest.mark.slow  # about 40 s: a tuning run, then the confirmation's builds and measurements
def test_a_record_slower_than_the_default_measured_beside_it_is_not_applied(model_path, tmp_path):
    # A slow first measurement of the default lets in records that only beat that measurement.
    # Here a naive record claims a nanosecond: compile would apply it, until the default and the
    # record are measured side by side.
    from types import SimpleNamespace

    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    from schedules.builder import ForkedBuilder
    from schedules.resolved_target import resolve
    from schedules.tune import confirm_best_records, tuning_target

    db = tmp_path / "db"
    tune_model(model_path, db, TuneOptions(trials=4, trials_per_iter=4, progress=False, network_check=False, population=64))
    database = DurableDatabase(db, writable=True)
    target = tuning_target(resolve("host"), 2)
    matmul = next(r.workload for r in database.get_all_tuning_records()
                  if "matmul" in r.workload.mod.script() and "sample_categorical" in str(r.trace))
    naive = s_tir.Schedule(matmul.mod)
    naive.get_sblock("matmul")  # one instruction: TVM's database ignores a record with an empty trace
    naive = ms.database.TuningRecord(naive.trace, matmul, [1e-9], target,
                                     ms.arg_info.ArgInfo.from_prim_func(matmul.mod["main"]))
    database.commit_tuning_record(naive)
    assert database.query_tuning_record(matmul.mod, target, "main") is not None
    runner = ms.runner.LocalRunner(evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=40))
    task = SimpleNamespace(mod=matmul.mod, task_name="matmul")
    assert confirm_best_records([task], database, target, ForkedBuilder(), runner) == ["matmul"]
    assert DurableDatabase(db).query_tuning_record(matmul.mod, target, "main") is None  # kept on disk too


@pytest.mark.slow  # 20-45 s each: a tuning run, then two or three builds and their timing
@pytest.mark.parametrize("margin, kept", [(0.99, False), (-10.0, True)])
def test_network_check_keeps_exactly_the_records_whose_kernels_won_in_sequence(model_path, tmp_path, monkeypatch,
                                                                                margin, kept):
    """Every record made applicable, then the network check with a margin no record can meet (all
    dropped: compile builds the defaults again) or one every record meets (all kept)."""
    import tvm

    from compiler import network_check
    from compiler.build import CompileOptions
    from compiler.frontend import import_onnx
    from compiler.pipeline import tuning_input_pipeline
    from schedules.resolved_target import resolve

    db = tmp_path / "db"
    tune_model(model_path, db, TuneOptions(trials=8, trials_per_iter=4, progress=False, population=64,
                                           network_check=False))
    baselines_file = db / "default_baselines.json"
    baselines_file.write_text(json.dumps({k: 1e9 for k in json.loads(baselines_file.read_text())}))
    preset = resolve("host")
    with tvm.transform.PassContext(opt_level=3):
        mod = tuning_input_pipeline(preset, "fp32", None)(import_onnx(str(model_path), {}, preset.tvm_target()).mod)
    monkeypatch.setattr(network_check, "MARGIN", margin)
    check = network_check.check_in_network(model_path, db, CompileOptions(target="host"), mod, preset, threads=2,
                                           rounds=2, runs=3)
    assert check.kernels and all(k.kept is kept and k.default_ms > 0 and k.tuned_ms > 0 for k in check.kernels)
    assert (check.confirmed_ms is None) is kept  # rebuilt and timed again only when records were dropped
    compile_model(model_path, tmp_path / "after.so", db=db)
    schedules = load(tmp_path / "after.so").metadata.extra["kernel_schedules"]
    tuned = {k for k, source in schedules.items() if source.startswith("tuned")}
    assert tuned == ({k.name for k in check.kernels} if kept else set())
