"""TVM's gradient-based task scheduler, joining every batch as soon as it is measured.

TVM's ``GradientBased`` scheduler first sends one batch per task round-robin and joins
none of them until the round is over, and afterwards joins a task's batch only when
that task is picked again. Measured results sit in runner futures, outside the
database, until then: on SqueezeNet (30 tasks, 16 candidates each) the first ~8 minutes
of measurements existed only in memory, so a kill in that window lost them all. This
scheduler makes the same choices (round-robin warm-up, then the task with the largest
expected latency gain, weighted by how often the model runs it: Ansor's gradient with
TVM's defaults ``alpha=0.2``, ``window_size=3``) but joins the previous batch first, so
the measure callbacks commit every record before the next batch is built. On a 2-core
machine the lost build/run overlap costs nothing: measurements need a quiet machine.
"""

from __future__ import annotations

import random

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.task_scheduler import PyTaskScheduler

UNMEASURED = 1e10


@derived_object
class EagerGradientScheduler(PyTaskScheduler):
    def __init__(self, alpha: float = 0.2, window_size: int = 3, seed: int = 0) -> None:
        super().__init__()
        self.alpha = alpha
        self.window_size = window_size
        self.rng = random.Random(seed)
        self.warmed: set[int] = set()
        self.pending: int | None = None
        self.history: dict[int, list[float]] = {}  # task -> best latency (s) after each of its batches

    def _join_pending(self) -> None:
        if self.pending is None:
            return
        task_id, self.pending = self.pending, None
        if self._outer().tasks_[task_id].is_terminated:
            # TVM ends a task instead of measuring it when its search has nothing new to offer
            # (a small design space, measured through) or its per-task cap is reached: no batch.
            return
        results = self.join_running_task(task_id)
        times = [sum(float(s) for s in r.run_secs) / len(r.run_secs)
                 for r in results if r.error_msg is None and r.run_secs]
        history = self.history.setdefault(task_id, [])
        previous = history[-1] if history else UNMEASURED
        history.append(min([previous, *times]))

    def _gradient(self, task_id: int, weight: float) -> float:
        history = self.history.get(task_id, [])
        if not history or history[-1] >= UNMEASURED:
            return float("inf")  # never measured: most to learn
        best, n, w = history[-1], len(history), self.window_size
        backward = (history[n - 1 - w] - best) / w if n >= 1 + w else 0.0
        forward = best / n  # optimistic: the next batches could keep improving at this rate
        return weight * (self.alpha * backward + (1 - self.alpha) * forward)

    def next_task_id(self) -> int:
        self._join_pending()
        tasks = self._outer().tasks_  # the C++ scheduler holds the task records
        alive = [i for i, t in enumerate(tasks) if not t.is_terminated]
        if not alive:
            return -1
        cold = [i for i in alive if i not in self.warmed]
        if cold:  # warm-up: every task once, in order
            choice = cold[0]
            self.warmed.add(choice)
        else:
            grads = {i: self._gradient(i, float(tasks[i].task_weight)) for i in alive}
            top = max(grads.values())
            choice = self.rng.choice([i for i, g in grads.items() if g == top])
        self.pending = choice
        return choice
