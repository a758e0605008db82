"""Default schedules for CPU kernels that have no tuning record.

``default_schedule_pass`` visits every TIR PrimFunc of a (fused, legalized) Relax module.
A function already marked ``tirx.is_scheduled`` (e.g. by ``MetaScheduleApplyDatabase``,
which runs before) is left alone: tuning records win. Every other function goes through
``CPU_RULES`` in order; the first rule that returns a schedule wins, and the function is
marked scheduled with the rule's name in the ``kiln.default_schedule`` attribute.
Functions no rule accepts stay as they are (naive, serial loops, still correct).

Symbolic sizes (a library for a range of input sizes): kiln's rules decide tiles from static
extents and decline symbolic ones. ``default_schedule_pass(twins=...)`` takes the same
module built for one representative static size; a symbolic function whose twin (same name)
a rule schedules gets that schedule's trace replayed on it. Splits the rules make with a
``None`` factor (the outer loop) carry over to a symbolic extent, adding a bound check, which
``schedules.tail_tiles`` then turns into a full last tile shifted back (and a vectorized loop
whose extent became symbolic runs serial); a trace that does not replay (``ScheduleError``)
leaves the function to the naive loops.

The vector width comes from the target (``schedules.vector_spec``), so the same rules
produce AVX2, AVX-512 and NEON code.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

from schedules.rules import (ChannelVectorized, Injective, Int8Tensorized, ParallelFallback, RowReduction,
                             RowSoftmax, SpatialVectorized, StemConv)
from schedules.tail_tiles import clamp_tail_tiles, fits_symbolic_sizes, serial_symbolic_vectors

log = logging.getLogger(__name__)

def _rules_version() -> str:
    """A digest of the rule sources: tuning baselines measured with other rules do not count."""
    import hashlib
    from pathlib import Path

    digest = hashlib.sha256()
    for path in sorted((Path(__file__).parent / "rules").glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


RULES_VERSION = _rules_version()
SCHEDULED_ATTR = "tirx.is_scheduled"  # what dlight and MetaScheduleApplyDatabase set
RULE_ATTR = "kiln.default_schedule"  # which kiln rule scheduled a function

CPU_RULES: tuple[ScheduleRule, ...] = (RowSoftmax(), Int8Tensorized(), StemConv(), ChannelVectorized(),
                                        SpatialVectorized(), Injective(), RowReduction(), ParallelFallback())


@dataclass
class ScheduleStats:
    """How the kernels of one module were scheduled."""

    tuned: list[str] = field(default_factory=list)  # already scheduled (tuning database)
    by_rule: dict[str, list[str]] = field(default_factory=dict)  # rule name -> functions
    declined: list[str] = field(default_factory=list)  # no rule accepted: naive loops

    @property
    def defaulted(self) -> int:
        return sum(len(v) for v in self.by_rule.values())

    def describe(self) -> str:
        rules = ", ".join(f"{k} {len(v)}" for k, v in sorted(self.by_rule.items()))
        return (f"{len(self.tuned)} tuned, {self.defaulted} default-scheduled ({rules or 'none'}), "
                f"{len(self.declined)} unscheduled")


def _is_scheduled(func: tirx.PrimFunc) -> bool:
    return func.attrs is not None and SCHEDULED_ATTR in func.attrs and bool(func.attrs[SCHEDULED_ATTR])


def _target_of(func: tirx.PrimFunc, target: Target | None) -> Target:
    own = func.attrs.get("target") if func.attrs is not None else None
    return own or target or Target.current(allow_none=False)


def rule_schedule(func: tirx.PrimFunc, target: Target, rules: tuple[ScheduleRule, ...] = CPU_RULES
                  ) -> tuple[s_tir.Schedule | None, str | None]:
    """The schedule of the first rule that accepts ``func``, and the rule's name (None, None if none)."""
    for rule in rules:
        if not rule.is_target_available(target):
            continue
        sch = rule.apply(func, target, False)
        if sch is None:
            continue
        return (sch if isinstance(sch, s_tir.Schedule) else sch[0]), type(rule).__name__
    return None, None


def schedule_func(func: tirx.PrimFunc, target: Target, rules: tuple[ScheduleRule, ...] = CPU_RULES
                  ) -> tuple[tirx.PrimFunc, str | None]:
    """Schedule one PrimFunc with the first accepting rule; returns (function, rule name or None)."""
    sch, name = rule_schedule(func, target, rules)
    if sch is None:
        return func, None
    scheduled = sch.mod["main"]
    if _clamps_static_tails(rule_named(name, rules)):
        scheduled = clamp_tail_tiles(scheduled, static_bounds=True)
    return scheduled.with_attr(SCHEDULED_ATTR, True).with_attr(RULE_ATTR, name), name


def rule_named(name: str | None, rules: tuple[ScheduleRule, ...] = CPU_RULES) -> ScheduleRule | None:
    """The rule of ``rules`` whose class is called ``name`` (what ``rule_schedule`` returns), or None."""
    return next((r for r in rules if type(r).__name__ == name), None)


def _clamps_static_tails(rule: ScheduleRule | None) -> bool:
    """Whether ``rule`` leaves tiles that do not divide a static extent for
    ``clamp_tail_tiles(static_bounds=True)`` to make full (``StemConv``)."""
    return getattr(rule, "clamps_static_tails", False)


def has_symbolic_shape(func: tirx.PrimFunc) -> bool:
    """Whether a parameter's shape depends on a run-time size."""
    return any(not isinstance(d, tirx.IntImm) for p in func.params if getattr(p, "shape", None) is not None
               for d in p.shape)


def replay_twin(func: tirx.PrimFunc, twin: tirx.PrimFunc, target: Target,
                rules: tuple[ScheduleRule, ...] = CPU_RULES) -> tuple[tirx.PrimFunc, str | None]:
    """``func`` (symbolic sizes) scheduled as a rule schedules its static ``twin`` (module doc).

    When the default schedule replayed keeps a register block of symbolic size (a blocked conv
    whose block spans the symbolic width) or a vector loop of symbolic extent, the rule's other
    design spaces (``design_spaces``, decided as the rule decides) are replayed in turn, and the
    first without either is used."""
    sch, name = rule_schedule(twin, target, rules)
    if sch is None:
        return func, None
    rule = rule_named(name, rules)
    static_bounds = _clamps_static_tails(rule)
    best = _replay(func, sch, name, static_bounds)
    if best is None:
        return func, None
    if not fits_symbolic_sizes(best) and hasattr(rule, "design_spaces"):
        for space in rule.design_spaces(twin, target)[1:]:
            candidate = _replay(func, space, name, static_bounds)
            if candidate is not None and fits_symbolic_sizes(candidate):
                best = candidate
                break
    replayed = f"{name} (replayed)"
    return serial_symbolic_vectors(best).with_attr(SCHEDULED_ATTR, True).with_attr(RULE_ATTR, replayed), replayed


def _replay(func: tirx.PrimFunc, sch: s_tir.Schedule, name: str, static_bounds: bool = False
            ) -> tirx.PrimFunc | None:
    """``sch``'s trace applied to ``func``, its tail tiles made full (``static_bounds``: those of
    static extents too); None if it does not replay."""
    symbolic = s_tir.Schedule(func)
    try:
        sch.trace.apply_to_schedule(symbolic, remove_postproc=False)
    except RuntimeError as err:  # a ScheduleError or a TVM error: the decisions need static extents: naive loops
        log.debug("%s's schedule does not replay on symbolic sizes (%s)", name, str(err).strip().splitlines()[-1][:200])
        return None
    return clamp_tail_tiles(symbolic.mod["main"], static_bounds)


def default_schedule_pass(target: Target | None = None, rules: tuple[ScheduleRule, ...] = CPU_RULES,
                          stats: ScheduleStats | None = None, twins: dict | None = None) -> tvm.transform.Pass:
    """A module pass giving every unscheduled PrimFunc a CPU default schedule.

    Expects legalized and fused TIR (after ``FuseTIR``; ``MetaScheduleApplyDatabase`` may
    have run). Guarantees: tuned functions unchanged; each other function either scheduled
    by a rule (and marked ``tirx.is_scheduled``) or left untouched. ``stats``, when given,
    is filled in; a one-line summary is logged at INFO either way. ``twins``: function name →
    the same function for a static size (see the module doc).
    """

    @tvm.transform.module_pass(opt_level=0, name="DefaultCPUSchedule")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        result = stats if stats is not None else ScheduleStats()
        updates = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            name = gvar.name_hint
            if _is_scheduled(func):
                own = func.attrs.get(RULE_ATTR)  # kernels written scheduled (e.g. schedules.recurrent)
                if own is not None:
                    result.by_rule.setdefault(str(own), []).append(name)
                else:
                    result.tuned.append(name)
                continue
            twin = (twins or {}).get(name)
            if twin is not None and has_symbolic_shape(func) and not has_symbolic_shape(twin):
                new, rule = replay_twin(func, twin, _target_of(func, target), rules)
            else:
                new, rule = schedule_func(func, _target_of(func, target), rules)
            if rule is None:
                result.declined.append(name)
                continue
            result.by_rule.setdefault(rule, []).append(name)
            updates[gvar] = new
        for gvar, func in updates.items():
            mod[gvar] = func
        log.info("default CPU schedules: %s", result.describe())
        if result.declined:
            log.debug("unscheduled kernels: %s", ", ".join(result.declined))
        return mod

    return _pass


def schedule_summary(mod: tvm.IRModule) -> Counter:
    """Count the PrimFuncs of a scheduled module by who scheduled them (rule name, 'tuned', 'none')."""
    counts: Counter = Counter()
    for _, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc):
            attrs = func.attrs if func.attrs is not None else {}
            if RULE_ATTR in attrs:
                counts[str(attrs[RULE_ATTR])] += 1
            elif SCHEDULED_ATTR in attrs and bool(attrs[SCHEDULED_ATTR]):
                counts["tuned"] += 1
            else:
                counts["none"] += 1
    return counts
