"""Register-tiled, vectorized, parallel schedules for kernels built around one reduction.

Two rules share one tiling core (``_tile_anchor``):

* ``ChannelVectorized`` — conv2d (NCHW, any kernel size, stride, dilation) and matmul /
  dense / batch matmul. It vectorizes the output axis that only the *weight* indexes
  (conv: output channel; matmul: column), packs that weight so the vector lanes are
  contiguous (an NCHWc-style ``[F/L, C, KH, KW, L]`` copy, made in parallel once per
  call), and register-tiles the innermost *data* axis (conv: output x; matmul: row).
  Inner loop: one vector load of weights, ``T`` scalar broadcasts of data, ``T`` FMAs
  into ``T`` accumulator registers.
* ``SpatialVectorized`` — depthwise / grouped conv2d, pooling and other single-reduction
  kernels: vectorizes the output's last (contiguous) axis and register-tiles channels.

Both keep the fused epilogue (bias, residual add, relu, clip, …) inside the kernel: it is
computed from the local accumulator tile right after the reduction (``reverse_compute_at``),
so the full-size intermediate never touches memory. Padding stays a separate parallel,
vectorized pass. The reduction order of every output element is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import SBlockInfo, normalize_prim_func
from tvm.s_tir.schedule import ScheduleError
from tvm.target import Target

from schedules.rules.common import (
    CPUScheduleRule,
    divisor_at_most,
    inline_epilogue,
    inline_producers,
    int_extent,
    output_indices,
    schedule_injective_nest,
    vars_of,
)
from schedules.vector_spec import VectorSpec


@dataclass
class _Anchor:
    """A function with exactly one reduction block, split into producers / anchor / consumers."""

    sch: s_tir.Schedule
    producers: list[SBlockInfo]
    anchor: SBlockInfo
    consumers: list[SBlockInfo]
    out_dims: list[tirx.Var | None]  # per output dimension (None: constant index)
    extents: dict[tirx.Var, int]

    @property
    def out_vars(self) -> list[tirx.Var]:
        return [v for v in self.out_dims if v is not None]


def _find_anchor(func: tirx.PrimFunc) -> _Anchor | None:
    """Accept functions whose blocks are injective except one reduction with static extents."""
    if not isinstance(func, tirx.PrimFunc):
        return None
    sch = s_tir.Schedule(func)
    blocks = normalize_prim_func(sch)
    if not blocks:
        return None
    reductions = [i for i, b in enumerate(blocks) if b.is_reduction()]
    if len(reductions) != 1 or any(not b.is_injective() for i, b in enumerate(blocks) if i != reductions[0]):
        return None
    anchor = blocks[reductions[0]]
    if any(it.kind not in "SR" for it in anchor.iters):
        return None
    stmt = sch.get(anchor.block_rv)
    out_dims = output_indices(stmt)
    if out_dims is None:
        return None
    out_vars = [v for v in out_dims if v is not None]
    extents = {}
    for iv in stmt.iter_vars:
        ext = int_extent(iv.dom.extent)
        if ext is None:
            return None
        extents[iv.var] = ext
    spatial = {iv.var for iv in stmt.iter_vars if iv.iter_type == tirx.IterVar.DataPar}
    if set(out_vars) != spatial:
        return None
    # Only consumers that read the reduction's result and are a simple chain can be fused here.
    consumers = blocks[reductions[0] + 1:]
    return _Anchor(sch, blocks[: reductions[0]], anchor, consumers, out_dims, extents)


def _tile_anchor(a: _Anchor, vec_var: tirx.Var, lanes: int, reg_var: tirx.Var | None, reg: int,
                 spec: VectorSpec, pack: tuple[int, int] | None = None) -> s_tir.Schedule:
    """Tile the anchor as ``parallel(outer) · reductions · unroll(reg) · vectorize(lanes)``.

    ``pack=(read_index, dim)`` first copies that read buffer into a layout whose ``dim`` is
    split by ``lanes`` with the lanes innermost (so vector loads are contiguous).
    """
    sch = a.sch
    lanes_base = spec.lanes()
    kept_producers = inline_producers(sch, a.producers)
    consumers = inline_epilogue(sch, a.consumers)
    block = a.anchor.block_rv
    stmt = sch.get(block)
    packed = None
    if pack is not None:
        read_index, dim = pack
        packed = sch.cache_read(block, read_index, "global")
        ndim = len(stmt.reads[read_index].source.shape)

        def pack_map(*ax):
            return [*(ax[i] // lanes if i == dim else ax[i] for i in range(ndim)), ax[dim] % lanes]

        sch.transform_layout(packed, ("write", 0), pack_map)
    loops = sch.get_loops(block)
    iter_vars = [iv.var for iv in sch.get(block).iter_vars]
    loop_of = dict(zip(iter_vars, loops))
    outer, inner_reg, inner_vec = [], None, None
    for v in a.out_vars:
        loop = loop_of[v]
        if v.same_as(vec_var):
            o, inner_vec = sch.split(loop, [None, lanes])
            outer.append(o)
        elif reg_var is not None and v.same_as(reg_var) and reg > 1:
            o, inner_reg = sch.split(loop, [None, reg])
            outer.append(o)
        else:
            outer.append(loop)
    red_loops = [loop_of[v] for v in iter_vars if v not in set(a.out_vars)]
    inner = [x for x in (inner_reg, inner_vec) if x is not None]
    sch.reorder(*outer, *red_loops, *inner)
    fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    sch.parallel(fused)
    # Accumulate into a local tile; the epilogue (or a plain write-back) follows per tile.
    if consumers:
        for c in consumers[:-1]:
            schedule_injective_nest(sch, c.block_rv, lanes_base)
        epilogue = consumers[-1].block_rv
        sch.reverse_compute_at(epilogue, fused, preserve_unit_loops=False)
        sch.set_scope(block, 0, "local")
    else:
        epilogue = sch.cache_write(block, 0, "local")
        sch.reverse_compute_at(epilogue, fused, preserve_unit_loops=False)
    out_dim = next(i for i, v in enumerate(a.out_dims) if v is not None and v.same_as(vec_var))
    nd = len(a.out_dims)
    if out_dim != nd - 1:

        def acc_map(*ax):
            return [*(ax[i] // lanes if i == out_dim else ax[i] for i in range(nd)), ax[out_dim] % lanes]

        sch.transform_layout(block, ("write", 0), acc_map)
    # Annotate before decompose_reduction: afterwards the update block is no longer a
    # "reduction block" and vectorize refuses it; the init copy keeps the annotations.
    sch.vectorize(inner_vec)
    if inner_reg is not None:
        sch.unroll(inner_reg)
    if red_loops:
        sch.decompose_reduction(block, red_loops[0])
    epi_loops = sch.get_loops(epilogue)
    epi_inner = epi_loops[-1]
    if int_extent(sch.get(epi_inner).extent) is not None and int_extent(sch.get(epi_inner).extent) >= 4:
        sch.vectorize(epi_inner)
    for p in kept_producers:
        schedule_injective_nest(sch, p.block_rv, lanes_base)
    if packed is not None:
        schedule_injective_nest(sch, packed, lanes, parallel=True)
    return sch


class ChannelVectorized(CPUScheduleRule):
    """conv2d (NCHW) and matmul-like kernels: vectorize the weight-only output axis.

    Expects one reduction block with two reads, ``data`` and ``weight``, where some output
    axis (conv: F, matmul: N) is indexed by the weight but not by the data, and that
    axis' extent is a multiple of the vector width. Declines (None) otherwise, e.g. for
    depthwise/grouped conv (every output axis also indexes the data) or odd channel counts.
    """

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not self.is_target_available(target):
            return None
        a = _find_anchor(func)
        if a is None:
            return None
        stmt = a.sch.get(a.anchor.block_rv)
        out_buf = stmt.writes[0].source
        reads = [(i, r) for i, r in enumerate(stmt.reads) if not r.source.same_as(out_buf)]
        if len(reads) != 2 or str(out_buf.dtype) != "float32":
            return None
        spatial = set(a.out_vars)
        plain = [all(isinstance(x.min, (tirx.Var, tirx.IntImm)) for x in r.region) for _, r in reads]
        last = a.out_dims[-1]
        # The weight: a read indexed by plain vars only, touching the fewest output axes
        # (conv: W[f, c, kh, kw] vs. X[n, c, y, x]); on a tie (matmul) the one with the last axis.
        order = sorted(range(2), key=lambda k: (not plain[k], len(spatial & vars_of(reads[k][1])),
                                                last not in vars_of(reads[k][1])))
        w, d = order[0], order[1]
        w_vars, d_vars = vars_of(reads[w][1]), vars_of(reads[d][1])
        only_w = [v for v in a.out_vars if v in w_vars and v not in d_vars]
        only_d = [v for v in a.out_vars if v in d_vars and v not in w_vars]
        if not plain[w] or not only_w or not only_d or not (spatial & w_vars) - d_vars:
            return None
        spec = self.spec(target)
        v, r = only_w[-1], only_d[-1]
        base = spec.lanes()
        if a.extents[v] % base != 0:
            return None
        cap = min(spec.registers - 2, 16)
        reg = divisor_at_most(a.extents[r], cap)
        nvec = next(n for n in (4, 2, 1) if a.extents[v] % (base * n) == 0 and reg * n <= cap)
        lanes = base * nvec
        w_index, w_region = reads[w]
        dim = next(i for i, x in enumerate(w_region.region) if x.min.same_as(v))
        try:
            return _tile_anchor(a, v, lanes, r, reg, spec, pack=(w_index, dim))
        except ScheduleError:
            return None


class SpatialVectorized(CPUScheduleRule):
    """Depthwise/grouped conv2d, pooling and other one-reduction kernels with a wide last axis.

    Expects one reduction block writing ``out[..., x]`` with ``x`` at least 4 wide; vectorizes
    ``x`` (a divisor of its extent, near the vector width), register-tiles the channel axis
    (dim 1 of a 4-D output, else the second-to-last) and parallelizes the rest.
    """

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not self.is_target_available(target):
            return None
        a = _find_anchor(func)
        if a is None:
            return None
        spec = self.spec(target)
        base = spec.lanes()
        x = a.out_dims[-1]
        if x is None:
            return None
        width = a.extents[x]
        lanes = base if width % base == 0 else divisor_at_most(width, 2 * base)
        if lanes < 4:
            return None
        nd = len(a.out_dims)
        reg_var = a.out_dims[1] if nd == 4 else (a.out_dims[-2] if nd >= 2 else None)
        reg = 1
        if reg_var is not None:
            nvec = -(-lanes // base)
            reg = divisor_at_most(a.extents[reg_var], max(1, min(8, (spec.registers - 4) // nvec)))
        try:
            return _tile_anchor(a, x, lanes, reg_var, reg, spec)
        except ScheduleError:
            return None
