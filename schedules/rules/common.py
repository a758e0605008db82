"""Helpers shared by kiln's CPU schedule rules: block analysis, inlining, injective nests."""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import SBlockInfo, collect_vars_used_in_prim_expr
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.s_tir.schedule import ScheduleError
from tvm.target import Target

from schedules.vector_spec import VectorSpec, vector_spec

import tvm

_has_if_then_else = tvm.get_global_func("s_tir.schedule.HasIfThenElse")


class CPUScheduleRule(ScheduleRule):
    """A rule for LLVM CPU targets; ``apply`` declines (None) for any other target."""

    def is_target_available(self, target: Target) -> bool:
        return target.kind.name == "llvm"

    def spec(self, target: Target) -> VectorSpec:
        return vector_spec(target)


def divisor_at_most(n: int, cap: int) -> int:
    """The largest divisor of ``n`` that is at most ``cap`` (at least 1)."""
    for d in range(min(n, max(cap, 1)), 0, -1):
        if n % d == 0:
            return d
    return 1


def int_extent(expr: tirx.PrimExpr | int) -> int | None:
    """``expr`` as a Python int when it is a constant, else None (dynamic shapes decline)."""
    if isinstance(expr, int):
        return expr
    return int(expr.value) if isinstance(expr, tirx.IntImm) else None


def vars_of(region) -> set[tirx.Var]:
    """Variables used in the index expressions of a buffer region."""
    out: set[tirx.Var] = set()
    for r in region.region:
        out |= set(collect_vars_used_in_prim_expr(r.min))
    return out


def has_if_then_else(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> bool:
    return bool(_has_if_then_else(sch.get(block)))


def inline_producers(sch: s_tir.Schedule, producers: list[SBlockInfo]) -> list[SBlockInfo]:
    """Inline injective producers that are plain copies/arithmetic; keep padding (if_then_else) blocks.

    Returns the producers left at the root (to be scheduled as injective nests).
    """
    kept = []
    for block in reversed(producers):
        if has_if_then_else(sch, block.block_rv):
            kept.append(block)
            continue
        try:
            sch.compute_inline(block.block_rv)
        except ScheduleError:
            kept.append(block)
    return list(reversed(kept))


def inline_epilogue(sch: s_tir.Schedule, consumers: list[SBlockInfo]) -> list[SBlockInfo]:
    """Fold a chain of injective consumers (bias, residual add, relu, …) into its last block.

    Returns the consumers left (normally just the last one, which writes the output).
    """
    left = []
    for i, block in enumerate(consumers):
        if i == len(consumers) - 1:
            left.append(block)
            continue
        try:
            sch.compute_inline(block.block_rv)
        except ScheduleError:
            left.append(block)
    return left


def schedule_injective_nest(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, lanes: int,
                            parallel: bool = True) -> None:
    """Fuse a root-level spatial loop nest, vectorize ``lanes`` inner iterations, parallelize the rest.

    Expects a block whose loops are all spatial and directly under the root; keeps the
    results exact (it only reorders independent iterations).
    """
    loops = sch.get_loops(block)
    if not loops:
        return
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    extent = int_extent(sch.get(fused).extent)
    if extent is None:
        if parallel:
            sch.parallel(fused)
        return
    vec = lanes if extent % lanes == 0 else divisor_at_most(extent, lanes)
    if vec >= 4 and extent // vec >= 1:
        outer, inner = sch.split(fused, [None, vec])
        sch.vectorize(inner)
        if parallel and extent // vec > 1:
            sch.parallel(outer)
    elif parallel and extent > 1:
        sch.parallel(fused)


def output_indices(block_stmt: s_tir.SBlock) -> list[tirx.Var | None] | None:
    """Per output dimension, the block var indexing it (None for a constant, unit-extent index).

    None when the block writes more than one buffer or an index is anything else.
    """
    if len(block_stmt.writes) != 1:
        return None
    idx: list[tirx.Var | None] = []
    for r in block_stmt.writes[0].region:
        if int_extent(r.extent) != 1:
            return None
        if isinstance(r.min, tirx.Var):
            idx.append(r.min)
        elif isinstance(r.min, tirx.IntImm):
            idx.append(None)
        else:
            return None
    return idx
