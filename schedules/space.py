"""kiln's own design space for MetaSchedule: the default rules with their decisions left open.

A kernel whose default rule is tunable (it has ``design_spaces``: ``ChannelVectorized``,
``SpatialVectorized``) is searched in that rule's spaces instead of MetaSchedule's generic
one. Each space is a schedule whose structural choices are fixed (vector width, vectors per
tile, blocking, the accumulator tile's shape) and whose numeric ones are
``sample_categorical`` decisions (register rows, blocking rows and channel chunk), decided as
the default rule decides them. MetaSchedule does the rest: the evolutionary search replays
the spaces' traces with sampled decisions, the XGBoost cost model ranks them, and
``MutateDecision`` moves one decision of a measured trace to another of its candidates
(TVM's own mutators only mutate tile sizes, unroll annotations, parallel extents and compute
locations, none of which kiln's traces use).

Expects a CPU (LLVM) target. Guarantees: the first space of a kernel, with its decisions as
recorded, is the kernel's default schedule (``test_tunable_rules.py`` checks the replay is
structurally equal), so the default is a point of the space and the search starts from it.
"""

from __future__ import annotations

import random
import threading

from tvm import s_tir, tirx
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.mutator import PyMutator
from tvm.target import Target

from schedules.defaults import rule_named, rule_schedule

SAMPLE_CATEGORICAL = "SampleCategorical"


def tunable_rule(func: tirx.PrimFunc, target: Target):
    """The rule that schedules ``func`` by default, when that rule is tunable (has
    ``design_spaces``); else None."""
    _, name = rule_schedule(func, target)
    rule = rule_named(name)
    return rule if hasattr(rule, "design_spaces") else None


def design_spaces(func: tirx.PrimFunc, target: Target) -> list[s_tir.Schedule]:
    """kiln's design spaces of ``func`` (its default schedule's first), or [] when its default
    rule has none for it (strided pooling, which ``SpatialVectorized`` runs as scalar rows)."""
    rule = tunable_rule(func, target)
    return rule.design_spaces(func, target) if rule is not None else []


@derived_object
class MutateDecision(PyMutator):
    """Move one ``sample_categorical`` decision of a trace to another of its candidates."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = seed
        self.rng = random.Random(seed)
        self.lock = threading.Lock()  # the search mutates from several threads

    def _initialize_with_tune_context(self, context) -> None:
        pass

    def apply(self, trace: s_tir.Trace, _rand_state) -> s_tir.Trace | None:
        choices = [(inst, int(decision)) for inst, decision in trace.decisions.items()
                   if inst.kind.name == SAMPLE_CATEGORICAL and len(inst.attrs[0]) > 1]
        if not choices:
            return None
        with self.lock:
            inst, current = self.rng.choice(choices)
            new = self.rng.choice([i for i in range(len(inst.attrs[0])) if i != current])
        return trace.with_decision(inst, new, remove_postproc=True)

    def clone(self) -> "MutateDecision":
        return MutateDecision(self.seed)


def kiln_space_generator(target: Target, seed: int = 0) -> ms.space_generator.ScheduleFn:
    """A MetaSchedule space generator giving a task kiln's design spaces (``design_spaces``).
    No postprocessors: kiln's schedules parallelize, vectorize and pack weights themselves."""

    def spaces(sch: s_tir.Schedule) -> list[s_tir.Schedule]:
        return design_spaces(sch.mod["main"], target)

    return ms.space_generator.ScheduleFn(spaces, sch_rules=[], postprocs=[],
                                         mutator_probs={MutateDecision(seed): 1.0})
