"""``StemConv``: NCHW convolutions with a short reduction (a network's first conv on the image).

A stem conv (3 input channels, 3x3 window: 27 multiply-adds per output) is mostly output:
``ChannelVectorized`` keeps the channels in vector lanes, so its epilogue writes every output
element on its own into a different channel plane of the NCHW tensor, and with so little
reduction to amortize it, those scattered writes are most of the kernel. On the first conv of
a network the output is also too large for the cache, and in a whole-network run each
scattered write pulls a line from memory: SqueezeNet's 3->64 stride-2 stem took 1.2 ms in the
network against 0.57 ms alone (ONNX Runtime: 0.33 ms, AMD EPYC Zen 4, 2 threads).

This rule vectorizes the output's x axis instead, as ``SpatialVectorized`` does, and
register-tiles output channels: each tile's epilogue stores whole vectors along a row.
A stride-2 stem on an input of even width reads it from a copy with the even and the odd
columns in two planes (``[n, c, y, x % 2, x // 2]``; the padding pass writes that layout where
there is one), so output columns ``x .. x + L`` read input columns ``2x + kw`` as one
contiguous load from plane ``kw % 2``, and its tile is two vectors of columns by half as many
channels (each broadcast weight feeds two FMAs). SqueezeNet's 3->64 stem on Zen 3 (AVX2, 1 and 2
threads, kernels alone, same process): 0.69x of one vector loaded lane by lane by 8 channels
(deinterleaved alone, one vector by 8 channels: 0.79x). Other strided inputs are loaded lane by
lane, once per tile and shared by all its channels. When
the vector does not divide the width (111 for a 224 input at stride 2), the last tile of a
row is shifted back to end at the row's end (``schedules.tail_tiles.clamp_tail_tiles`` with
``static_bounds``, applied by ``schedules.defaults.schedule_func``) instead of a bound check
in every lane. Padding stays a separate pass.

Expects one float32 reduction block with two reads (data and weight) writing a 4-D output
``[n, f, y, x]``, ``f`` indexed by the weight only (a dense conv, not a grouped or depthwise
one), a window on the data, at most ``MAX_REDUCTION`` multiply-adds per output and a row at
least one vector wide. Declines (None) otherwise. The reduction order of every output is
unchanged. No design spaces: the rule's one decision, channels per tile, is fixed.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.schedule import ScheduleError
from tvm.target import Target

from schedules.rules.common import CPUScheduleRule, divisor_at_most, has_if_then_else, schedule_injective_nest
from schedules.rules.reduction import _tile_anchor, channel_case, reduction_length, x_stride

MAX_REDUCTION = 32  # multiply-adds per output: a 3-channel 3x3 stem (27), not a 7x7 one (147)
MAX_CHANNEL_ROWS = 24  # accumulators per tile (one vector each), within AVX-512's 32 registers


class StemConv(CPUScheduleRule):
    """Short-reduction NCHW convs: vectorize output x, register-tile output channels (module doc)."""

    clamps_static_tails = True  # schedule_func shifts the last tile of a row that the vector does not divide

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not self.is_target_available(target):
            return None
        c = channel_case(func)  # data and weight reads, an axis only the weight indexes (f), one only the data (x)
        if c is None or not c.windowed or len(c.a.out_dims) != 4:
            return None
        a = c.a
        f, x = a.out_dims[1], a.out_dims[3]
        if f is None or x is None or not c.v.same_as(f) or not c.r.same_as(x):
            return None
        reduction = reduction_length(a)
        spec = self.spec(target)
        lanes = spec.lanes()
        if reduction > MAX_REDUCTION or a.extents[x] < lanes:
            return None
        rows = divisor_at_most(a.extents[f], min(MAX_CHANNEL_ROWS, spec.registers - 6))
        try:
            if x_stride(a, x) == 2 and a.extents[x] >= 2 * lanes and _deinterleaves(a.sch, a.anchor.block_rv, c.d_index):
                copy = _deinterleave_columns(a.sch, a.anchor.block_rv, c.d_index)
                # two vectors by half the channels: as many accumulators, half the broadcasts
                sch = _tile_anchor(a, x, 2 * lanes, f, divisor_at_most(a.extents[f], max(1, rows // 2)), spec)
                if copy is not None:
                    schedule_injective_nest(sch, copy, lanes)
                return sch
            return _tile_anchor(a, x, lanes, f, rows, spec)
        except ScheduleError:
            return None


def _deinterleaves(sch: s_tir.Schedule, anchor: s_tir.schedule.SBlockRV, data_index: int) -> bool:
    """Whether the conv's data read is a 4-D buffer of even width (two column planes)."""
    data = sch.get(anchor).reads[data_index].source
    return len(data.shape) == 4 and isinstance(data.shape[-1], tirx.IntImm) and int(data.shape[-1]) % 2 == 0


def _deinterleave_columns(sch: s_tir.Schedule, anchor: s_tir.schedule.SBlockRV, data_index: int
                          ) -> s_tir.schedule.SBlockRV | None:
    """Lay the conv's data read out as ``[n, c, y, x % 2, x // 2]``: the padding block that writes
    it (kept by ``inline_producers``) writes that layout; without one, a copy of the input does
    (returned, to be scheduled)."""
    data = sch.get(anchor).reads[data_index].source
    writers = [b for b in sch.get_producers(anchor) if has_if_then_else(sch, b)
               and any(w.source.same_as(data) for w in sch.get(b).writes)]
    copy = None if writers else sch.cache_read(anchor, data_index, "global")
    # pad_value: a trace replayed on a symbolic width (schedules.defaults.replay_twin) may meet
    # an odd one, whose last column plane is one short
    sch.transform_layout(writers[0] if writers else copy, ("write", 0),
                         lambda n, ch, y, x: [n, ch, y, x % 2, x // 2], pad_value=0.0)
    return copy
