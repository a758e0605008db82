"""Load a kiln library and run it: numpy in, numpy out.

Needs only numpy and the TVM runtime (no onnx, no compiler)::

    from compiler.runtime import load
    m = load("model.so")               # threads default to this machine's cores
    outs = m.run({"data": x})          # or m.run(x) / m.run([x, y]); dict of outputs by ONNX name
    print(m.inputs, m.outputs, m.benchmark(50))

Every mismatch between the inputs given and what the model expects raises
``InputError`` (a ``ValueError``) naming the input and the expected shape and dtype,
before TVM sees the data. One loaded model may be called from several threads: calls
are serialised by a lock (the Relax VM keeps per-call state).

``load(path, streams=N)`` serves N requests at once instead (``StreamedModel``): N worker
threads, each with its own VM (its own workspace) and its own share of the threads::

    m = load("model.so", streams=2)    # 2 streams of 1 thread each on a 2-core machine
    futures = [m.submit(x) for x in batch]
    outs = [f.result() for f in futures]

A library compiled with ``--inter-op on|auto`` also runs a request's independent branches side
by side (``BranchRunner``, the regions its build kept; ``load(path, inter_op=...)`` overrides).
"""

from __future__ import annotations

import os
import platform
import queue
import threading
import time
import weakref
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from targets.errors import DeviceError, InputError, LibraryError
from targets.library_format import LibraryMetadata, Stage, StagePlan, TensorSpec, read_metadata
from targets.cpu_features import missing_features, required_features
from targets.registry import cpu_flags


def _presets_that_run_here(machine: str) -> str:
    """The CPU presets this machine can run, as the end of a refusal (empty when there are none)."""
    from targets.registry import PRESETS

    flags = cpu_flags()
    arch = "aarch64" if machine == "arm64" else machine
    fits = [p.name for p in PRESETS.values() if p.device == "cpu" and required_features(p.target)[0] == arch
            and not missing_features(p.target, flags)]
    return f" or one of the presets this CPU runs: {', '.join(fits)}" if fits else ""


@dataclass(frozen=True)
class LatencyStats:
    """Latency percentiles in milliseconds over ``runs`` timed calls."""

    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    # CPU time of this process per call, all its threads together (None: not measured). At one
    # thread it is the call's own time even while other jobs take the core away; with more it
    # includes the time thread pools spend spinning.
    cpu_ms: float | None = None

    @classmethod
    def from_seconds(cls, samples: Sequence[float], cpu_seconds: float | None = None) -> "LatencyStats":
        """Stats of per-call wall times ``samples``; ``cpu_seconds``: this process's CPU time over all of them."""
        ms = np.asarray(samples, dtype=np.float64) * 1e3
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        cpu_ms = None if cpu_seconds is None else cpu_seconds * 1e3 / len(ms)
        return cls(len(ms), float(p50), float(p90), float(p99), float(ms.mean()), cpu_ms)

    def describe(self) -> str:
        return f"p50 {self.p50_ms:.3f} ms  p90 {self.p90_ms:.3f} ms  p99 {self.p99_ms:.3f} ms  ({self.runs} runs)"


def time_calls(call, runs: int, warmup: int = 3) -> LatencyStats:
    """Latency of ``call()`` over ``runs`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    samples = []
    cpu_start = time.process_time()
    for _ in range(max(runs, 1)):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return LatencyStats.from_seconds(samples, time.process_time() - cpu_start)


def check_runnable_here(meta: LibraryMetadata, path: Path) -> None:
    """Refuse, with a clear message, a library this machine cannot run."""
    import tvm

    if meta.tvm_version != tvm.__version__:
        raise LibraryError(
            f"{path} was built with TVM {meta.tvm_version}, this runtime has TVM {tvm.__version__}; "
            f"install apache-tvm=={meta.tvm_version} or recompile the model"
        )
    host_target = meta.target.get("host") or meta.target
    triple = str(host_target.get("mtriple", ""))
    machine = platform.machine().lower()
    arch = triple.split("-")[0] if triple else machine
    if arch and arch != machine and not (arch == "arm64" and machine == "aarch64"):
        raise LibraryError(
            f"{path} was built for {arch} (target '{meta.target_name}'); this machine is {machine}. "
            "Run it on that device (see docs/targets.md) or recompile with --target host"
        )
    missing = missing_features(host_target, cpu_flags())  # the architecture matches (checked above)
    if missing:
        raise LibraryError(
            f"{path} was built for '{meta.target_name}' and needs the CPU feature{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)}, which this CPU lacks (running it would crash with an illegal instruction); "
            f"recompile with --target host{_presets_that_run_here(machine)}"
        )
    if meta.device == "cuda":
        problem = _cuda_problem()
        if problem:
            raise DeviceError(
                f"{path} targets CUDA ('{meta.target_name}'); {problem}. "
                "Run it on a machine with an NVIDIA GPU and driver"
            )


def _cuda_problem() -> str | None:
    """Why CUDA libraries cannot run in this process, or None when they can."""
    import tvm

    if tvm.get_global_func("ffi.Module.load_from_bytes.cuda", allow_missing=True) is None:
        # TVM loads its CUDA runtime at import and silently skips it when the driver is missing;
        # load it again here to report the actual reason.
        import ctypes

        from tvm.base import _LOADED_LIBS

        runtime_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent
        try:
            ctypes.CDLL(str(runtime_dir / "libtvm_runtime_cuda.so"), mode=ctypes.RTLD_GLOBAL)
        except OSError as err:
            return f"no CUDA device or driver was found on this machine (TVM's CUDA runtime did not load: {err})"
        if tvm.get_global_func("ffi.Module.load_from_bytes.cuda", allow_missing=True) is None:
            return "this TVM build has no CUDA runtime"
    if not tvm.cuda(0).exist:
        return "no CUDA device was found on this machine"
    return None


def configure_threads(threads: int | None) -> int:
    """Set how many threads TVM's CPU pool uses for this (calling) thread; returns the count in use.

    TVM reads ``TVM_NUM_THREADS`` once, when a thread's pool starts (``compiler`` sets it to the
    core count at import, before anything can start one); ``runtime.config_threadpool`` then
    chooses how many of the pool's workers run, up to its size. A pool another program started
    smaller than ``threads`` stays smaller: the returned count says so.
    """
    import tvm

    cores = len(os.sched_getaffinity(0))
    wanted = threads or cores
    os.environ["TVM_NUM_THREADS"] = str(max(wanted, cores))  # the pool's size, if it has not started
    os.environ.setdefault("TVM_BIND_THREADS", "0")
    big_cores = 1  # TVM's ThreadGroup::kBig; with TVM_BIND_THREADS=0 no thread is pinned
    tvm.get_global_func("runtime.config_threadpool")(big_cores, wanted)
    return int(tvm.runtime.num_threads())


# path -> (inode, mtime, size) of the file this process loaded from it
_loaded_files: dict[str, tuple[int, int, int]] = {}


def _load_module_fresh(tvm, path: Path):
    """``tvm.runtime.load_module(path)``, but never an older library that was at ``path``.

    The dynamic loader hands back the library it already has for a path while that one is
    still loaded, so a library rebuilt to the same path and loaded again in the same process
    would silently run the old code (seen: compile, load, recompile another model to the same
    file, load: the first model's outputs). A changed file is loaded from a private copy.
    """
    import shutil
    import tempfile

    key = str(path.resolve())
    stat = path.stat()
    identity = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
    if _loaded_files.setdefault(key, identity) == identity:
        return tvm.runtime.load_module(key)
    with tempfile.TemporaryDirectory(prefix="kiln-reload-") as tmp:
        copy = Path(tmp) / path.name
        shutil.copyfile(path, copy)
        return tvm.runtime.load_module(str(copy))  # stays mapped after the copy is removed


class _BranchWorker:
    """A thread with its own VM and thread pool, calling stage functions handed to it."""

    def __init__(self, executable, device, threads: int, functions: list[str], name: str):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        ready: Future = Future()
        self._thread = threading.Thread(target=self._serve, args=(executable, device, threads, functions, ready),
                                        name=name, daemon=True)
        self._thread.start()
        ready.result()

    def _serve(self, executable, device, threads: int, names: list[str], ready: Future) -> None:
        import tvm
        import tvm.runtime.vm

        try:
            configure_threads(threads)
            vm = tvm.runtime.vm.VirtualMachine(executable, device)
            functions = {name: vm[name] for name in names}
        except Exception as err:  # TVM's own error types
            ready.set_exception(LibraryError(f"could not start an inter-op worker: {err}"))
            return
        ready.set_result(None)
        while (job := self._jobs.get()) is not None:
            future, name, args = job
            try:
                future.set_result(functions[name](*args))
            except BaseException as err:  # handed to the caller through the future
                future.set_exception(err)

    def submit(self, name: str, args: list) -> Future:
        future: Future = Future()
        self._jobs.put((future, name, args))
        return future

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join()


class BranchRunner:
    """Runs a library's stage plan (``--inter-op``) on ``threads`` threads; the regions in
    ``side_by_side`` run their groups at once.

    The plan's stage functions (``compiler.passes.split_parallel_branches``) run in order, TVM
    tensors passed from one to the next: a sequential stage on the caller's thread with all its
    threads; a region run side by side hands each group to a worker thread with its own VM and
    a pool of ``threads // groups`` threads (TVM keeps one pool per calling thread) and waits
    for all; a region not chosen runs its groups one after another on the caller's thread.
    ``vm``: the caller's Relax VM of the library. ``close`` stops the workers."""

    def __init__(self, vm, executable, device, plan: StagePlan, threads: int, side_by_side: set[int]):
        self.plan = plan
        self.threads = threads
        self.side_by_side = set(side_by_side)
        names = [f for stage in plan.stages for f in stage.functions]
        try:
            self._functions = {name: vm[name] for name in names}
        except Exception as err:  # TVM's AttributeError/ValueError for a missing function
            raise LibraryError(f"the library's metadata lists stage functions it does not have: {err}") from None
        self._workers: list[_BranchWorker] = []
        if self.side_by_side:
            groups = max(len(plan.stages[i].functions) for i in self._region_stages())
            if threads < groups:
                raise ValueError(f"{groups} groups side by side need at least {groups} threads, not {threads}")
            self._workers = [_BranchWorker(executable, device, threads // groups, names, f"kiln-inter-op-{g}")
                             for g in range(groups)]

    def _region_stages(self) -> list[int]:
        return [i for i, s in enumerate(self.plan.stages) if s.region in self.side_by_side]

    def values(self, tensors: list) -> dict[str, object]:
        """Every value of one run, by name: the inputs, each stage's results."""
        values = dict(zip(self.plan.inputs, tensors))
        for stage in self.plan.stages:
            self.run_stage(stage, values, stage.region in self.side_by_side)
        return values

    def __call__(self, tensors: list) -> list:
        """One run: the library's outputs, in order."""
        values = self.values(tensors)
        return [values[name] for name in self.plan.outputs]

    def run_stage(self, stage: Stage, values: dict, side_by_side: bool) -> None:
        """Run one stage on ``values`` (adds its results): its groups at once or one after another."""
        args = [[values[name] for name in names] for names in stage.inputs]
        if side_by_side and len(stage.functions) > 1:
            futures = [worker.submit(name, a) for worker, name, a in zip(self._workers, stage.functions, args)]
            results = [f.result() for f in futures]
        else:
            results = [self._functions[name](*a) for name, a in zip(stage.functions, args)]
        for names, result in zip(stage.outputs, results):
            values.update(zip(names, result))

    def close(self) -> None:
        """Stop the worker threads."""
        for worker in self._workers:
            worker.stop()
        self._workers = []


class CompiledModel:
    """A loaded kiln library. Use ``load`` to make one."""

    def __init__(self, path: Path, meta: LibraryMetadata, threads: int, inter_op: bool | None = None):
        import tvm
        import tvm.runtime.vm  # not imported by `tvm` itself in runtime-only mode (TVM_USE_RUNTIME_LIB=1)

        self.path = path
        self.metadata = meta
        self.threads = threads
        self._tvm = tvm
        self.device = tvm.cuda(0) if meta.device == "cuda" else tvm.cpu(0)
        try:
            lib = _load_module_fresh(tvm, path)
        except Exception as err:  # TVM reports load failures as its own error types
            raise LibraryError(f"{path}: TVM could not load the library: {str(err).strip().splitlines()[-1]}") from None
        self._executable = lib  # its import holds the kernels (``compiler.profile`` times them one by one)
        self._vm = tvm.runtime.vm.VirtualMachine(lib, self.device)
        self._main = self._vm["main"]
        self._lock = threading.Lock()
        self.branches = self._branch_runner(inter_op)

    def _branch_runner(self, inter_op: bool | None):
        """The ``BranchRunner`` of a library with stage functions (``--inter-op``), or None to run ``main``.

        ``inter_op``: None follows the library (the regions its build chose to run side by side);
        True runs every region side by side; False runs ``main``."""
        info = self.metadata.extra.get("inter_op")
        if inter_op is False or info is None or info.get("plan") is None:
            if inter_op:
                raise InputError(f"{self.path.name} has no independent branches to run side by side "
                                 "(compile it with --inter-op on or auto)")
            return None
        plan = StagePlan.from_dict(info["plan"])
        regions = set(range(len(plan.regions))) if inter_op else set(info.get("side_by_side", []))
        if not regions or self.threads < plan.groups:
            if inter_op:
                raise InputError(f"running branches side by side needs at least {plan.groups} threads, "
                                 f"not {self.threads}")
            return None
        runner = BranchRunner(self._vm, self._executable, self.device, plan, self.threads, regions)
        weakref.finalize(self, runner.close)
        return runner

    @property
    def inputs(self) -> list[TensorSpec]:
        return list(self.metadata.inputs)

    @property
    def outputs(self) -> list[TensorSpec]:
        return list(self.metadata.outputs)

    def __repr__(self) -> str:
        ins = ", ".join(s.describe() for s in self.inputs)
        outs = ", ".join(s.describe() for s in self.outputs)
        return f"<kiln model {self.path.name} [{self.metadata.target_name}] ({ins}) -> ({outs})>"

    def _ordered_arrays(self, inputs) -> list[np.ndarray]:
        specs = self.metadata.inputs
        expected = ", ".join(s.describe() for s in specs)
        if isinstance(inputs, Mapping):
            missing = [s.name for s in specs if s.name not in inputs]
            extra = [k for k in inputs if k not in {s.name for s in specs}]
            if missing or extra:
                parts = ([f"missing {missing}"] if missing else []) + ([f"unknown {extra}"] if extra else [])
                raise InputError(f"inputs {'; '.join(parts)}; the model expects {expected}")
            values = [inputs[s.name] for s in specs]
        else:
            values = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
            if len(values) != len(specs):
                raise InputError(f"got {len(values)} inputs, the model expects {len(specs)}: {expected}")
        arrays = []
        for spec, value in zip(specs, values):
            arr = np.asarray(value)
            if arr.dtype == object:
                raise InputError(f"input '{spec.name}': not a numeric array; expected {spec.describe()}")
            if arr.dtype != np.dtype(spec.dtype):
                raise InputError(
                    f"input '{spec.name}': dtype {arr.dtype}, expected {spec.dtype} "
                    f"(convert with .astype(np.{spec.dtype}))"
                )
            problem = spec.mismatch(tuple(arr.shape))
            if problem is not None:
                raise InputError(
                    f"input '{spec.name}': shape {'x'.join(map(str, arr.shape)) or 'scalar'}, expected "
                    f"{spec.dims()} ({problem}; {spec.describe()})"
                )
            arrays.append(np.ascontiguousarray(arr))
        return arrays

    def _to_device(self, arrays: list[np.ndarray]) -> list:
        return [self._tvm.runtime.tensor(a, self.device) for a in arrays]

    def _call(self, tensors: list):
        with self._lock:
            result = self.branches(tensors) if self.branches is not None else self._main(*tensors)
            if self.metadata.device != "cpu":
                self.device.sync()
        return result

    def run(self, inputs) -> dict[str, np.ndarray]:
        """Run once. ``inputs``: dict by input name, a list in input order, or one array.

        Returns the outputs as numpy arrays keyed by ONNX output name, in graph order.
        """
        return self._outputs(self._call(self._to_device(self._ordered_arrays(inputs))))

    def _outputs(self, result) -> dict[str, np.ndarray]:
        values = list(result) if not hasattr(result, "numpy") else [result]
        return {spec.name: v.numpy() for spec, v in zip(self.metadata.outputs, values)}

    def random_inputs(self, seed: int = 0, fill: str = "random") -> dict[str, np.ndarray]:
        """Inputs of the right shapes and dtypes: seeded normal values, or zeros."""
        rng = np.random.default_rng(seed)
        out = {}
        for spec in self.metadata.inputs:
            dtype, shape = np.dtype(spec.dtype), spec.example_shape()
            if fill == "zeros":
                out[spec.name] = np.zeros(shape, dtype)
            elif dtype.kind == "f":
                out[spec.name] = rng.standard_normal(shape).astype(dtype)
            else:
                out[spec.name] = rng.integers(0, 10, shape).astype(dtype)
        return out

    def timed_call(self, inputs=None) -> Callable[[], object]:
        """One call with ``inputs`` (default: random) already checked and on the device: what timing repeats."""
        tensors = self._to_device(self._ordered_arrays(inputs if inputs is not None else self.random_inputs()))
        return lambda: self._call(tensors)

    def benchmark(self, runs: int = 50, inputs=None, warmup: int = 3) -> LatencyStats:
        """Latency over ``runs`` calls (after ``warmup``), inputs already on the device."""
        return time_calls(self.timed_call(inputs), runs, warmup)


@dataclass(frozen=True)
class ThroughputStats:
    """Requests served by ``streams`` streams at once: per-request latency and inferences per second."""

    streams: int
    threads_per_stream: int
    requests: int
    seconds: float
    latency: LatencyStats

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    def describe(self) -> str:
        return (f"{self.streams} stream(s) x {self.threads_per_stream} thread(s): {self.per_second:.1f} inferences/s, "
                f"latency p50 {self.latency.p50_ms:.3f} ms  p90 {self.latency.p90_ms:.3f} ms  "
                f"p99 {self.latency.p99_ms:.3f} ms  ({self.requests} requests)")


def closed_loop(call: Callable[[], object], clients: int, requests: int,
                warmup: int = 2) -> tuple[float, LatencyStats]:
    """``requests`` calls of ``call`` from ``clients`` threads, each sending its next request when its
    last one returned (a closed loop), after ``warmup`` calls per client: (wall seconds of the
    timed calls, per-call latency)."""
    for _ in range(warmup * clients):
        call()
    samples: list[float] = []
    lock = threading.Lock()
    left = [requests]

    def client() -> None:
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            began = time.perf_counter()
            call()
            with lock:
                samples.append(time.perf_counter() - began)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - began, LatencyStats.from_seconds(samples)


def measure_throughput(model: "CompiledModel | StreamedModel", inputs=None, requests: int = 100,
                       warmup: int = 2) -> ThroughputStats:
    """Serve ``requests`` copies of ``inputs`` (default: random) from one client thread per stream
    of ``model`` (``closed_loop``): per-request latency, and the inferences per second of all
    streams together."""
    streams = getattr(model, "streams", 1)
    inputs = inputs if inputs is not None else model.random_inputs()
    seconds, latency = closed_loop(lambda: model.run(inputs), streams, requests, warmup)
    threads = getattr(model, "threads_per_stream", None) or model.threads
    return ThroughputStats(streams, threads, requests, seconds, latency)


class StreamedModel:
    """A loaded library serving ``streams`` requests at once. Use ``load(path, streams=N)``.

    Each stream is a worker thread with its own Relax VM (so its own workspace) and its own TVM
    thread pool of ``threads_per_stream`` threads (TVM keeps one pool per calling thread):
    the streams split the threads, none is oversubscribed. Requests wait in one queue and the
    first free stream takes the next. ``run`` and ``submit`` are thread-safe; inputs are checked
    in the caller's thread, as ``CompiledModel.run`` checks them. ``close`` (or a ``with``
    block) stops the workers.
    """

    def __init__(self, model: CompiledModel, streams: int, threads_per_stream: int):
        self.model = model
        self.metadata = model.metadata
        self.path = model.path
        self.streams = streams
        self.threads_per_stream = threads_per_stream
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._workers = []
        started = []
        for number in range(streams):
            ready: Future = Future()
            worker = threading.Thread(target=self._serve, args=(ready,), name=f"kiln-stream-{number}", daemon=True)
            worker.start()
            self._workers.append(worker)
            started.append(ready)
        for ready in started:
            ready.result()  # a stream that cannot start (no memory for its VM) fails the load

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.model.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.model.outputs

    def __repr__(self) -> str:
        return f"{self.model!r} x {self.streams} streams of {self.threads_per_stream} thread(s)"

    def _serve(self, ready: Future) -> None:
        tvm = self.model._tvm
        try:
            configure_threads(self.threads_per_stream)  # this worker thread's own pool
            main = tvm.runtime.vm.VirtualMachine(self.model._executable, self.model.device)["main"]
        except Exception as err:  # TVM's own error types
            ready.set_exception(LibraryError(f"{self.path}: could not start a stream: {err}"))
            return
        ready.set_result(None)
        while (job := self._jobs.get()) is not None:
            future, arrays = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = main(*self.model._to_device(arrays))
                if self.metadata.device != "cpu":
                    self.model.device.sync()
                future.set_result(self.model._outputs(result))
            except BaseException as err:  # handed to the caller through the future
                future.set_exception(err)

    def submit(self, inputs) -> Future:
        """Queue one request; the future's result is what ``run`` returns."""
        if not self._workers:
            raise InputError(f"{self.path.name}: the streams are closed")
        future: Future = Future()
        self._jobs.put((future, self.model._ordered_arrays(inputs)))
        return future

    def run(self, inputs) -> dict[str, np.ndarray]:
        """Run once on the next free stream (blocks): outputs by ONNX output name."""
        return self.submit(inputs).result()

    def random_inputs(self, seed: int = 0, fill: str = "random") -> dict[str, np.ndarray]:
        return self.model.random_inputs(seed, fill)

    def throughput(self, inputs=None, requests: int = 100, warmup: int = 2) -> ThroughputStats:
        """``measure_throughput`` of this model with one client per stream."""
        return measure_throughput(self, inputs, requests, warmup)

    def close(self) -> None:
        """Stop the workers once the queued requests are served."""
        for _ in self._workers:
            self._jobs.put(None)
        for worker in self._workers:
            worker.join()
        self._workers = []

    def __enter__(self) -> "StreamedModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def alternating_p50_ms(models: Mapping[str, CompiledModel], inputs, rounds: int = 3, runs: int = 10) -> dict[str, float]:
    """Median over ``rounds`` of each model's p50 (``runs`` calls), timed in turn round by round
    (A, B, A, B, …) so a noisy moment on a shared machine hits all of them alike."""
    return alternating_calls_p50_ms({name: model.timed_call(inputs) for name, model in models.items()}, rounds, runs)


PAUSE_S = 0.3  # between runners: TVM's pool spins about 0.2 s after a call (measured), ORT's less


def alternating_rounds(calls: Mapping[str, Callable[[], object]], rounds: int = 3, runs: int = 10,
                       warmup: int = 2) -> dict[str, list[LatencyStats]]:
    """Each runner's ``LatencyStats`` in every round: ``rounds`` rounds, each timing every runner in
    turn (``runs`` calls after ``warmup``), so a noisy moment on a shared machine hits all alike.

    Each runner's block starts after a short pause: thread pools spin-wait after a call, and an
    ONNX Runtime session still spinning doubled the next session's latency on 2 cores
    (SqueezeNet QDQ: 8.3 ms alternating without the pause, 4.5 ms with it, 4.1 ms alone).
    Odd rounds run the runners in reverse order, so that none is always the one that follows a
    given other (two copies of one SqueezeNet library, always in the same order, differed by
    10 %)."""
    stats: dict[str, list[LatencyStats]] = {name: [] for name in calls}
    order = list(calls)
    for r in range(rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            time.sleep(PAUSE_S)
            stats[name].append(time_calls(calls[name], runs, warmup=warmup))
    return stats


def alternating_calls_p50_ms(calls: Mapping[str, Callable[[], object]], rounds: int = 3,
                             runs: int = 10) -> dict[str, float]:
    """``alternating_p50_ms`` for any callables (kiln libraries next to ONNX Runtime sessions):
    the median over ``alternating_rounds`` of each runner's p50."""
    per_round = alternating_rounds(calls, rounds, runs)
    return {name: float(np.median([s.p50_ms for s in stats])) for name, stats in per_round.items()}


def check_streams(streams: int, threads: int | None) -> int:
    """The thread count ``streams`` streams split (``threads``, default this machine's cores);
    ``InputError`` unless every stream gets at least one thread of it."""
    total = threads or len(os.sched_getaffinity(0))
    if streams < 1:
        raise InputError(f"streams must be at least 1, not {streams}")
    if streams > total:
        raise InputError(f"{streams} streams need at least {streams} threads (one each; more would oversubscribe "
                         f"the {total} asked for): use streams <= {total} or threads >= {streams}")
    return total


def load(path: str | Path, threads: int | None = None, streams: int = 1,
         inter_op: bool | None = None) -> CompiledModel | StreamedModel:
    """Load a library made by ``kiln compile``; ``threads`` defaults to this machine's cores.

    ``streams`` > 1: a ``StreamedModel`` serving that many requests at once, the threads split
    evenly between them (``threads`` must be at least ``streams``: one thread per stream at least,
    never more threads than asked for).

    ``inter_op`` (libraries compiled with ``--inter-op``): None runs the independent branches
    the build chose to run side by side, True every region's, False none (``main`` alone)."""
    path = Path(path)
    meta = read_metadata(path)  # checks the seal before it parses anything
    check_runnable_here(meta, path)
    total = check_streams(streams, threads)
    if streams == 1:
        return CompiledModel(path, meta, configure_threads(threads), inter_op)
    if inter_op:
        raise InputError("streams and inter-op parallelism both split the threads: use one of them")
    if meta.device != "cpu":
        raise InputError(f"streams run CPU libraries; {path.name} targets {meta.device}")
    # the caller's own thread keeps its pool as it is: the streams' worker threads run the kernels
    per_stream = total // streams
    return StreamedModel(CompiledModel(path, meta, per_stream, inter_op=False), streams, per_stream)
