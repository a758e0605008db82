"""CPU kernels keep the tile accumulators that fit the registers on the stack, not in TVM's
workspace pool.

kiln's rules accumulate each output tile in a buffer of scope ``local`` (``cache_write``,
``set_scope``), and ``schedules.tail_tiles`` tells accumulators from outputs by that scope.
TVM's ``LowerTVMBuiltin`` places only ``global``-scope allocations under 1 KB on the stack:
any other allocation becomes a ``TVMBackendAllocWorkspace`` / ``TVMBackendFreeWorkspace``
call pair where it is allocated, for a tile's accumulator once per tile inside the parallel
loop, and LLVM then keeps the accumulators in that memory: zeroed through memory at the tile's
start, stored back at its end, some reloaded by the epilogue. (Seen in the assembly of
ResNet-50's 64->256 1x1 conv on AVX2: 14 accumulators, two calls and 28 stores per tile of
896 FMAs.)

On a CPU both scopes are the same memory, so once scheduling is done ``accumulators_on_stack``
gives the ``global`` scope to each ``local`` accumulator of a tile a kiln rule made (its update
block carries ``kiln.space``) that fits the vector registers:
its accumulators, the vectors of the operand kept across the tile and one for the operand
streamed. Those become stack arrays that LLVM keeps in registers. A tile that does not fit is
left in the workspace: as a stack array LLVM spilled it worse than it spills the workspace
(a 2x7 tile of ResNet-50's 2048->512 1x1 conv at 7x7 on AVX2, 17 registers for 16: 1.28 ->
1.45 ms; the 64->256 conv at 56x56, a 1x14 tile in 16 registers: 0.95 -> 0.76 ms).
Values and loop nests are unchanged.
"""

from __future__ import annotations

import math
from collections import Counter

import tvm
from tvm import s_tir, tirx
from tvm.s_tir import SBlockRealize
from tvm.target import Target

from schedules.rules.common import SPACE_ANNOTATION
from schedules.tail_tiles import child_statements
from schedules.vector_spec import vector_spec


def _realizes(stmt, loops: tuple = ()) -> list[tuple[SBlockRealize, tuple]]:
    """Every block realize under ``stmt`` with the loops around it (outermost first)."""
    here = [(stmt, loops)] if isinstance(stmt, SBlockRealize) else []
    inner = (*loops, stmt) if isinstance(stmt, tirx.For) else loops
    return here + [found for child in child_statements(stmt) for found in _realizes(child, inner)]


def _registers_needed(realize: SBlockRealize, loops: tuple, acc: tirx.Buffer, vector_bits: int) -> int | None:
    """Vector registers the tile of update block ``realize`` (accumulating into ``acc``) keeps
    live: one per accumulator vector, the operand loaded fewer times per step kept whole, one
    for the other. None when the tile is not one vectorized loop under unrolled ones."""
    unrolled = [loop for loop in loops if loop.kind == tirx.ForKind.UNROLLED]
    vectorized = [loop for loop in loops if loop.kind == tirx.ForKind.VECTORIZED]
    if len(vectorized) != 1 or any(not isinstance(loop.extent, tirx.IntImm) for loop in unrolled):
        return None
    block = realize.block
    loop_vars_of = {iv.var: set(tirx.analysis.undefined_vars(value))
                    for iv, value in zip(block.iter_vars, realize.iter_values)}

    lanes = vectorized[0].extent
    if not isinstance(lanes, tirx.IntImm):
        return None

    def vectors(region: tirx.BufferRegion) -> int:
        """Vector registers ``region`` takes per reduction step (a broadcast takes one)."""
        used = set()
        for r in region.region:
            for var in tirx.analysis.undefined_vars(r.min):
                used |= loop_vars_of.get(var, set())
        per_load = 1
        if vectorized[0].loop_var in used:
            per_load = max(1, -(-int(lanes) * tvm.DataType(str(region.source.dtype)).bits // vector_bits))
        return per_load * math.prod(int(loop.extent) for loop in unrolled if loop.loop_var in used)

    operands = [vectors(r) for r in block.reads if not r.source.same_as(acc)]
    written = [r for r in block.writes if r.source.same_as(acc)]
    if len(operands) != 2 or len(written) != 1:
        return None
    return vectors(written[0]) + min(operands) + 1


def local_to_global(func: tirx.PrimFunc, registers: int, vector_bits: int) -> tirx.PrimFunc:
    """``func`` with each ``local`` accumulator its blocks allocate given the ``global`` scope
    when its tile fits ``registers`` vector registers of ``vector_bits`` (``func`` itself when
    none does)."""
    realizes = _realizes(func.body)
    allocated = {buf for realize, _ in realizes for buf in realize.block.alloc_buffers if buf.scope() == "local"}
    names = Counter(realize.block.name_hint for realize, _ in realizes)
    fitting = {}  # accumulator -> (name of its update block, index of its write there)
    for realize, loops in realizes:
        block = realize.block
        if names[block.name_hint] > 1 or SPACE_ANNOTATION not in block.annotations:
            continue  # tail_tiles' two copies of a nest; a block no kiln rule tiled (hand-written kernels)
        for index, region in enumerate(block.writes):
            acc = region.source
            updates = acc in allocated and any(r.source.same_as(acc) for r in block.reads)
            if updates and acc not in fitting:
                needed = _registers_needed(realize, loops, acc, vector_bits)
                if needed is not None and needed <= registers:
                    fitting[acc] = (block.name_hint, index)
    if not fitting:
        return func
    sch = s_tir.Schedule(func)
    for name, index in fitting.values():
        sch.set_scope(sch.get_sblock(name), index, "global")
    return sch.mod["main"]


def accumulators_on_stack(target: Target) -> tvm.transform.Pass:
    """``local_to_global`` on every PrimFunc of a module for CPU ``target``. Run it after
    scheduling: the rules and ``tail_tiles`` read the ``local`` scope."""
    spec = vector_spec(target)

    @tvm.transform.module_pass(opt_level=0, name="AccumulatorsOnStack")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        updates = {}
        for gvar, func in mod.functions_items():
            if isinstance(func, tirx.PrimFunc):
                new = local_to_global(func, spec.registers, spec.vector_bits)
                if not new.same_as(func):
                    updates[gvar] = new
        for gvar, func in updates.items():
            mod[gvar] = func
        return mod

    return _pass
