"""Running a library's independent branches side by side (inter-op parallelism).

A library compiled with ``--inter-op on`` or ``auto`` carries stage functions beside ``main``
and their plan in its metadata (``compiler.passes.split_parallel_branches``). ``BranchRunner``
calls them in order, passing TVM tensors from one to the next (no copies):

- a sequential stage runs on the caller's thread, on all of its threads;
- a parallel region chosen to run side by side hands each of its groups to a worker thread
  of its own, each worker with its own Relax VM and a TVM pool of ``threads // groups``
  threads (TVM keeps one pool per calling thread), and waits for all of them. The caller's
  pool then idles: the threads are split, never multiplied;
- a region not chosen runs its groups one after another on the caller's thread.

The workers exist only while the runner does (``close``). Needs numpy and the TVM runtime only.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

from targets.errors import LibraryError
from targets.library_format import Stage, StagePlan


class _Worker:
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

        from compiler.runtime import configure_threads

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
    """Runs ``plan`` on ``threads`` threads; the regions in ``side_by_side`` run their groups at once.

    ``vm``: the caller's Relax VM of the library (the sequential stages run there)."""

    def __init__(self, vm, executable, device, plan: StagePlan, threads: int, side_by_side: set[int]):
        self.plan = plan
        self.threads = threads
        self.side_by_side = set(side_by_side)
        names = [f for stage in plan.stages for f in stage.functions]
        try:
            self._functions = {name: vm[name] for name in names}
        except Exception as err:  # TVM's AttributeError/ValueError for a missing function
            raise LibraryError(f"the library's metadata lists stage functions it does not have: {err}") from None
        self._workers: list[_Worker] = []
        if self.side_by_side:
            groups = max(len(plan.stages[i].functions) for i in self._region_stages())
            if threads < groups:
                raise ValueError(f"{groups} groups side by side need at least {groups} threads, not {threads}")
            self._workers = [_Worker(executable, device, threads // groups, names, f"kiln-inter-op-{g}")
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
