"""Helpers shared by kiln's CPU schedule rules: block analysis, inlining, injective nests."""

from __future__ import annotations

import math

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import SBlockInfo, collect_vars_used_in_prim_expr
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.s_tir.schedule import ScheduleError
from tvm.target import Target

from schedules.vector_spec import VectorSpec, vector_spec

import tvm

_has_if_then_else = tvm.get_global_func("s_tir.schedule.HasIfThenElse")
ROW_LOOP_MIN = 8  # fewest iterations of the serial inner loops (a row) in schedule_injective_nest


class CPUScheduleRule(ScheduleRule):
    """A rule for LLVM CPU targets; ``apply`` declines (None) for any other target."""

    def is_target_available(self, target: Target) -> bool:
        return target.kind.name == "llvm"

    def spec(self, target: Target) -> VectorSpec:
        return vector_spec(target)


# Annotation of the reduction block: the kiln rule whose design space a schedule is from. On that
# block, not the root: relax's SplitLayoutRewritePreproc rebuilds the root without annotations.
SPACE_ANNOTATION = "kiln.space"


def space_of(func: tirx.PrimFunc) -> str | None:
    """The kiln rule whose design space scheduled ``func`` (``SPACE_ANNOTATION``), or None."""
    sch = s_tir.Schedule(func)
    pending = [sch.get_sblock("root")]
    while pending:
        block = pending.pop()
        value = sch.get(block).annotations.get(SPACE_ANNOTATION)
        if value is not None:
            return str(value)
        pending += list(sch.get_child_blocks(block))
    return None


def choose(sch: s_tir.Schedule, candidates, default: int):
    """A tunable decision: MetaSchedule's ``sample_categorical`` over ``candidates`` (uniform
    probabilities), decided as ``default``, so the schedule built now is the default one and the
    search may replay its trace with another value. A single candidate is returned as a plain
    int: nothing to search."""
    values = sorted(set(int(c) for c in candidates) | {int(default)})
    if len(values) == 1:
        return values[0]
    return sch.sample_categorical(values, [1.0 / len(values)] * len(values), decision=values.index(int(default)))


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


# How many expression nodes inlining may copy beyond one read of the value. Inlining a block
# whose value is read twice copies the value; along a chain of such blocks (x · sigmoid(x)
# applied to its own output, tanh of tanh in an unrolled recurrence, where the polynomial reads
# its input 17-19 times) the copies multiply at each step and the kernel grows exponentially.
# Within the bound: a bias add read by a sigmoid (17 reads of ~10 nodes), a sigmoid gate read
# twice (s · a + (1 - s) · b, ~240 nodes). Beyond it the value keeps its own nest.
COPIED_NODES_MAX = 512

_EXPR_FIELDS = ("a", "b", "value", "condition", "true_value", "false_value", "body", "base", "stride")


class _TooLarge(Exception):
    pass


def _walk(expr, budget: list[int], visit) -> None:
    """Call ``visit`` on every node of ``expr`` as a tree; ``_TooLarge`` after ``budget[0]`` nodes."""
    budget[0] -= 1
    if budget[0] < 0:
        raise _TooLarge
    visit(expr)
    children = [getattr(expr, field, None) for field in _EXPR_FIELDS]
    children += list(getattr(expr, "args", ()) or ()) + list(getattr(expr, "indices", ()) or ())
    for child in children:
        if isinstance(child, tvm.ir.expr.Expr):
            _walk(child, budget, visit)


def _stored_value(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV):
    body = sch.get(block).body
    return body.value if isinstance(body, tirx.BufferStore) else None


def _copies_too_much(sch: s_tir.Schedule, producer, consumers) -> bool:
    """Whether inlining ``producer`` into ``consumers`` would copy more than ``COPIED_NODES_MAX``
    expression nodes beyond one read of its value."""
    value = _stored_value(sch, producer)
    if value is None:
        return False
    out = sch.get(producer).writes[0].source
    reads = [0]

    def count(node) -> None:
        if hasattr(node, "indices") and hasattr(node, "source") and node.source.same_as(out):
            reads[0] += 1

    for consumer in consumers:
        consumer_value = _stored_value(sch, consumer)
        if consumer_value is None:
            reads[0] += 1
            continue
        try:
            _walk(consumer_value, [1 << 20], count)
        except _TooLarge:
            return True
    if reads[0] <= 1:
        return False
    try:
        _walk(value, [COPIED_NODES_MAX // (reads[0] - 1)], lambda _: None)
    except _TooLarge:
        return True
    return False


def compute_inline_bounded(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> None:
    """``sch.compute_inline(block)``, refused (``ScheduleError``) where it would copy a large value
    into several reads (``COPIED_NODES_MAX``)."""
    if _copies_too_much(sch, block, sch.get_consumers(block)):
        raise ScheduleError(f"inlining {sch.get(block).name_hint} would copy a large value")
    sch.compute_inline(block)


def reverse_compute_inline_bounded(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> None:
    """``sch.reverse_compute_inline(block)``, refused like ``compute_inline_bounded``."""
    producers = sch.get_producers(block)
    if len(producers) == 1 and _copies_too_much(sch, producers[0], [block]):
        raise ScheduleError(f"inlining {sch.get(block).name_hint} would copy a large value")
    sch.reverse_compute_inline(block)


def inline_all(sch: s_tir.Schedule, blocks: list[SBlockInfo]) -> list[SBlockInfo]:
    """Inline (into consumers, else into the producer) every block that can be, until none can;
    returns the rest. dlight's ``try_inline`` with the copy bound of ``compute_inline_bounded``."""
    blocks = list(blocks)
    progress = True
    while progress:
        progress = False
        for inline in (compute_inline_bounded, reverse_compute_inline_bounded):
            for i, block in enumerate(blocks):
                try:
                    inline(sch, block.block_rv)
                except ScheduleError:
                    continue
                blocks.pop(i)
                progress = True
                break
            if progress:
                break
    return blocks


def _inline_unless(sch: s_tir.Schedule, blocks: list[SBlockInfo], keep) -> list[SBlockInfo]:
    """Inline each block (in the given order) unless ``keep(i, block)`` or inlining fails; returns the rest."""
    kept = []
    for i, block in enumerate(blocks):
        if keep(i, block):
            kept.append(block)
            continue
        try:
            compute_inline_bounded(sch, block.block_rv)
        except ScheduleError:
            kept.append(block)
    return kept


def inline_producers(sch: s_tir.Schedule, producers: list[SBlockInfo], keep_padding: bool = True
                     ) -> list[SBlockInfo]:
    """Inline injective producers that are plain copies/arithmetic; keep padding (if_then_else)
    blocks unless ``keep_padding`` is False.

    Returns the producers left at the root (to be scheduled as injective nests).
    """
    kept = _inline_unless(sch, list(reversed(producers)),
                          lambda _, b: keep_padding and has_if_then_else(sch, b.block_rv))
    return list(reversed(kept))


def inline_epilogue(sch: s_tir.Schedule, consumers: list[SBlockInfo]) -> list[SBlockInfo]:
    """Fold a chain of injective consumers (bias, residual add, relu, …) into its last block.

    Returns the consumers left (normally just the last one, which writes the output).
    """
    return _inline_unless(sch, consumers, lambda i, _: i == len(consumers) - 1)


_INDEX_OPS = (tirx.Add, tirx.Sub, tirx.Mul, tirx.FloorDiv, tirx.FloorMod, tirx.Min, tirx.Max)


def _substitute(expr: tirx.PrimExpr, vmap: list[tuple[tirx.Var, tirx.PrimExpr]]) -> tirx.PrimExpr | None:
    """``expr`` with variables replaced (index arithmetic only; None for anything else)."""
    if isinstance(expr, tirx.IntImm):
        return expr
    if isinstance(expr, tirx.Var):
        return next((e for v, e in vmap if v.same_as(expr)), expr)
    if isinstance(expr, _INDEX_OPS):
        a, b = _substitute(expr.a, vmap), _substitute(expr.b, vmap)
        return None if a is None or b is None else type(expr)(a, b)
    if isinstance(expr, tirx.Cast):
        v = _substitute(expr.value, vmap)
        return None if v is None else tirx.Cast(str(expr.ty.dtype), v)
    return None


def _accesses(expr, out: list) -> None:
    """Collect (shape, indices) of every buffer load in ``expr``."""
    if hasattr(expr, "indices") and hasattr(expr, "source"):
        out.append((list(expr.source.shape), list(expr.indices)))
    for field in ("a", "b", "value", "condition", "true_value", "false_value"):
        if hasattr(expr, field):
            _accesses(getattr(expr, field), out)
    for arg in getattr(expr, "args", ()) or ():
        _accesses(arg, out)


def contiguous_lanes(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, vec: int) -> bool | None:
    """Whether fusing the block's loop nest and vectorizing ``vec`` inner iterations gives only
    contiguous (ramp) loads and stores: lane ``l`` moves the last index by ``l`` and no other.

    None when the nest or its index arithmetic is outside what this check understands.
    Loads that are not contiguous (a channel shuffle whose planes are not a multiple of
    ``vec``) become one scalar load per lane, which is slower than not vectorizing at all.
    """
    loops = sch.get_loops(block)
    node = sch.get(loops[0]) if loops else None
    extents = []
    loop_vars = []
    while node is not None and hasattr(node, "loop_var"):
        extents.append(int_extent(node.extent))
        loop_vars.append(node.loop_var)
        node = node.body
    if node is None or not hasattr(node, "iter_values") or any(e is None for e in extents):
        return None
    total = 1
    for e in extents:
        total *= e
    if total % vec:
        return False
    dtype = str(loop_vars[-1].ty.dtype)
    o, lane = tirx.Var("o", dtype), tirx.Var("lane", dtype)
    fused = o * tirx.IntImm(dtype, vec) + lane
    stride, to_fused = 1, []
    for var, ext in reversed(list(zip(loop_vars, extents))):
        to_fused.append((var, tirx.floormod(tirx.floordiv(fused, tirx.IntImm(dtype, stride)), tirx.IntImm(dtype, ext))))
        stride *= ext
    realize = node
    binding = []
    for iv, value in zip(realize.block.iter_vars, realize.iter_values):
        value = _substitute(value, to_fused)
        if value is None:
            return None
        binding.append((iv.var, value))
    store = realize.block.body
    if not hasattr(store, "indices") or not hasattr(store, "value"):
        return None
    accesses: list = [(list(store.buffer.shape), list(store.indices))]
    _accesses(store.value, accesses)
    analyzer = tvm.sym.Analyzer()
    analyzer.bind(o, tvm.ir.Range(tirx.IntImm(dtype, 0), tirx.IntImm(dtype, total // vec)))
    analyzer.bind(lane, tvm.ir.Range(tirx.IntImm(dtype, 0), tirx.IntImm(dtype, vec)))
    lane0 = [(lane, tirx.IntImm(dtype, 0))]
    for shape, indices in accesses:
        offset = None
        for ext, index in zip(shape, indices):  # the flat element offset, row-major
            offset = index if offset is None else offset * ext + index
        at = None if offset is None else _substitute(offset, binding)
        at0 = None if at is None else _substitute(at, lane0)
        if at is None or at0 is None:
            return None
        moved = analyzer.canonical_simplify(tirx.Sub(at, at0))
        # contiguous, or the same element for every lane (a broadcast bias or scale)
        if not (analyzer.can_prove_equal(moved, lane) or analyzer.can_prove_equal(moved, tirx.IntImm(dtype, 0))):
            return False
    return True


def schedule_injective_nest(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, lanes: int,
                            parallel: bool = True) -> None:
    """Fuse a root-level spatial loop nest, vectorize ``lanes`` inner iterations, parallelize the rest.

    Expects a block whose loops are all spatial and directly under the root; keeps the
    results exact (it only reorders independent iterations). The vector width is the widest
    power of two up to ``lanes`` whose loads and stores are all contiguous
    (``contiguous_lanes``). When no width of at least 4 is: parallel over rows, each row the
    innermost loops (as few as make ``ROW_LOOP_MIN`` iterations) run serially, else (no such
    rows) one flat parallel loop.
    """
    loops = sch.get_loops(block)
    if not loops:
        return
    widths = [w for w in (lanes, lanes // 2) if w >= 4]
    verdicts = {w: contiguous_lanes(sch, block, w) for w in widths}
    row_loops = _row_loops(sch, loops)
    if row_loops and all(v is False for v in verdicts.values()):
        # No vector of whole rows (a padding copy of 58-wide rows, a channel shuffle, a transpose
        # to NHWC with 4 channels): parallel over rows, each row serial loops. One flat loop
        # would pay an index division per element (ShuffleNet's 116x58x58 padding: ~1.3 ms
        # flat, ~0.1 ms by rows; SqueezeNet INT8's 224x224x4 input transpose: 0.19 -> 0.017 ms).
        outer = loops[:-row_loops]
        rows = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        if parallel and int_extent(sch.get(rows).extent) != 1:
            sch.parallel(rows)
        if row_loops > 1:
            sch.unroll(loops[-1])  # a short innermost axis (e.g. 4 channels)
        return
    extents = [int_extent(sch.get(loop).extent) for loop in loops]
    if any(e is None for e in extents):
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        if parallel:
            sch.parallel(fused)
        return
    extent = math.prod(extents)
    if all(v is not None for v in verdicts.values()):
        vec = next((w for w in widths if verdicts[w]), 1)
    else:  # not analysable: vectorize as before
        vec = lanes if extent % lanes == 0 else divisor_at_most(extent, lanes)
    if vec < 4:
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        if parallel and extent > 1:
            sch.parallel(fused)
        return
    # Vectors within the fewest innermost loops whose extent they divide: the outer indices (the
    # channel of a [1, C, 1, 1] scale) are then the same for every lane, and LLVM loads such a
    # value once per vector instead of gathering it lane by lane (DenseNet's BN + ReLU over
    # 224x56x56, AVX-512, 2 threads: 0.59 -> 0.042 ms).
    k = next((k for k in range(1, len(loops) + 1) if math.prod(extents[-k:]) % vec == 0), len(loops))
    inner = sch.fuse(*loops[-k:]) if k > 1 else loops[-1]
    rest, lanes_loop = sch.split(inner, [None, vec])
    sch.vectorize(lanes_loop)
    outer = sch.fuse(*loops[:-k], rest) if k < len(loops) else rest
    if parallel and extent // vec > 1:
        sch.parallel(outer)


def _row_loops(sch: s_tir.Schedule, loops: list) -> int:
    """How many innermost loops make a row of at least ``ROW_LOOP_MIN`` iterations, leaving at
    least one outer loop; 0 when none do (or an extent is not static)."""
    size = 1
    for count, loop in enumerate(reversed(loops[1:]), start=1):
        extent = int_extent(sch.get(loop).extent)
        if extent is None:
            return 0
        size *= extent
        if size >= ROW_LOOP_MIN:
            return count
    return 0


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
