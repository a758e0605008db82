"""``kiln tune``: MetaSchedule tuning that runs unattended, resumes, and stops on budget.

Expects an ONNX model and a tuning directory. Guarantees that every measured record is
in the directory's durable database before the next batch starts (``DurableDatabase``),
so a run killed at any moment loses nothing measured, and the next run continues from
there: trials already in the database count toward ``--trials``, the evolutionary
search starts from the best records, and the XGBoost cost model is reloaded from its
last checkpoint.

TVM's pieces do the work: task extraction, post-order-apply design spaces, the
evolutionary search, the gradient task scheduler (weights tasks by their share of
end-to-end latency; ``schedules.scheduler`` commits each batch as soon as it is measured), the XGBoost cost model, ``LocalRunner`` / ``RPCRunner``. kiln adds
the in-process builder (``schedules.builder``), the durable database, skipping tasks
with nothing to search, the wall-clock budget, progress and the run log.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from targets.errors import KilnError

log = logging.getLogger(__name__)

LOG_FILE = "tuning_log.jsonl"
COST_MODEL_FILE = "cost_model.tar"
DEFAULT_TRIALS_PER_TASK = 32


@dataclass
class SearchOptions:
    """How long and where to search: trial count, wall clock, per-task cap, RPC boards."""

    trials: int | None = None  # total for this model, counting trials already in the database
    budget_seconds: float | None = None
    per_task: int | None = None
    trials_per_iter: int = 16
    rpc_tracker: str | None = None  # "host:port"
    rpc_key: str | None = None
    # tracker addresses the user vouches for (a private network they control): no warning
    rpc_trust: tuple[str, ...] = ()
    seed: int = 0
    progress: bool = True
    # Evolutionary search population (TVM's default 512); smaller means quicker batches.
    population: int = 512
    # "kiln": kernels whose default rule is tunable are searched in that rule's space
    # (schedules.space), the others in MetaSchedule's; "generic": MetaSchedule's for all.
    space: str = "kiln"


@dataclass
class TaskSummary:
    name: str
    weight: float
    trials: int
    best_ms: float | None
    note: str = ""


@dataclass
class TuneReport:
    db: str
    target: str
    threads: int
    trials_before: int
    trials_run: int
    seconds: float
    stopped_by: str
    estimated_ms: float | None
    builder_seconds: float
    tasks: list[TaskSummary]
    # the whole-network check that follows a CPU search on this machine (compiler.network_check's
    # NetworkCheck; schedules/ does not import compiler/)
    network: object | None = None

    def to_json(self) -> dict:
        return asdict(self)


def parse_budget(text: str) -> float:
    """``"90s"``, ``"30m"``, ``"8h"``, ``"1h30m"`` → seconds."""
    import re

    parts = re.findall(r"(\d+(?:\.\d+)?)([smhd])", text.strip().lower())
    if not parts or "".join(n + u for n, u in parts) != text.strip().lower().replace(" ", ""):
        raise KilnError(f"--budget '{text}' is not a duration such as 90s, 30m, 8h or 1h30m")
    scale = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(float(n) * scale[u] for n, u in parts)


def parse_tracker(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise KilnError(f"--rpc-tracker '{text}' is not HOST:PORT (e.g. 127.0.0.1:9190)")
    return host, int(port)


def rpc_tracker_warning(host: str, trusted: tuple[str, ...] = ()) -> str | None:
    """Why tuning through a tracker at ``host`` is exposed, or None for loopback and for a
    private address in ``trusted``. TVM RPC has no authentication and runs the code it is
    sent: whoever reaches the tracker or its servers can run code on the boards and feed the
    tuner false timings."""
    import ipaddress
    import socket

    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        addresses = set()
    ips = [ipaddress.ip_address(a.split("%")[0]) for a in addresses]
    if ips and all(ip.is_loopback for ip in ips):
        return None
    if ips and all(ip.is_private for ip in ips) and (host in trusted or addresses & set(trusted)):
        return None
    where = "a private address" if ips and all(ip.is_private for ip in ips) else "an address beyond this machine"
    return (f"--rpc-tracker {host} is {where}: TVM RPC is unauthenticated and runs the code it is sent, so anyone who "
            "can reach the tracker or its RPC servers can run code on the boards and feed this tuner false timings. "
            "Reach the board through an SSH tunnel (tracker on 127.0.0.1, see docs/targets.md), or pass "
            f"--rpc-trust {host} if you control that network")


def check_rpc_options(options: SearchOptions, warn: bool = True) -> None:
    """Fail at once (before the slow import and task extraction) on bad RPC options; with ``warn``,
    warn when the tracker is not on loopback or on a private address the user trusts."""
    if options.rpc_tracker:
        host, _ = parse_tracker(options.rpc_tracker)
        warning = rpc_tracker_warning(host, options.rpc_trust) if warn else None
        if warning:
            log.warning("%s", warning)
        if not options.rpc_key:
            raise KilnError("--rpc-tracker needs --rpc-key (the key the RPC servers registered with)")
    elif options.rpc_key:
        raise KilnError("--rpc-key needs --rpc-tracker HOST:PORT")


def tuning_target(preset, threads: int):
    """The preset's TVM target with ``num-cores`` set: MetaSchedule sizes parallel loops by it."""
    import tvm

    target = dict(preset.target)
    if target["kind"] == "llvm":
        target["num-cores"] = threads
    return tvm.target.Target(target, host=preset.host) if preset.host else tvm.target.Target(target)


def int8_tuning_space(target, weight_bits: int, tasks):
    """MetaSchedule's CPU design space plus tensorization with kiln's int8 dot intrinsic, or None.

    TVM adds ``MultiLevelTilingWithIntrin`` only for VNNI and AVX-512 targets, with its own
    intrinsics; for AVX2 (and kiln's VNNI/AVX-512/AArch64 copies) it has none, so its
    candidates for int8 convs are scalar loops, about 3x slower than kiln's default rule.
    This is TVM's ``DefaultX86`` rule list with kiln's widest intrinsic that
    is exact for ``weight_bits`` (AVX2's saturates above 7 bits), and its CPU tensorization
    postprocessors. None where no task reads int8 data or the target has no such intrinsic.
    """
    from tvm.s_tir import meta_schedule as ms

    from schedules.int8 import reads_int8
    from schedules.rules.int8 import dot_intrins_for

    intrins = [i for i in dot_intrins_for(target) if i.exact_bits >= weight_bits]
    if not intrins or not any(reads_int8(task.dispatched[0]["main"]) for task in tasks):
        return None
    rules = list(ms.schedule_rule.ScheduleRule.create("llvm"))
    at = [type(rule).__name__ for rule in rules].index("MultiLevelTiling")
    rules.insert(at, ms.schedule_rule.MultiLevelTilingWithIntrin(
        intrins[0].name, structure="SSRSRS", max_innermost_factor=64,
        reuse_write=ms.schedule_rule.ReuseType(req="may", levels=[1, 2], scope="global")))
    postprocs = [ms.postproc.DisallowDynamicLoop(), ms.postproc.RewriteParallelVectorizeUnroll(),
                 ms.postproc.RewriteReductionBlock(), ms.postproc.RewriteTensorize(vectorize_init_loop=True),
                 ms.postproc.RewriteLayout()]
    return ms.space_generator.PostOrderApply(sch_rules=rules, postprocs=postprocs, mutator_probs="llvm")


def _has_search_space(context) -> bool:
    """False for tasks with a single candidate (reshape, concatenate, …): one design space and
    no decision in it. kiln's spaces may have none and still offer several tilings."""
    spaces = context.generate_design_space()
    return len(spaces) > 1 or any(len(space.trace.decisions) > 0 for space in spaces)


def _best_ms(database, workload) -> float | None:
    top = database.get_top_k(workload, 1)
    if not top:
        return None
    secs = [float(s) for s in top[0].run_secs]
    return 1e3 * sum(secs) / len(secs)


def _make_progress_callback(state: "_RunState"):
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class KilnProgress(PyMeasureCallback):
        """After each measured batch: progress bar, run log, budget check, cost-model checkpoint."""

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
            state.after_batch(task_scheduler, task_id, len(runner_results))

    return KilnProgress()


class _RunState:
    """Everything the progress callback needs: deadline, counters, the bar, the log file."""

    def __init__(self, work_dir: Path, contexts, weights, database, cost_model, total: int | None,
                 deadline: float | None, trials_before: int, progress: bool):
        self.work_dir = work_dir
        self.contexts = contexts
        self.weights = weights
        self.database = database
        self.cost_model = cost_model
        self.workloads = [database.commit_workload(c.mod) for c in contexts]
        self.deadline = deadline
        self.trials_before = trials_before
        self.trials_run = 0
        self.batches = 0
        self.start = time.monotonic()
        self.budget_hit = False
        self.best_estimate: float | None = None
        self.bar = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="trial", desc="tuning", dynamic_ncols=True)

    def estimate_ms(self) -> tuple[float | None, int]:
        """Weighted sum of the best kernel latencies (tasks measured so far), and how many are measured."""
        total, measured = 0.0, 0
        for workload, weight in zip(self.workloads, self.weights):
            best = _best_ms(self.database, workload)
            if best is not None:
                total += weight * best
                measured += 1
        return (total if measured else None), measured

    def after_batch(self, task_scheduler, task_id: int, count: int) -> None:
        self.trials_run += count
        self.batches += 1
        estimate, measured = self.estimate_ms()
        if estimate is not None and measured == len(self.contexts):
            self.best_estimate = estimate if self.best_estimate is None else min(self.best_estimate, estimate)
        elapsed = time.monotonic() - self.start
        entry = {"elapsed_s": round(elapsed, 2), "trials": self.trials_before + self.trials_run,
                 "task": self.contexts[task_id].task_name, "estimated_ms": estimate,
                 "tasks_measured": measured, "tasks": len(self.contexts)}
        with open(self.work_dir / LOG_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
        if self.bar is not None:
            self.bar.update(count)
            est = f"{estimate:.2f}ms" if estimate is not None else "n/a"
            best = f"{self.best_estimate:.2f}ms" if self.best_estimate is not None else "n/a"
            self.bar.set_postfix_str(f"est {est} ({measured}/{len(self.contexts)} tasks) best {best}")
        if self.batches % 4 == 0:
            save_cost_model(self.cost_model, self.work_dir)
        if self.deadline is not None and time.monotonic() >= self.deadline and not self.budget_hit:
            self.budget_hit = True
            log.info("time budget reached: finishing the tasks in flight")
            for i, task in enumerate(task_scheduler.tasks_):
                # MetaSchedule has already ended a task whose space is measured through, and
                # ending a task twice fails its check (a crash at the deadline, not a clean end).
                if not task.is_terminated:
                    task_scheduler.terminate_task(i)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def save_cost_model(cost_model, work_dir: Path) -> None:
    """Checkpoint the XGBoost cost model atomically (a kill mid-save keeps the previous one)."""
    partial = work_dir / (COST_MODEL_FILE + ".partial")
    try:
        cost_model.save(str(partial))
        partial.replace(work_dir / COST_MODEL_FILE)
    except Exception as err:  # an untrained model has nothing to save yet; XGBoost raises its own types
        log.debug("cost model not saved: %s", err)
        partial.unlink(missing_ok=True)


def seed_default_schedules(contexts, database, target, builder, runner, kiln_space: frozenset = frozenset()) -> int:
    """Measure kiln's default schedule of every task without a baseline yet, and keep it.

    The time becomes the task's baseline: compiling with the database applies a tuned
    record only when it beats it, so a partially tuned model is never slower than an
    untuned one. Tasks searched in kiln's space (``kiln_space``, task names) also get the
    default as their first tuning record: it is a point of that space, and the search
    starts from it. Returns how many baselines were measured.
    """
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.database import TuningRecord

    from schedules.defaults import rule_schedule

    pending = []
    for context in contexts:
        workload = database.commit_workload(context.mod)
        if database.workload_key(workload) in database.baselines:
            continue
        sch, _ = rule_schedule(context.mod["main"], target)
        if sch is None:  # no default rule: the untuned kernel is naive loops, any record beats it
            database.record_baseline(workload, float("inf"))
            continue
        # The arguments as the builder compiles it: weight-packing blocks removed, so a
        # packed weight is an argument of its packed shape (as in the final library).
        pending.append((workload, sch, ArgInfo.from_entry_func(sch.mod, remove_preproc=True),
                        context.task_name in kiln_space))
    if not pending:
        return 0
    measured = _measure([(sch.mod, args) for _, sch, args, _ in pending], target, builder, runner)
    added = 0
    for (workload, sch, args, in_kiln_space), m in zip(pending, measured):
        if m.build_error is not None:
            log.warning("default schedule of a task did not build: %s", m.build_error[-300:])
            database.record_baseline(workload, float("inf"))
            continue
        if m.run_error is not None:
            # The default could not be measured: let tuned records apply (TVM's own behaviour).
            log.warning("default schedule of a task did not run, so its tuned records apply without the "
                        "never-slower check: %s", m.run_error[-600:])
            database.record_baseline(workload, float("inf"))
            continue
        secs = [float(s) for s in m.run_secs]
        database.record_baseline(workload, sum(secs) / len(secs))
        # In MetaSchedule's generic space the default is not a tuning record: the search would start
        # from its trace, and the generic RewriteLayout cannot re-pack a weight the default rule packed.
        if in_kiln_space:
            database.commit_tuning_record(TuningRecord(sch.trace.simplified(remove_postproc=True), workload,
                                                       m.run_secs, target, args))
        added += 1
    return added


@dataclass
class _Measured:
    """One candidate's measurement: why it did not build or run, else its times of every round."""

    build_error: str | None = None
    run_error: str | None = None
    run_secs: list = field(default_factory=list)


def _measure(candidates: list, target, builder, runner, rounds: int = 1) -> list[_Measured]:
    """Build each ``(mod, args)`` candidate once and run them all ``rounds`` times, in the same
    batches, the order reversed every other round; the build artifacts are removed after."""
    from tvm.s_tir.meta_schedule.builder import BuilderInput
    from tvm.s_tir.meta_schedule.runner import RunnerInput

    built = builder.build([BuilderInput(mod, target) for mod, _ in candidates])
    out = [_Measured(build_error=b.error_msg) for b in built]
    ok = [i for i, b in enumerate(built) if b.error_msg is None]
    device = "cuda" if target.kind.name == "cuda" else "cpu"
    try:
        for round_ in range(rounds):
            order = ok if round_ % 2 == 0 else ok[::-1]
            futures = runner.run([RunnerInput(built[i].artifact_path, device, candidates[i][1]) for i in order])
            for i, future in zip(order, futures):
                result = future.result()
                if result.error_msg is not None or not result.run_secs:
                    out[i].run_error = result.error_msg or ""
                else:
                    out[i].run_secs += list(result.run_secs)
    finally:
        for i in ok:
            shutil.rmtree(os.path.dirname(built[i].artifact_path), ignore_errors=True)
    return out


def confirm_best_records(contexts, database, target, builder, runner, rounds: int = 2) -> list[str]:
    """Measure again, side by side, the default schedule and the record compile would apply, for
    every task that has such a record; where the record is not faster this time, lower the
    task's baseline to the record's stored time, so compile keeps the default. Returns the names
    of those tasks.

    A baseline is measured once, when the task is first tuned, and a slow measurement then lets
    in records that only beat that measurement (seen: baselines 2 to 25 times the time of the
    same kernels' records). Here both run in the same batches, their order swapped each round,
    so what differs between two measurements falls on both."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    from schedules.defaults import rule_schedule

    pairs = []  # (task name, workload, stored seconds of the record, [default, record] as (mod, args))
    for context in contexts:
        record = database.query_tuning_record(context.mod, target, "main")
        default = rule_schedule(context.mod["main"], target)[0] if record is not None else None
        if default is None:  # no record compile would apply, or no default to compare it with
            continue
        tuned = database.query_schedule(context.mod, target, "main")
        stored = [float(s) for s in record.run_secs]
        pairs.append((context.task_name, database.commit_workload(context.mod), sum(stored) / len(stored),
                      [(default.mod, ArgInfo.from_entry_func(default.mod, remove_preproc=True)),
                       (tuned.mod, list(record.args_info))]))
    if not pairs:
        return []
    measured = _measure([candidate for *_, both in pairs for candidate in both], target, builder, runner, rounds)
    demoted = []
    for k, (name, workload, stored, _) in enumerate(pairs):
        default_secs = [float(x) for x in measured[2 * k].run_secs]
        record_secs = [float(x) for x in measured[2 * k + 1].run_secs]
        if not default_secs or not record_secs:
            continue  # not measured this time: the first comparison stands
        default_s, record_s = sum(default_secs) / len(default_secs), sum(record_secs) / len(record_secs)
        if record_s >= default_s:
            database.record_baseline(workload, stored)  # the record no longer beats it, nor do slower ones
            demoted.append(name)
            log.info("%s: its best record (%.3f ms) is not faster than the default (%.3f ms) measured beside it; "
                     "compile keeps the default", name, 1e3 * record_s, 1e3 * default_s)
    return demoted


def keep_defaults(mod, db: str | Path, preset, threads: int, task_names: set[str]) -> list[str]:
    """Make ``kiln compile --db`` keep the default schedule of the tasks ``task_names`` of ``mod``
    (the module ``tune_module`` tuned): each task's baseline is lowered to its best record's
    stored time, as ``confirm_best_records`` does, so neither that record nor a slower one applies.
    Returns the names of the tasks changed (those with a record compile applied)."""
    from tvm.s_tir import meta_schedule as ms

    from schedules.database import DurableDatabase

    target = tuning_target(preset, threads)
    changed = []
    database = DurableDatabase(db, writable=True)
    try:
        for task in ms.relax_integration.extract_tasks(mod, target):
            if task.task_name not in task_names:
                continue
            context_mod = task.dispatched[0]
            record = database.query_tuning_record(context_mod, target, "main")
            if record is None:
                continue
            stored = [float(s) for s in record.run_secs]
            database.record_baseline(database.commit_workload(context_mod), sum(stored) / len(stored))
            changed.append(task.task_name)
    finally:
        database.close()
    return changed


# A CPU candidate is timed as in a network: one call per repeat, with every argument but the first
# (the input the kernel before it just wrote) flushed from the caches before each call (TVM's
# "cache_flush_cpu_non_first_arg"), so weights come from memory as they do in a model whose weights
# outgrow the caches (ResNet-50 holds ~100 MB). Timed warm, back to back, a schedule that re-reads
# its weight blocks looks fast and then loses in the network (the network check dropped most such
# records). GPUs keep warm timing: the flush reads host addresses. ``schedules.database.TIMING``
# names this timing in the stored baselines: change it with the timing.
COLD_REPEATS = 10


def _evaluator(device: str):
    from tvm.s_tir import meta_schedule as ms

    if device == "cpu":
        return ms.runner.EvaluatorConfig(number=1, repeat=COLD_REPEATS, min_repeat_ms=0,
                                         enable_cpu_cache_flush=True)
    return ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=40, enable_cpu_cache_flush=False)


def _runner(options: SearchOptions, device: str):
    from tvm.s_tir import meta_schedule as ms

    evaluator = _evaluator(device)
    if options.rpc_tracker:
        from tvm import rpc

        host, port = parse_tracker(options.rpc_tracker)
        config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=options.rpc_key,
                                     session_timeout_sec=120)
        try:  # measure on every server registered under the key, one candidate each at a time
            queue = rpc.connect_tracker(host, port).summary()["queue_info"].get(options.rpc_key, {})
            servers = max(1, int(queue.get("free", 0)) + int(queue.get("pending", 0)))
        except (RuntimeError, OSError, KeyError, TypeError) as err:
            raise KilnError(f"cannot reach the RPC tracker {host}:{port} ({err}); is it running?") from None
        return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator, max_workers=servers)
    return ms.runner.LocalRunner(timeout_sec=60, evaluator_config=evaluator)


def tune_module(mod, db: str | Path, preset, threads: int, weight_bits: int,
                options: SearchOptions | None = None) -> TuneReport:
    """Tune the kernels of the Relax module ``mod`` (after kiln's tuning-input pipeline) for
    ``preset`` at ``threads`` threads into the durable database ``db``.

    ``weight_bits`` is the int8 weight width the kernels were quantized to (their workloads carry
    it); it selects kiln's int8 dot intrinsics for the search space. The RPC options are checked
    here, but the tracker warning is the caller's: ``check_rpc_options`` before its slow work
    (``compiler.tune.tune_model`` does), so it is logged once.
    """
    from dataclasses import replace

    from schedules.database import DurableDatabase
    from schedules.intrinsics import import_tensor_intrinsics

    options = options or SearchOptions()
    check_rpc_options(options, warn=False)
    if options.trials is None and options.budget_seconds is None:
        options = replace(options, trials=-1)  # resolved to DEFAULT_TRIALS_PER_TASK per task
    import_tensor_intrinsics()  # ~11 s instead of ~100 s (see schedules/intrinsics.py)

    # Measurements must use the threads the library will run with (TVM's default is 1 here).
    os.environ["TVM_NUM_THREADS"] = str(threads)
    os.environ.setdefault("TVM_BIND_THREADS", "0")
    work_dir = Path(db)
    database = DurableDatabase(work_dir, writable=True)
    try:
        return _tune(mod, options, preset, threads, weight_bits, work_dir, database)
    except Exception:
        if database.write_error is not None:  # e.g. disk full, surfaced by TVM as a RuntimeError
            raise database.write_error from None
        raise
    finally:
        database.close()


SPACES = ("kiln", "generic")


def _tune_contexts(extracted, work_dir: Path, target, generic_space, strategy, threads: int,
                   options: SearchOptions, cpu: bool):
    """MetaSchedule tuning contexts in task order, their weights, and the names of the tasks
    searched in kiln's space (``schedules.space``): on CPUs with ``options.space == "kiln"``,
    every task whose default rule is tunable; the others get ``generic_space``."""
    from tvm.s_tir import meta_schedule as ms

    from schedules.space import design_spaces, kiln_space_generator

    if options.space not in SPACES:
        raise KilnError(f"unknown search space '{options.space}'; use one of {', '.join(SPACES)}")
    ours = {i for i, task in enumerate(extracted)
            if cpu and options.space == "kiln" and design_spaces(task.dispatched[0]["main"], target)}
    groups = [([t for i, t in enumerate(extracted) if i in ours], kiln_space_generator(target, options.seed)),
              ([t for i, t in enumerate(extracted) if i not in ours], generic_space)]
    by_name = {}
    for tasks, space in groups:
        if tasks:
            contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                tasks, work_dir=str(work_dir / "logs"), space=space, strategy=strategy, num_threads=threads,
                seed=options.seed)
            by_name.update({c.task_name: (c, w) for c, w in zip(contexts, weights)})
    ordered = [by_name[t.task_name] for t in extracted if t.task_name in by_name]
    return ([c for c, _ in ordered], [w for _, w in ordered],
            frozenset(extracted[i].task_name for i in ours))


def _tune(mod, options, preset, threads, weight_bits, work_dir, database) -> TuneReport:
    from tvm.s_tir import meta_schedule as ms

    from schedules.builder import ForkedBuilder
    from schedules.scheduler import EagerGradientScheduler

    start = time.monotonic()
    target = tuning_target(preset, threads)
    extracted = ms.relax_integration.extract_tasks(mod, target)
    if not extracted:
        raise KilnError("the model has no kernels to tune")
    strategy = ms.search_strategy.EvolutionarySearch(
        population_size=options.population, init_min_unmeasured=min(50, options.population // 4))
    space = "post-order-apply"
    if preset.device == "cpu":
        space = int8_tuning_space(target, weight_bits, extracted) or space
    contexts, weights, kiln_space = _tune_contexts(extracted, work_dir, target, space, strategy, threads, options,
                                                   preset.device == "cpu")
    summaries: dict[str, TaskSummary] = {}
    tunable, tunable_weights = [], []
    for context, weight in zip(contexts, weights):
        if _has_search_space(context):
            tunable.append(context)
            tunable_weights.append(float(weight))
        else:
            summaries[context.task_name] = TaskSummary(context.task_name, float(weight), 0, None,
                                                       "one candidate only: default schedule, not searched")

    def records() -> dict[str, int]:
        return {c.task_name: len(database.get_top_k(database.commit_workload(c.mod), 1 << 30)) for c in tunable}

    builder = ForkedBuilder()
    runner = _runner(options, preset.device)
    trials_before = sum(records().values())  # measured by earlier runs
    if preset.device == "cpu":
        seeded = seed_default_schedules(tunable, database, target, builder, runner, kiln_space)
        log.info("recorded the default schedule of %d kernels as their baseline (%d kernels are searched in kiln's "
                 "space, where it is also their first record)", seeded, len(kiln_space))
    done = records()
    seeded_records = sum(done.values()) - trials_before  # default schedules stored as records by this run
    if options.per_task is not None:
        keep = [i for i, c in enumerate(tunable) if done[c.task_name] < options.per_task]
        for i, c in enumerate(tunable):
            if i not in keep:
                summaries[c.task_name] = TaskSummary(c.task_name, tunable_weights[i], done[c.task_name],
                                                     _best_ms(database, database.commit_workload(c.mod)),
                                                     "per-task cap already reached")
        tunable, tunable_weights = [tunable[i] for i in keep], [tunable_weights[i] for i in keep]
    trials = options.trials
    if trials == -1:
        trials = DEFAULT_TRIALS_PER_TASK * len(contexts)
    remaining = (trials - trials_before - seeded_records) if trials is not None else 1 << 30
    log.info("%d tasks (%d with a search space), %d trials already in %s", len(contexts), len(tunable),
             trials_before, work_dir)
    stopped_by = "trials"
    state = None
    if remaining > 0 and tunable:
        cost_model = ms.cost_model.XGBModel(num_tuning_cores=threads, adaptive_training=True)
        if (work_dir / COST_MODEL_FILE).is_file():
            try:
                cost_model.load(str(work_dir / COST_MODEL_FILE))
                log.info("cost model warm-started from %s", work_dir / COST_MODEL_FILE)
            except Exception as err:  # a damaged checkpoint: start fresh, the records are what matters
                log.warning("could not load the cost model checkpoint (%s); training a new one", err)
        deadline = start + options.budget_seconds if options.budget_seconds is not None else None
        total = remaining if options.trials is not None else None
        state = _RunState(work_dir, tunable, tunable_weights, database, cost_model, total, deadline,
                          trials_before + seeded_records, options.progress)
        callbacks = [*ms.measure_callback.MeasureCallback.create("default"), _make_progress_callback(state)]
        try:
            ms.tune_tasks(
                tasks=tunable, task_weights=tunable_weights, work_dir=str(work_dir / "logs"),
                max_trials_global=remaining, max_trials_per_task=options.per_task,
                num_trials_per_iter=options.trials_per_iter, builder=builder, runner=runner,
                database=database, cost_model=cost_model, measure_callbacks=callbacks,
                task_scheduler=EagerGradientScheduler(seed=options.seed),
            )
        finally:
            state.close()
            save_cost_model(cost_model, work_dir)
        stopped_by = "budget" if state.budget_hit else ("trials" if options.trials is not None else "exhausted")
    elif remaining <= 0:
        stopped_by = "already done"
    demoted = set()
    if state is not None and preset.device == "cpu":
        demoted = set(confirm_best_records(tunable, database, target, builder, runner))
    for context, weight in zip(tunable, tunable_weights):
        workload = database.commit_workload(context.mod)
        count = len(database.get_top_k(workload, 1 << 30))
        note = "best record not faster than the default measured beside it: default kept" \
            if context.task_name in demoted else ""
        summaries[context.task_name] = TaskSummary(context.task_name, weight, count, _best_ms(database, workload),
                                                   note)
    ordered = [summaries[c.task_name] for c in contexts if c.task_name in summaries]
    measured = [s for s in ordered if s.best_ms is not None]
    estimate = sum(s.weight * s.best_ms for s in measured) if measured else None
    return TuneReport(
        db=str(work_dir), target=preset.name, threads=threads, trials_before=trials_before,
        trials_run=(state.trials_run if state else 0) + seeded_records, seconds=round(time.monotonic() - start, 1),
        stopped_by=stopped_by, estimated_ms=estimate, builder_seconds=round(builder.seconds, 1), tasks=ordered,
    )
