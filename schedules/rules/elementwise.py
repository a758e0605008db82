"""Injective kernels (elementwise, broadcast, concat, pad, reshape, transpose) and a parallel fallback."""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.schedule import ScheduleError
from tvm.target import Target

from schedules.rules.common import CPUScheduleRule, inline_all, int_extent, schedule_injective_nest


class Injective(CPUScheduleRule):
    """Functions whose blocks are all spatial: inline into the outputs, then one fused nest each.

    Expects every block injective (no reduction). Guarantees each remaining root nest is
    parallel over its outer iterations and vectorized by the vector width where the
    fused extent allows.
    """

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not self.is_target_available(target) or not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        blocks = normalize_prim_func(sch)
        if not blocks or not all(b.is_injective() for b in blocks):
            return None
        blocks = inline_all(sch, blocks)
        lanes = self.spec(target).lanes()
        try:
            for b in blocks:
                schedule_injective_nest(sch, b.block_rv, lanes)
        except ScheduleError:
            return None
        return sch


class ParallelFallback(CPUScheduleRule):
    """Anything else (softmax, mean, layer-norm statistics, several reductions …).

    Expects static loop extents. Inlines what can be inlined, then parallelizes the
    leading spatial loops of each root nest (reductions stay serial and in order, so the
    numbers are unchanged). Declines when no nest has a parallel loop to offer.
    """

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not self.is_target_available(target) or not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        blocks = normalize_prim_func(sch)
        if not blocks:
            return None
        blocks = [b for b in blocks if not b.is_injective()] + inline_all(
            sch, [b for b in blocks if b.is_injective()])
        done = 0
        try:
            for b in blocks:
                lead = []
                for it in b.iters:
                    if it.kind != "S" or int_extent(it.dom) is None:
                        break
                    lead.append(it.loop_rv)
                if not lead:
                    continue
                fused = sch.fuse(*lead) if len(lead) > 1 else lead[0]
                if int_extent(sch.get(fused).extent) > 1:
                    sch.parallel(fused)
                    done += 1
        except ScheduleError:
            return None
        return sch if done else None
