"""Full tiles where a tile does not divide its extent: the last tile is shifted back, not cut.

A kernel replayed on a symbolic size (``schedules.defaults.replay_twin``) splits that size by
the register tile ``R`` of its static twin, so each block of the tile carries a predicate
``base + inner < n`` for the last, partial tile. TVM then cannot shrink the tile's local
accumulator to ``R`` rows (``CompactBufferAllocation`` keeps the whole symbolic extent), and the
predicates stay in the innermost loops: the accumulator lives in memory instead of registers
and the kernel runs 3-4x slower than its static twin. A static extent that a rule's tile does
not divide (``StemConv``: a 111-wide row in 16-lane vectors) gets the same checks;
``clamp_tail_tiles(static_bounds=True)`` makes those tiles full too.

``clamp_tail_tiles`` rewrites such a loop nest so that every tile is full: a tile starts at
``max(min(base, n - R), 0)``, so the last one ends exactly at ``n`` and recomputes rows the tile
before it already wrote, with the same values. Inside the innermost loop that holds all
predicated blocks, the body runs unpredicated when ``n >= R``; otherwise (an input smaller
than one tile) it runs the same shifted body with its predicates. Where ``n >= R`` is known
(a static extent), only the unpredicated body is kept.

What the rewrite expects, checked per top-level loop nest (a nest that does not match is left
as it is): every predicate is a conjunction of ``base + inner < n`` (or ``<= n - 1``) with
``n`` free of loop variables, ``base`` made of the loops outside the guard and ``inner`` a
dense iteration ``[0, R)`` of the loops inside it (conjuncts on other axes are kept, lower
bounds the shift satisfies dropped); the predicated iterator is a spatial one; a block with a
predicate writes global memory only as a plain store (no reduction into global memory, which
would race with the tile it overlaps); and every block in the guarded body that uses the
outer loops in its bindings is one of the predicated blocks. Guarantees: the same values as
the predicated kernel for every ``n``, and a function TVM checks as well formed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import tvm
import tvm_ffi
from tvm import s_tir, sym, tirx
from tvm.s_tir import SBlock, SBlockRealize

log = logging.getLogger(__name__)

_MAX_LOCAL_EXTENT = 1 << 16  # a local buffer's axis bounded by this is a tile, not a symbolic extent


@dataclass(frozen=True)
class _Cut:
    """One predicate conjunct ``base + inner < bound``; ``rows`` is the tile extent ``R``."""

    base: tirx.PrimExpr
    inner: tirx.PrimExpr
    bound: tirx.PrimExpr
    rows: int

    def start(self) -> tirx.PrimExpr:
        return tirx.max(tirx.min(self.base, self.bound - self.rows), 0)

    def guard(self) -> tirx.PrimExpr:
        return self.bound >= self.rows


class _NoMatch(Exception):
    """The nest is not of the form the rewrite handles; it stays as it is."""


def clamp_tail_tiles(func: tirx.PrimFunc, static_bounds: bool = False) -> tirx.PrimFunc:
    """``func`` with full, shifted tail tiles where a nest allows it (module doc); else ``func``.

    ``static_bounds``: also shift tiles whose bound is a constant (a static extent that the tile
    does not divide, e.g. a 111-wide row in 16-lane tiles); by default only symbolic bounds are
    tails."""
    root = func.body
    if not (isinstance(root, SBlockRealize) and isinstance(root.block.body, (tirx.For, tirx.SeqStmt))):
        return func
    nests = list(root.block.body.seq) if isinstance(root.block.body, tirx.SeqStmt) else [root.block.body]
    changed = False
    for i, nest in enumerate(nests):
        try:
            nests[i] = _rewrite_nest(nest, static_bounds)
            changed = True
        except _NoMatch as why:
            if str(why):
                log.debug("tail tiles kept (%s)", why)
    if not changed:
        return func
    body = nests[0] if len(nests) == 1 else tirx.SeqStmt(nests)
    # both copies of a guarded body define the same loop variables: ConvertSSA renames one
    module = tvm.IRModule({"main": func.with_body(_with_root_body(root, body))})
    rewritten = s_tir.transform.ConvertSSA()(module)["main"]
    if not s_tir.analysis.verify_well_formed(rewritten, assert_mode=False):
        log.debug("tail tiles kept: the rewritten kernel is not well formed")
        return func
    return rewritten


def serial_symbolic_vectors(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with each vectorized loop of symbolic extent made serial; else ``func``.

    A static twin may vectorize a loop over a whole row (an epilogue computed at the row's
    tile); replayed on a symbolic width that loop's extent is symbolic, and TVM's
    ``VectorizeLoop`` stops the build with an internal error. A serial loop is correct, and
    LLVM may still vectorize it."""
    root = func.body
    if not isinstance(root, SBlockRealize):
        return func

    def serial(loop: tirx.For) -> tirx.For:
        if loop.kind != tirx.ForKind.VECTORIZED or isinstance(loop.extent, tirx.IntImm):
            return loop
        return _with_body(loop, loop.body, tirx.ForKind.SERIAL)

    body = _map(root.block.body, on_loop=serial)
    return func if body.same_as(root.block.body) else func.with_body(_with_root_body(root, body))


def fits_symbolic_sizes(func: tirx.PrimFunc) -> bool:
    """Whether every vectorized loop of ``func`` has a static extent and every local (register)
    buffer a size bounded by a constant once TVM compacts it: what a kernel needs to run as fast on a symbolic
    size as on a static one."""
    if any(loop.kind == tirx.ForKind.VECTORIZED and not isinstance(loop.extent, tirx.IntImm)
           for loop in _loops_below(func.body).values()):
        return False
    placed = tvm.transform.Sequential([
        s_tir.transform.LowerInitBlock(), s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
        s_tir.transform.ConvertBlocksToOpaque(), s_tir.transform.CompactBufferAllocation(),
    ])(tvm.IRModule({"main": func}))["main"]
    analyzer = sym.Analyzer()  # a compacted tile is often min(n, R) rows: bounded is what counts
    return all(analyzer.const_int_bound(d).max_value <= _MAX_LOCAL_EXTENT
               for realize in _realizes(placed.body) for buf in realize.block.alloc_buffers
               if buf.scope() == "local" for d in buf.shape)


# -- the rewrite of one nest ---------------------------------------------------------------

def _rewrite_nest(nest: tirx.Stmt, static_bounds: bool) -> tirx.Stmt:
    realizes = _predicated(nest)
    if not realizes:
        raise _NoMatch("")
    path = _common_loops(nest, realizes)
    why = _NoMatch("the predicated blocks share no loop")
    for depth in range(len(path), 0, -1):  # the guard as deep as the tiles allow
        guard_loop = path[depth - 1]
        inner_loops = _loops_below(guard_loop.body)
        if any(loop.kind == tirx.ForKind.PARALLEL for loop in inner_loops.values()):
            break  # a local buffer allocated above a parallel loop would be shared by its threads
        try:
            return _guarded(nest, guard_loop, realizes, {loop.loop_var for loop in path[:depth]}, inner_loops,
                            static_bounds)
        except _NoMatch as err:
            why = err
    raise why


def _guarded(nest: tirx.Stmt, guard_loop: tirx.For, realizes: list[SBlockRealize], outer_vars: set,
             inner_loops: dict, static_bounds: bool) -> tirx.Stmt:
    analyzer = sym.Analyzer()
    for loop in _loops_below(nest).values():
        analyzer.bind(loop.loop_var, tvm.ir.Range.from_min_extent(loop.min, loop.extent))
    plans = {realize: _plan(realize, outer_vars, inner_loops, analyzer, static_bounds) for realize in realizes}
    _check_other_blocks(guard_loop.body, set(realizes), outer_vars)
    distinct: list[_Cut] = []  # one per tiled extent: every block must shift it the same way
    for cut in (c for plan in plans.values() for c in plan.cuts.values()):
        same = [d for d in distinct if tvm_ffi.structural_equal(cut.bound, d.bound)]
        if not same:
            distinct.append(cut)
        elif not (tvm_ffi.structural_equal(cut.base, same[0].base) and cut.rows == same[0].rows):
            raise _NoMatch(f"blocks tile {cut.bound} differently")
    condition = distinct[0].guard()
    for cut in distinct[1:]:
        condition = tirx.And(condition, cut.guard())
    full = _replace_realizes(guard_loop.body, plans, keep_bound_checks=False)
    if analyzer.can_prove(condition):  # static extents at least one tile long: no partial case
        guarded = _with_body(guard_loop, full)
    else:
        partial = _replace_realizes(guard_loop.body, plans, keep_bound_checks=True)
        guarded = _with_body(guard_loop, tirx.IfThenElse(condition, full, partial))
    return _map(nest, on_loop=lambda loop: guarded if loop.same_as(guard_loop) else loop)


@dataclass(frozen=True)
class _BlockPlan:
    """How one predicated block is rewritten: its iterators' cuts, and the conjuncts it keeps
    (checks on other axes, which the shift does not touch)."""

    cuts: dict[int, _Cut]
    kept: list[tirx.PrimExpr]


def _plan(realize: SBlockRealize, outer_vars: set, inner_loops: dict, analyzer: sym.Analyzer,
          static_bounds: bool) -> _BlockPlan:
    """Split the block's predicate into cuts (``base + inner < bound`` on a spatial iterator),
    conjuncts the loop ranges prove (dropped) and conjuncts on other axes (kept)."""
    block = realize.block
    for region in block.writes:
        if region.source.scope() != "local" and (block.init is not None
                                                 or any(r.source.same_as(region.source) for r in block.reads)):
            raise _NoMatch(f"block {block.name_hint} reduces into global memory")
    cuts: dict[int, _Cut] = {}
    others = []
    for conjunct in _conjuncts(realize.predicate):
        cut = (_as_cut(realize, conjunct, outer_vars, inner_loops, static_bounds)
               if isinstance(conjunct, (tirx.LT, tirx.LE)) else None)
        if cut is None:
            others.append(conjunct)
        elif cut[0] in cuts:
            raise _NoMatch(f"two bound checks on iterator {cut[0]} of {block.name_hint}")
        else:
            cuts[cut[0]] = cut[1]
    if not cuts:
        raise _NoMatch(f"block {block.name_hint} has no tile bound check")
    kept = []
    for conjunct in others:
        if analyzer.can_prove(conjunct) or _is_lower_check(conjunct, realize, cuts):
            continue
        if _uses(conjunct, {v for cut in cuts.values() for v in tirx.analysis.undefined_vars(cut.inner)}):
            raise _NoMatch(f"predicate {conjunct} also bounds the tile")
        kept.append(conjunct)
    return _BlockPlan(cuts, kept)


def _is_lower_check(conjunct: tirx.PrimExpr, realize: SBlockRealize, cuts: dict[int, _Cut]) -> bool:
    """``0 <= value`` of a cut iterator: a shifted tile starts at 0 or later by construction."""
    return (isinstance(conjunct, tirx.LE) and isinstance(conjunct.a, tirx.IntImm) and conjunct.a.value == 0
            and any(tvm_ffi.structural_equal(conjunct.b, realize.iter_values[k]) for k in cuts))


def _as_cut(realize: SBlockRealize, conjunct: tirx.LT | tirx.LE, outer_vars: set,
            inner_loops: dict, static_bounds: bool) -> tuple[int, _Cut] | None:
    """(iterator index, cut) when ``conjunct`` is a tile's bound check (``<``, or ``<=`` as TVM's
    simplifier sometimes writes it), else None. A check against a constant counts only with
    ``static_bounds``."""
    lhs, bound = conjunct.a, conjunct.b if isinstance(conjunct, tirx.LT) else conjunct.b + 1
    if _uses(bound, outer_vars) or _uses(bound, set(inner_loops)):
        return None  # a check against a loop is not a tail
    if not static_bounds and not tirx.analysis.undefined_vars(bound):
        return None  # a check against a constant is not a symbolic tail
    index = next((k for k, value in enumerate(realize.iter_values) if tvm_ffi.structural_equal(value, lhs)), None)
    if index is None or realize.block.iter_vars[index].iter_type != tirx.IterVar.DataPar:
        return None
    base_terms, inner_terms = [], []
    for term in _terms(lhs):
        used_inner, used_outer = _uses(term, set(inner_loops)), _uses(term, outer_vars)
        if used_inner and used_outer:
            return None
        (inner_terms if used_inner else base_terms).append(term)
    if not base_terms or not inner_terms:
        return None
    inner = _sum(inner_terms)
    return index, _Cut(_sum(base_terms), inner, bound, _dense_extent(inner, inner_loops))


def _dense_extent(inner: tirx.PrimExpr, inner_loops: dict) -> int:
    """``R`` when ``inner`` runs over every value of ``[0, R)`` exactly once."""
    used = {v: tvm.ir.Range.from_min_extent(loop.min, loop.extent) for v, loop in inner_loops.items()
            if _uses(inner, {v})}
    if not all(isinstance(r.min, tirx.IntImm) and r.min.value == 0 and isinstance(r.extent, tirx.IntImm)
               for r in used.values()):
        raise _NoMatch(f"tile loops of {inner} are not constant")
    mapped = sym.detect_iter_map([inner], used, check_level="bijective")
    if len(mapped.indices) != 1:
        raise _NoMatch(f"{inner} is not a dense tile")
    rows = 1
    for r in used.values():
        rows *= r.extent.value
    return rows


def _check_other_blocks(stmt: tirx.Stmt, predicated: set, outer_vars: set) -> None:
    """A block without a predicate must not place itself by the tile's start (it would not shift)."""
    for realize in _realizes(stmt):
        if realize not in predicated and any(_uses(v, outer_vars) for v in realize.iter_values):
            raise _NoMatch(f"block {realize.block.name_hint} follows the tile but has no bound check")


def _replace_realizes(stmt: tirx.Stmt, plans: dict, keep_bound_checks: bool) -> tirx.Stmt:
    def rewrite(realize: SBlockRealize) -> SBlockRealize:
        plan = plans[realize]
        values = [plan.cuts[k].start() + plan.cuts[k].inner if k in plan.cuts else v
                  for k, v in enumerate(realize.iter_values)]
        checks = list(plan.kept)
        if keep_bound_checks:
            checks += [values[k] < cut.bound for k, cut in plan.cuts.items()]
        predicate = tirx.const(True, "bool")
        for check in checks:
            predicate = check if _is_true(predicate) else tirx.And(predicate, check)
        return SBlockRealize(values, predicate, realize.block)

    return _map(stmt, on_realize=lambda r: rewrite(r) if r in plans else r)


# -- small TIR helpers (TVM's Python API has no statement mutator) ---------------------------

def _is_true(expr: tirx.PrimExpr) -> bool:
    return isinstance(expr, tirx.IntImm) and expr.value == 1


def _conjuncts(expr: tirx.PrimExpr) -> list[tirx.PrimExpr]:
    if isinstance(expr, tirx.And):
        return _conjuncts(expr.a) + _conjuncts(expr.b)
    if _is_true(expr):
        return []
    return [expr]


def _terms(expr: tirx.PrimExpr) -> list[tirx.PrimExpr]:
    if isinstance(expr, tirx.Add):
        return _terms(expr.a) + _terms(expr.b)
    return [expr]


def _sum(terms: list[tirx.PrimExpr]) -> tirx.PrimExpr:
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def _uses(node, variables: set) -> bool:
    return any(v in variables for v in tirx.analysis.undefined_vars(node))


def child_statements(stmt: tirx.Stmt) -> list[tirx.Stmt]:
    """The statements directly inside ``stmt`` (for a block realize, its block's body)."""
    if isinstance(stmt, tirx.SeqStmt):
        return list(stmt.seq)
    if isinstance(stmt, tirx.For):
        return [stmt.body]
    if isinstance(stmt, tirx.IfThenElse):
        return [stmt.then_case] + ([stmt.else_case] if stmt.else_case is not None else [])
    if isinstance(stmt, SBlockRealize):
        return [stmt.block.body]
    return []


def _realizes(stmt: tirx.Stmt) -> list[SBlockRealize]:
    found = [stmt] if isinstance(stmt, SBlockRealize) else []
    for child in child_statements(stmt):
        found += _realizes(child)
    return found


def _predicated(stmt: tirx.Stmt) -> list[SBlockRealize]:
    return [r for r in _realizes(stmt) if _conjuncts(r.predicate)]


def _loops_below(stmt: tirx.Stmt) -> dict:
    """Loop variable → loop, for every loop inside ``stmt``."""
    loops = {stmt.loop_var: stmt} if isinstance(stmt, tirx.For) else {}
    for child in child_statements(stmt):
        loops.update(_loops_below(child))
    return loops


def _common_loops(nest: tirx.Stmt, realizes: list[SBlockRealize]) -> list[tirx.For]:
    """The loops (outermost first) around every one of ``realizes``, not crossing a block."""
    def path_to(stmt, target, loops):
        if stmt.same_as(target):
            return loops
        if isinstance(stmt, SBlockRealize):
            return None
        for child in child_statements(stmt):
            found = path_to(child, target, loops + [stmt] if isinstance(stmt, tirx.For) else loops)
            if found is not None:
                return found
        return None

    paths = [path_to(nest, r, []) for r in realizes]
    if any(p is None for p in paths):
        raise _NoMatch("a predicated block sits inside another block")
    common = []
    for loops in zip(*paths):
        if not all(loop.same_as(loops[0]) for loop in loops):
            break
        common.append(loops[0])
    return common


def _with_body(loop: tirx.For, body: tirx.Stmt, kind: tirx.ForKind | None = None) -> tirx.For:
    return tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind if kind is None else kind, body,
                    loop.thread_binding, loop.annotations, loop.step)


def _rebuild(stmt: tirx.Stmt, children: list[tirx.Stmt]) -> tirx.Stmt:
    if isinstance(stmt, tirx.SeqStmt):
        return tirx.SeqStmt(children)
    if isinstance(stmt, tirx.For):
        return _with_body(stmt, children[0])
    if isinstance(stmt, tirx.IfThenElse):
        return tirx.IfThenElse(stmt.condition, children[0], children[1] if len(children) > 1 else None)
    raise _NoMatch(f"cannot rebuild a {type(stmt).__name__}")


def _map(stmt: tirx.Stmt, on_realize=lambda realize: realize, on_loop=lambda loop: loop) -> tirx.Stmt:
    """``stmt`` rebuilt bottom-up: ``on_realize`` applied to each block realize (not entered) and
    ``on_loop`` to each loop; unchanged parts are kept as they are."""
    if isinstance(stmt, SBlockRealize):
        return on_realize(stmt)
    children = child_statements(stmt)
    new = [_map(c, on_realize, on_loop) for c in children]
    if not all(a.same_as(b) for a, b in zip(children, new)):
        stmt = _rebuild(stmt, new)
    return on_loop(stmt) if isinstance(stmt, tirx.For) else stmt


def _with_root_body(root: SBlockRealize, body: tirx.Stmt) -> SBlockRealize:
    block = root.block
    return SBlockRealize(root.iter_values, root.predicate,
                         SBlock(block.iter_vars, block.reads, block.writes, block.name_hint, body, block.init,
                                block.alloc_buffers, block.match_buffers, block.annotations))
