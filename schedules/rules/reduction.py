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
so the full-size intermediate never touches memory. Padding stays a separate parallel pass
(vectorized where its rows allow), except for strided depthwise convs, which select zeros in
their loads. 3x3 convs walk their input channels in chunks per block of rows
(``ReductionBlocking``) so weights stay in L1. The reduction order of every output element is
unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import SBlockInfo, collect_vars_used_in_prim_expr, normalize_prim_func
from tvm.s_tir.schedule import ScheduleError
from tvm.target import Target

from schedules.rules.common import (
    SPACE_ANNOTATION,
    CPUScheduleRule,
    choose,
    divisor_at_most,
    inline_epilogue,
    inline_producers,
    int_extent,
    output_indices,
    schedule_injective_nest,
    vars_of,
)
from schedules.vector_spec import VectorSpec


LAYOUT_REWRITE_PREPROC = "meta_schedule.layout_rewrite_preproc"  # what SplitLayoutRewritePreproc looks for


def _is_param(sch: s_tir.Schedule, buffer: tirx.Buffer) -> bool:
    """Whether ``buffer`` is an argument of the function being scheduled (not an intermediate)."""
    return any(p.same_as(buffer) for p in sch.mod["main"].params)


def input_reads(stmt: s_tir.SBlock) -> list[tuple[int, tirx.BufferRegion]]:
    """(read index, region) of a reduction block's inputs: its reads except the accumulator."""
    out = stmt.writes[0].source
    return [(i, r) for i, r in enumerate(stmt.reads) if not r.source.same_as(out)]


def is_windowed(a: "_Anchor", data: tirx.BufferRegion) -> bool:
    """Whether the data read has a window: an index that moves with both an output position and
    a reduction axis longer than 1 (conv ``x*s + kw``); a 1x1 conv, a matmul or a
    blocked-channel reduction (``[.., ci]``) has none."""
    spatial = set(a.out_vars)
    return any(
        any(a.extents.get(u, 1) > 1 and u not in spatial for u in used) and any(u in spatial for u in used)
        for used in (set(collect_vars_used_in_prim_expr(x.min)) for x in data.region))


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
                 spec: VectorSpec, pack: tuple[int, int] | None = None, rows: int = 1,
                 chunk: int | None = None, inline_padding: bool = False,
                 blocking: ReductionBlocking | None = None, vec_blocks_last: bool = False,
                 vec_blocks: tuple[tirx.Var, int] | None = None,
                 rows_last: tuple[int, int] | None = None, channel_blocks: tirx.Var | None = None) -> s_tir.Schedule:
    """Tile the anchor as ``parallel(outer) · reductions · unroll(reg) · vectorize(lanes)``.

    ``pack=(read_index, dim)`` first copies that read buffer into a layout whose ``dim`` is
    split by ``lanes``, the blocks outermost and the lanes innermost, so that vector loads are
    contiguous and each task's block is one contiguous stream (a matmul's ``[K, N]`` weight as
    ``[N / lanes, K, lanes]``; ``[K, N / lanes, lanes]`` strode 32 KB per step of ddddocr's
    ``[1024, 8224]`` classifier and ran at half the speed).
    ``rows > 1`` vectorizes ``rows`` whole rows: ``rows`` values of the output axis just before
    ``vec_var`` times all of ``vec_var`` (then ``lanes`` is ``rows`` times its extent); only
    valid when every read indexes those two axes like the output does (contiguous rows).
    ``chunk`` (a divisor of ``lanes``) vectorizes ``chunk`` lanes at a time, the ``lanes / chunk``
    vectors unrolled. ``inline_padding`` computes padding inside the anchor instead of as a
    separate padded copy. ``blocking`` (see ``ReductionBlocking``) makes each parallel task a
    block of rows whose tiles step through the reduction together, chunk by chunk.
    ``vec_blocks_last`` orders the parallel loop so that consecutive tasks are the vector axis'
    blocks of one spatial tile (they share its data, read once into L1) instead of all spatial
    tiles of one block (which streams all the data again per block); ``channel_blocks`` names the
    output axis of those blocks when it is not the vector axis' own outer part (NCHWc's ``fo``,
    a tile of one vector). ``vec_blocks=(var, n)``:
    the vector axis is the inner part of a blocked axis (NCHWc's ``fi`` under ``fo``); ``n``
    values of ``var`` are register-tiled too, ``n`` vectors per tile. ``rows_last=(read_index,
    dim)`` first copies that (data) read into a layout with ``dim`` moved innermost, so that the
    register tile's broadcasts read consecutive addresses (see ``_rows_last``). ``reg``,
    ``blocking``'s rows and chunk may be sampled decisions (``choose``).
    """
    sch = a.sch
    lanes_base = spec.lanes()
    kept_producers = inline_producers(sch, a.producers, keep_padding=not inline_padding)
    consumers = inline_epilogue(sch, a.consumers)
    block = a.anchor.block_rv
    stmt = sch.get(block)
    packed = None
    if pack is not None:
        read_index, dim = pack
        packed = sch.cache_read(block, read_index, "global")
        ndim = len(stmt.reads[read_index].source.shape)

        def pack_map(*ax):
            return [ax[dim] // lanes, *(ax[i] for i in range(ndim) if i != dim), ax[dim] % lanes]

        sch.transform_layout(packed, ("write", 0), pack_map)
        if _is_param(sch, stmt.reads[read_index].source):
            # A copy of a function argument alone: relax.transform.SplitLayoutRewritePreproc can move
            # it into its own kernel, which FoldConstant then runs at compile time on constant weights.
            sch.annotate(packed, LAYOUT_REWRITE_PREPROC, tirx.IntImm("int32", 1))
    moved = None
    if rows_last is not None:
        read_index, dim = rows_last
        moved = sch.cache_read(block, read_index, "global")
        ndim = len(stmt.reads[read_index].source.shape)
        sch.transform_layout(moved, ("write", 0), lambda *ax: [*(ax[i] for i in range(ndim) if i != dim), ax[dim]])
    loops = sch.get_loops(block)
    iter_vars = [iv.var for iv in sch.get(block).iter_vars]
    loop_of = dict(zip(iter_vars, loops))
    vec_pos = next(i for i, v in enumerate(a.out_dims) if v is not None and v.same_as(vec_var))
    rows_var = a.out_dims[vec_pos - 1] if rows > 1 else None
    outer, inner_reg, inner_vec, inner_rows, block_rows, inner_blocks = [], None, None, None, None, None
    for v in a.out_vars:
        loop = loop_of[v]
        if vec_blocks is not None and v.same_as(vec_blocks[0]):
            o, inner_blocks = sch.split(loop, [None, vec_blocks[1]])
            outer.append(o)
        elif blocking is not None and v.same_as(blocking.row_var):
            o, block_rows = sch.split(loop, [None, blocking.rows])
            outer.append(o)
        elif v.same_as(vec_var):
            o, inner_vec = sch.split(loop, [None, lanes // rows])
            outer.append(o)
        elif rows_var is not None and v.same_as(rows_var):
            o, inner_rows = sch.split(loop, [None, rows])
            outer.append(o)
        elif reg_var is not None and v.same_as(reg_var) and (not isinstance(reg, int) or reg > 1):
            o, inner_reg = sch.split(loop, [None, reg])
            outer.append(o)
        else:
            outer.append(loop)
    red_loops = [loop_of[v] for v in iter_vars if v not in set(a.out_vars)]
    inner = [x for x in (inner_blocks, inner_reg, inner_rows, inner_vec) if x is not None]
    if vec_blocks_last and blocking is None:
        channel_var = vec_blocks[0] if vec_blocks is not None else channel_blocks if channel_blocks is not None else vec_var
        k = next(i for i, v in enumerate(a.out_vars) if v.same_as(channel_var))
        outer = outer[:k] + outer[k + 1:] + [outer[k]]
    if block_rows is not None:
        # parallel(outer up to the row blocks) · chunk · tiles of the block · rest of the reduction
        n_par = next(i for i, v in enumerate(a.out_vars) if v.same_as(blocking.row_var)) + 1
        chunk_outer, chunk_inner = sch.split(red_loops[0], [None, blocking.chunk])
        sch.reorder(*outer[:n_par], chunk_outer, block_rows, *outer[n_par:], chunk_inner, *red_loops[1:], *inner)
        outer, red_loops = outer[:n_par], [chunk_outer]
    else:
        sch.reorder(*outer, *red_loops, *inner)
    if inner_rows is not None:
        inner_vec = sch.fuse(inner_rows, inner_vec)
    fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    sch.parallel(fused)
    # Accumulate into a local tile; the epilogue (or a plain write-back) follows per tile. With
    # sampled decisions its unit loops stay: a trace replayed with a tile of 1 must still find as
    # many loops as the trace recorded.
    keep_unit = any(not isinstance(x, int) for x in (reg, *(blocking_sizes(blocking))))
    if consumers:
        for c in consumers[:-1]:
            _epilogue_stage_per_tile(sch, c.block_rv, fused, lanes_base)
        epilogue = consumers[-1].block_rv
        sch.reverse_compute_at(epilogue, fused, preserve_unit_loops=keep_unit)
        sch.set_scope(block, 0, "local")
    else:
        epilogue = sch.cache_write(block, 0, "local")
        sch.reverse_compute_at(epilogue, fused, preserve_unit_loops=keep_unit)
    out_dim = next(i for i, v in enumerate(a.out_dims) if v is not None and v.same_as(vec_var))
    nd = len(a.out_dims)
    if out_dim != nd - 1:

        def acc_map(*ax):
            return [*(ax[i] // lanes if i == out_dim else ax[i] for i in range(nd)), ax[out_dim] % lanes]

        sch.transform_layout(block, ("write", 0), acc_map)
    # Annotate before decompose_reduction: afterwards the update block is no longer a
    # "reduction block" and vectorize refuses it; the init copy keeps the annotations.
    if chunk is not None and chunk < lanes:
        unrolled, inner_vec = sch.split(inner_vec, [None, chunk])
        sch.unroll(unrolled)
    sch.vectorize(inner_vec)
    if inner_reg is not None:
        sch.unroll(inner_reg)
    if inner_blocks is not None:
        sch.unroll(inner_blocks)
    if red_loops:
        sch.decompose_reduction(block, red_loops[0])
    epi_loops = sch.get_loops(epilogue)
    epi_inner = epi_loops[-1]
    if rows > 1 and len(epi_loops) >= 2 and int_extent(sch.get(epi_loops[-2]).extent) == rows:
        epi_inner = sch.fuse(epi_loops[-2], epi_inner)
    epi_extent = int_extent(sch.get(epi_inner).extent)
    if chunk is not None and epi_extent is not None and chunk < epi_extent and epi_extent % chunk == 0:
        unrolled, epi_inner = sch.split(epi_inner, [None, chunk])
        sch.unroll(unrolled)
        epi_extent = chunk
    if epi_extent is not None and epi_extent >= 4:
        sch.vectorize(epi_inner)
    for p in kept_producers:
        schedule_injective_nest(sch, p.block_rv, lanes_base)
    if packed is not None:
        schedule_injective_nest(sch, packed, lanes, parallel=True)
    if moved is not None:
        schedule_injective_nest(sch, moved, lanes_base, parallel=True)
    return sch


def _epilogue_stage_per_tile(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, tile: s_tir.schedule.LoopRV,
                             lanes: int) -> None:
    """An epilogue block left between the reduction and the last one (a value too large to copy
    into its several reads, ``COPIED_NODES_MAX``): computed per output tile, its innermost loop
    vectorized, so its intermediate is one tile; where it cannot follow the tile, its own nest."""
    try:
        sch.reverse_compute_at(block, tile, preserve_unit_loops=False)
    except ScheduleError:
        schedule_injective_nest(sch, block, lanes)
        return
    inner = sch.get_loops(block)[-1]
    extent = int_extent(sch.get(inner).extent)
    if extent is not None and extent >= 4:
        sch.vectorize(inner)


@dataclass(frozen=True)
class ReductionBlocking:
    """Cache blocking of a windowed conv: a parallel task computes ``rows`` values of ``row_var``
    (the output rows), and all its register tiles walk the first reduction axis (input
    channels) ``chunk`` at a time, so that chunk's weights stay in L1 across the tiles instead
    of each tile streaming the whole filter from L2. Measured (AVX2, 2 threads, 3x3 convs):
    ResNet-50's 256-channel 14x14 2.05 -> 1.50 ms, 128-channel 28x28 2.21 -> 1.43 ms,
    64-channel 56x56 2.02 -> 1.60 ms; slower with a single tile per row (512-channel 7x7,
    1.78 -> 2.03 ms). 1x1 convs gain nothing with a 1-vector tile, much with a 4-vector one
    (``pointwise_tile``)."""

    row_var: tirx.Var
    rows: int
    chunk: int


def blocking_sizes(blocking: ReductionBlocking | None) -> tuple:
    return () if blocking is None else (blocking.rows, blocking.chunk)


MIN_BLOCK_TILES = 24  # register tiles per task that make a weight chunk worth keeping in L1
MIN_TASKS = 8  # parallel tasks a blocked conv must still offer (more cores than these 2 exist)
CHUNK_CHANNELS = 16


def reduction_blocking(a: _Anchor, row_var: tirx.Var | None, tiles_per_row: int,
                       tasks_per_row_block: int, channels_per_step: int = 1,
                       chunk_channels: int = CHUNK_CHANNELS) -> ReductionBlocking | None:
    """The blocking for a conv whose output rows hold ``tiles_per_row`` register tiles: the
    fewest rows (a divisor of the height) giving ``MIN_BLOCK_TILES`` tiles, input channels by
    ``chunk_channels``; None when the rows cannot give that many tiles, the channels are few, or
    fewer than ``MIN_TASKS`` parallel tasks would be left (``tasks_per_row_block`` of them per
    block of rows: batch times channel blocks). ``channels_per_step``: input channels per step of
    the first reduction axis (the block size of a blocked-channel conv, else 1)."""
    stmt = a.sch.get(a.anchor.block_rv)
    reduction = [iv for iv in stmt.iter_vars if iv.iter_type != tirx.IterVar.DataPar]
    if row_var is None or not reduction:
        return None
    steps = a.extents[reduction[0].var]
    chunk = max(1, chunk_channels // channels_per_step)
    if steps % chunk or steps * channels_per_step < 2 * chunk_channels:
        return None
    height = a.extents[row_var]
    rows = next((d for d in range(1, height + 1) if height % d == 0 and d * tiles_per_row >= MIN_BLOCK_TILES), None)
    if rows is None or tasks_per_row_block * (height // rows) < MIN_TASKS:
        return None
    return ReductionBlocking(row_var, rows, chunk)


def _rows_in_parallel(a: _Anchor) -> s_tir.Schedule:
    """Output rows in parallel, each row a scalar loop over x with the window inside; padding
    computed per row. For strided pooling: a vector over x would gather every lane with its
    own load (ResNet-50's 3x3 stride-2 max-pool: 0.42 ms vectorized, 0.17 ms like this)."""
    sch = a.sch
    kept = inline_producers(sch, a.producers)
    consumers = inline_epilogue(sch, a.consumers)
    block = a.anchor.block_rv
    loop_of = dict(zip([iv.var for iv in sch.get(block).iter_vars], sch.get_loops(block)))
    rows = [loop_of[v] for v in a.out_vars[:-1]]
    fused = sch.fuse(*rows) if len(rows) > 1 else rows[0]
    sch.parallel(fused)
    for p in kept:
        sch.compute_at(p.block_rv, fused, preserve_unit_loops=False)
    if consumers:
        sch.reverse_compute_at(consumers[-1].block_rv, fused, preserve_unit_loops=False)
    return sch


def vector_instructions(lanes: int, base: int) -> int:
    """How many vector instructions LLVM needs for ``lanes`` elements with ``base``-lane registers
    (a 14-lane vector on AVX2 becomes 8 + 4 + 2: three)."""
    full, rest = divmod(lanes, base)
    return full + bin(rest).count("1")


def _rows_contiguous(a: _Anchor, y: tirx.Var, x: tirx.Var) -> bool:
    """Whether every read that uses ``y`` or ``x`` indexes its last two axes as exactly ``[y, x]``
    with the output's row length, so that consecutive rows are consecutive in memory
    (1x1, stride-1, unpadded convolutions)."""
    width = a.extents[x]
    for _, r in input_reads(a.sch.get(a.anchor.block_rv)):
        used = vars_of(r)
        if y not in used and x not in used:
            continue
        region = r.region
        if len(region) < 2 or not (region[-2].min.same_as(y) and region[-1].min.same_as(x)):
            return False
        if int_extent(r.source.shape[-1]) != width:
            return False
        if any(y in set(collect_vars_used_in_prim_expr(e.min)) or x in set(collect_vars_used_in_prim_expr(e.min))
               for e in region[:-2]):
            return False
    return True


def spatial_tile(width: int, height: int, channels: int, spec: VectorSpec, bits: int = 32, strided: bool = False
                 ) -> tuple[int, int, int, int] | None:
    """(rows, lanes, chunk, channel rows) of a ``SpatialVectorized`` accumulator tile.

    The tile covers ``lanes`` outputs along x: a divisor of ``width``, or ``rows`` whole rows
    (``height > 1`` says rows are contiguous and may be joined). It is computed as
    ``lanes / chunk`` unrolled vectors of ``chunk`` lanes, ``chunk`` a power of two (a full
    register or half of one), or a single vector no wider than a register: LLVM turns loop-
    carried vectors of other widths (14 or 28 floats on AVX2) into scalar shuffles and spills,
    about 5x slower. Picks the most useful lanes per instruction times FMAs per load.
    Otherwise falls back to one vector of up to two registers; None below 4 lanes.
    ``bits``: the accumulator's element width (a uint8 max-pool fills a register with 32 lanes
    on AVX2, 4x fewer instructions than float32's 8). ``strided``: the kernel reads x with a
    stride above 1 (its lanes are loaded one by one).
    """
    base = spec.lanes(bits)
    cap = spec.registers - 2  # accumulators; one broadcast and one data register besides
    if height <= 1:  # x alone (depthwise, pooling): one vector of up to two registers
        lanes = base if width % base == 0 else divisor_at_most(width, 2 * base)
        if lanes < 4:
            return None
        nvec = -(-lanes // base)
        cap = min(8, (spec.registers - 4) // nvec)
        if base >= 16 and not strided:  # AVX-512: at most 8 registers' worth of accumulators (136-channel
            cap = min(cap, max(1, 8 * base // lanes))  # 3x3 depthwise at 28x28: 8 channels of 28 lanes 0.13 ms,
            # 4 channels 0.05 ms; the stride-2 112-channel one at 56x56 was slower with 4: 0.18 -> 0.24 ms
        return 1, lanes, lanes, divisor_at_most(channels, max(1, cap))
    best = None
    for rows, lanes, chunk in row_tiles(width, height, base, cap):
        nvec = lanes // chunk
        reg = spatial_channel_rows(channels, lanes, chunk, spec)
        score = (chunk / base) * (nvec * reg / (nvec + reg))
        if best is None or score > best[0] + 1e-9:
            best = (score, rows, lanes, chunk, reg)
    if best is None:  # no power-of-two chunk fits (e.g. 13 wide): one vector, as wide as two registers
        lanes = divisor_at_most(width, 2 * base)
        if lanes < 4:
            return None
        return 1, lanes, lanes, divisor_at_most(channels, max(1, min(8, cap // vector_instructions(lanes, base))))
    return best[1:]


def spatial_tile_shapes(width: int, height: int, channels: int, spec: VectorSpec, bits: int = 32,
                        strided: bool = False) -> list[tuple[int, int, int]]:
    """Every (rows, lanes, chunk) accumulator shape ``spatial_tile`` weighs for these extents (the
    design spaces of ``SpatialVectorized``): divisors of the width of at least 4 lanes as one
    vector of up to two registers, and with contiguous rows (``height > 1``) whole rows as
    unrolled full or half registers within the register budget."""
    base = spec.lanes(bits)
    shapes = [(1, d, d) for d in range(4, min(width, 2 * base) + 1) if width % d == 0]
    if height > 1:
        shapes += [t for t in row_tiles(width, height, base, spec.registers - 2) if t not in shapes]
    return shapes


def row_tiles(width: int, height: int, base: int, cap: int) -> list[tuple[int, int, int]]:
    """(rows, lanes, chunk) tiles over contiguous rows: ``lanes`` a divisor of the width (at least
    4) or ``rows`` whole rows, computed as ``lanes / chunk`` unrolled vectors of a full or half
    register of ``base`` lanes (or one vector no wider than a register), at most ``cap`` of them."""
    tiles = [(1, d) for d in range(4, width + 1) if width % d == 0]
    tiles += [(k, k * width) for k in range(2, height + 1) if height % k == 0]
    out = []
    for rows, lanes in tiles:
        chunk = next((c for c in (base, base // 2) if c >= 4 and lanes % c == 0), lanes if lanes <= base else 0)
        if chunk and lanes // chunk <= cap:
            out.append((rows, lanes, chunk))
    return out


def spatial_channel_rows(channels: int, lanes: int, chunk: int, spec: VectorSpec) -> int:
    """The channel register tile ``spatial_tile`` pairs with a ``lanes``-wide tile of ``chunk``-lane
    vectors: as many channels as leave registers for the vectors, at most 8."""
    nvec = max(1, lanes // max(chunk, 1))
    return divisor_at_most(channels, max(1, min(8, (spec.registers - 2) // nvec)))


def register_tile(vec_extent: int, reg_extent: int, spec: VectorSpec, windowed: bool = True) -> tuple[int, int]:
    """(vectors, rows) of the accumulator tile: ``vectors`` registers along the vectorized axis
    times ``rows`` along the register-tiled one; ``vectors`` divides ``vec_extent / lanes`` and
    ``rows`` divides ``reg_extent``, so no loop needs a tail — except for a windowed conv whose
    width has no divisor but 1 that fits (13: SqueezeNet's last fire modules): there a tile with
    a tail beats one output per tile (48->192 3x3 at 13x13: 0.49 -> 0.21 ms with 2x4).

    Without a window (1x1 convs, matmul) the weights streamed per tile dominate: rows first
    (each weight vector reused ``rows`` times), as many vectors as still fit. With a KxK window
    (``windowed``) the tile maximizes FMAs per load (``vectors`` weight loads and ``rows``
    broadcasts for ``vectors * rows`` FMAs) within the registers (accumulators, weight vectors,
    one broadcast). Measured on ResNet-50 (AVX2, 2 threads): 3x3 convs 20% faster with 4x2
    than 1x14, 1x1 convs 10-30% slower (unblocked; blocked 1x1 convs: ``pointwise_tile``).
    """
    base = spec.lanes()
    if not windowed:
        cap = min(spec.registers - 2, 16)
        rows = divisor_at_most(reg_extent, cap)
        return next(n for n in (4, 2, 1) if vec_extent % (base * n) == 0 and rows * n <= cap), rows
    # Rows each vector count n allows (powers of two: LLVM splits <16 x float> cleanly, not
    # <24 x float>). 3 registers of slack: 14 accumulators + weight + broadcast fill AVX2's 16 but
    # ran at half the speed of 7 (256-channel 3x3 at 14x14, blocked channels: 83 vs 154 GFLOP/s).
    max_rows = {n: max(1, min(spec.registers - n - 3, 16) // n) for n in (1, 2, 4) if vec_extent % (base * n) == 0}
    best = (0.0, 0, 1, 1)
    for n, cap in max_rows.items():
        rows = divisor_at_most(reg_extent, cap)
        best = max(best, (n * rows / (n + rows), n * rows, n, rows))
    if best[3] == 1 and reg_extent > 1:  # no useful divisor: allow a tail, weighted by the lanes it wastes
        for n, cap in max_rows.items():
            for rows in range(2, min(reg_extent, cap) + 1):
                used = reg_extent / (-(-reg_extent // rows) * rows)
                best = max(best, (n * rows / (n + rows) * used, n * rows, n, rows))
    return best[2], best[3]


POINTWISE_MIN_REDUCTION = 256  # input channels from which a 1x1 conv's default tile is blocked (pointwise_tile)
POINTWISE_CHUNK = 64  # input channels a blocked 1x1 conv's tiles walk at a time: 8 KB of an AVX2 4-vector tile's weights


def reduction_length(a: _Anchor) -> int:
    """The number of products summed into each output (input channels times window)."""
    stmt = a.sch.get(a.anchor.block_rv)
    return math.prod(a.extents[iv.var] for iv in stmt.iter_vars if iv.iter_type != tirx.IterVar.DataPar)


def pointwise_tile(vec_extent: int, reg_extent: int, spec: VectorSpec) -> tuple[int, int] | None:
    """(vectors, rows) of a 1x1 conv's tile when its input channels are blocked: four weight
    vectors (None unless ``vec_extent`` holds them) and as many rows as leave a register for the
    broadcast, a tail tile where they do not divide ``reg_extent``. Each broadcast feeds four
    FMAs: on Zen 3 a broadcast from memory takes an FP pipe an FMA could use (llvm-mca
    ``znver3``: ``register_tile``'s 1x14 tile issues one FMA per cycle, a 4x2 tile two). Unblocked,
    the 4x2 tile streams four weight vectors per two FMAs' worth of data from L2 and loses
    (ResNet-50's 1x1 convs 1.1-1.5x slower); with ``POINTWISE_CHUNK`` channels at a time
    (``ReductionBlocking``) the chunk's weights stay in L1 across the tiles of a block of rows.
    Measured on Zen 3 (AVX2, 1 thread, kernels alone, same process): 1024->256 at 14x14 0.81x,
    256->1024 0.78x, 512->128 at 28x28 0.84x, 2048->512 at 7x7 (a tail tile) 0.58x, 512->2048
    0.62x of the 1-vector tile; 1x1 convs over 64 or 128 channels gained nothing, hence
    ``POINTWISE_MIN_REDUCTION``."""
    base = spec.lanes()
    if vec_extent % (4 * base):
        return None
    rows = min(reg_extent, (spec.registers - 4 - 1) // 4)
    return (4, rows) if rows >= 2 else None


def x_stride(a: _Anchor, x: tirx.Var) -> int:
    """The largest step, in elements, that an input's last index moves per step of output axis
    ``x`` (1 for stride-1 convolutions and pooling, 2 for stride 2; 0 when no read's last index
    is linear in ``x``)."""
    step = 0
    for _, r in input_reads(a.sch.get(a.anchor.block_rv)):
        if not r.region:
            continue
        coeffs = tvm.sym.detect_linear_equation(r.region[-1].min, [x])
        if coeffs and isinstance(coeffs[0], tirx.IntImm):
            step = max(step, abs(int(coeffs[0].value)))
    return step


def lane_group(a: _Anchor, x: tirx.Var) -> int | None:
    """``G`` when an input read indexes output axis ``x`` through ``x // G`` or ``x % G`` with
    ``G`` below its extent (a grouped conv in NHWC: input channel ``f // G * Cg + rc``), else None."""
    found = []

    def visit(expr) -> None:
        if (isinstance(expr, (tirx.FloorDiv, tirx.FloorMod)) and isinstance(expr.b, tirx.IntImm)
                and x in set(collect_vars_used_in_prim_expr(expr.a))):
            found.append(int(expr.b.value))
        for child in (getattr(expr, "a", None), getattr(expr, "b", None)):
            if child is not None and not isinstance(child, (tirx.Var, tirx.IntImm)):
                visit(child)

    for _, region in input_reads(a.sch.get(a.anchor.block_rv)):
        for r in region.region:
            visit(r.min)
    groups = [g for g in found if 1 < g < a.extents[x]]
    return min(groups) if groups else None


def _power_of_two_divisor(n: int, cap: int) -> int:
    """The largest power of two that divides ``n`` and is at most ``cap``."""
    p = 1
    while p * 2 <= cap and n % (p * 2) == 0:
        p *= 2
    return p


def _plain_indices(region: tirx.BufferRegion) -> bool:
    return all(isinstance(x.min, (tirx.Var, tirx.IntImm)) for x in region.region)


def weight_rank(a: _Anchor, region: tirx.BufferRegion) -> tuple:
    """Sort key that puts the weight of a two-input reduction first: a read indexed by plain
    vars only, touching the fewest output axes (conv: W[f, c, kh, kw] vs. X[n, c, y, x]); on a
    tie (matmul ``[M, K] x [K, N]``) the one indexing the output's last axis."""
    used = vars_of(region)
    return (not _plain_indices(region), len(set(a.out_vars) & used), a.out_dims[-1] not in used)


def narrowest_fitting(spec: VectorSpec, channels: int) -> VectorSpec | None:
    """``spec``, or the same registers used at half (a quarter) of their width, whichever is the
    widest whose float32 lanes divide ``channels``; None below 4 lanes. ShuffleNet's 24 and 60
    channels on AVX-512: 8 and 4 lanes, instead of the spatial rule's strided gathers (its
    3->24 stride-2 stem conv: 1.87 ms at 16 lanes declined, see docs/profile.md)."""
    while spec.lanes() > 4 and channels % spec.lanes():
        spec = replace(spec, vector_bits=spec.vector_bits // 2)
    return spec if channels % spec.lanes() == 0 else None


@dataclass(frozen=True)
class ChannelTiling:
    """One design space of ``ChannelVectorized``: the decisions that change the loop structure.

    ``vector_bits``: the register width used (a narrower one leaves lanes idle but fits more
    channel counts); ``nvec``: weight vectors per register tile, so the packed weight block is
    ``nvec`` vectors (blocked-channel convs: ``nvec`` channel blocks); ``blocked``: windowed convs
    walk input channels in chunks per block of rows (``ReductionBlocking``);
    ``vec_blocks_last``: the parallel loop steps through channel blocks before spatial tiles.
    Within a space the register rows and the blocking rows and chunk are sampling decisions
    (``schedules.rules.common.choose``). The unroll depth is not: kiln already unrolls the
    register tile, and MetaSchedule's auto-unroll (16 or 64 steps) on top of it made LLVM take
    20 s to 5 minutes to compile one candidate (SqueezeNet's stem conv), against 2 s without.
    """

    vector_bits: int
    nvec: int
    blocked: bool
    vec_blocks_last: bool


MAX_BLOCK_ROWS = 16  # rows of a ReductionBlocking a tiling may sample
WEIGHT_HEAVY_RATIO = 8  # weight bytes per data byte above which a block's spatial tiles run back to back


def _weight_heavy(c: "_ChannelCase") -> bool:
    """Whether the weight is ``WEIGHT_HEAVY_RATIO`` times the data or more (ResNet-50's 1x1 convs at
    7x7: 4-8 MB of weights, 100-800 KB of data). Such a kernel's default runs the spatial tiles of
    one weight block back to back, so each block is read from memory once, instead of once per
    tile row with every other block in between: in a whole-network run, where the weights come
    from memory, ResNet-50's three 7x7 1x1 convs took 0.73x, 0.82x and 0.83x of their time (AVX2,
    2 threads, each kernel timed in sequence, 5 alternating rounds); timed alone, with the weights
    in the caches, the two orders are within a few percent. The SqueezeNet classifier (2 MB of
    weights, 5.9x its data) ran slower this way, hence the ratio."""
    def nbytes(region):
        return math.prod(int(n) for n in region.source.shape) * tvm.DataType(str(region.source.dtype)).bits // 8

    return nbytes(c.w_region) >= WEIGHT_HEAVY_RATIO * nbytes(c.d_region)


@dataclass
class _ChannelCase:
    """What ``ChannelVectorized`` reads from one function before deciding anything."""

    a: _Anchor
    v: tirx.Var  # vectorized output axis (weight only)
    r: tirx.Var  # register-tiled output axis (data only)
    w_index: int
    w_region: tirx.BufferRegion
    d_index: int
    d_region: tirx.BufferRegion
    windowed: bool
    channels_var: tirx.Var | None  # NCHWc: the outer channel-block axis
    row: tirx.Var | None  # the output axis above ``r`` (rows), when blocking may apply
    per_step: int  # input channels per step of the first reduction axis
    pointwise: bool  # a 1x1 conv: no window, the weight indexes no output axis but the channels


def channel_case(func: tirx.PrimFunc) -> _ChannelCase | None:
    """``func`` read as ``ChannelVectorized`` reads it: one float32 reduction over a data and a
    weight read, with an output axis that only the weight indexes and one that only the data
    indexes; None otherwise."""
    a = _find_anchor(func)
    if a is None:
        return None
    stmt = a.sch.get(a.anchor.block_rv)
    reads = input_reads(stmt)
    if len(reads) != 2 or str(stmt.writes[0].source.dtype) != "float32":
        return None
    spatial = set(a.out_vars)
    plain = [_plain_indices(r) for _, r in reads]
    w, d = sorted(range(2), key=lambda k: weight_rank(a, reads[k][1]))
    w_vars, d_vars = vars_of(reads[w][1]), vars_of(reads[d][1])
    only_w = [v for v in a.out_vars if v in w_vars and v not in d_vars]
    only_d = [v for v in a.out_vars if v in d_vars and v not in w_vars]
    if not plain[w] or not only_w or not only_d or not (spatial & w_vars) - d_vars:
        return None
    v, r = only_w[-1], only_d[-1]
    windowed = is_windowed(a, reads[d][1])
    pointwise = not windowed and len(a.out_dims) >= 4 and (spatial & w_vars) == set(only_w)
    row = None
    if windowed or pointwise:
        r_pos = next(i for i, x in enumerate(a.out_dims) if x is not None and x.same_as(r))
        row = a.out_dims[r_pos - 1] if r_pos > 0 else None
        row = row if row is not None and row in only_d else None
    last = reads[d][1].region[-1].min  # blocked channels: [.., ci] indexed by a reduction axis
    per_step = a.extents[last] if isinstance(last, tirx.Var) and last not in spatial else 1
    return _ChannelCase(a, v, r, reads[w][0], reads[w][1], reads[d][0], reads[d][1], windowed,
                        only_w[-2] if len(only_w) >= 2 else None, row, per_step, pointwise)


class ChannelVectorized(CPUScheduleRule):
    """conv2d (NCHW) and matmul-like kernels: vectorize the weight-only output axis.

    Expects one reduction block with two reads, ``data`` and ``weight``, where some output
    axis (conv: F, matmul: N) is indexed by the weight but not by the data, and that
    axis' extent is a multiple of the vector width. Declines (None) otherwise, e.g. for
    depthwise/grouped conv (every output axis also indexes the data) or odd channel counts.

    ``apply`` gives the default schedule; ``design_spaces`` gives one schedule per
    ``ChannelTiling`` this kernel allows, the default one first, each with its numeric decisions
    sampled (``choose``) and decided as the defaults: replaying the first space's trace with its
    own decisions rebuilds the default schedule exactly.
    """

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        c = channel_case(func) if self.is_target_available(target) else None
        default = None if c is None else self._default_tiling(c, target)
        return None if default is None else self._schedule(c, target, default)

    def design_spaces(self, func: tirx.PrimFunc, target: Target) -> list[s_tir.Schedule]:
        """The default schedule's space first, then every other tiling that schedules (each on
        a fresh schedule of ``func``)."""
        c = channel_case(func) if self.is_target_available(target) else None
        default = None if c is None else self._default_tiling(c, target)
        if default is None:
            return []
        tilings = [default, *(t for t in self._tilings(c, target) if t != default)]
        spaces = (self._schedule(channel_case(func), target, tiling) for tiling in tilings)
        return [sch for sch in spaces if sch is not None]

    @staticmethod
    def _blocks_var(c: _ChannelCase, base: int) -> tirx.Var | None:
        """Blocked channels (NCHWc: [fo, .., fi], fi one vector): the tile takes several fo blocks."""
        return c.channels_var if c.channels_var is not None and c.a.extents[c.v] == base else None

    def _fitting_spec(self, c: _ChannelCase, target: Target, vector_bits: int | None = None) -> VectorSpec | None:
        spec = self.spec(target)
        if vector_bits is not None:
            spec = replace(spec, vector_bits=vector_bits)
        return narrowest_fitting(spec, c.a.extents[c.v])

    def _default_tiling(self, c: _ChannelCase, target: Target) -> ChannelTiling | None:
        spec = self._fitting_spec(c, target)
        if spec is None:
            return None
        nvec, reg = self._default_tile(c, spec)
        blocked = self._default_blocking(c, spec, nvec, reg) is not None
        return ChannelTiling(spec.vector_bits, nvec, blocked, not c.windowed and not _weight_heavy(c))

    def _channels(self, c: _ChannelCase, spec: VectorSpec) -> int:
        """Output channels the vector axis covers (NCHWc: its blocks too)."""
        blocks_var = self._blocks_var(c, spec.lanes())
        return c.a.extents[c.v] * (c.a.extents[blocks_var] if blocks_var is not None else 1)

    def _default_tile(self, c: _ChannelCase, spec: VectorSpec) -> tuple[int, int]:
        tile = self._pointwise_tile(c, spec)
        if tile is not None:
            return tile
        return register_tile(self._channels(c, spec), c.a.extents[c.r], spec, c.windowed)

    def _pointwise_tile(self, c: _ChannelCase, spec: VectorSpec) -> tuple[int, int] | None:
        """``pointwise_tile`` for a 1x1 conv whose input channels it blocks (``_pointwise_blocking``)."""
        if not c.pointwise or reduction_length(c.a) < POINTWISE_MIN_REDUCTION:
            return None
        tile = pointwise_tile(self._channels(c, spec), c.a.extents[c.r], spec)
        if tile is None or self._pointwise_blocking(c, spec, *tile) is None:
            return None
        return tile

    def _row_tasks(self, c: _ChannelCase, spec: VectorSpec, nvec: int) -> int:
        """Parallel tasks per block of rows: the output axes above the rows, in tiles."""
        base = spec.lanes()
        blocks_var = self._blocks_var(c, base)
        lanes = base if blocks_var is not None else base * nvec
        tasks = 1
        for var in c.a.out_vars[: c.a.out_vars.index(c.row)] if c.row is not None else []:
            tasks *= c.a.extents[var] // (lanes if var.same_as(c.v) else nvec if var.same_as(blocks_var) else 1)
        return tasks

    def _default_blocking(self, c: _ChannelCase, spec: VectorSpec, nvec: int, reg: int) -> ReductionBlocking | None:
        if c.pointwise:
            return self._pointwise_blocking(c, spec, nvec, reg) if (nvec, reg) == self._pointwise_tile(c, spec) else None
        if not c.windowed:
            return None
        return reduction_blocking(c.a, c.row, c.a.extents[c.r] // reg, self._row_tasks(c, spec, nvec), c.per_step)

    def _pointwise_blocking(self, c: _ChannelCase, spec: VectorSpec, nvec: int, reg: int) -> ReductionBlocking | None:
        """A 1x1 conv's rows of tiles (a tail tile counted) walking ``POINTWISE_CHUNK`` input
        channels at a time."""
        tiles_per_row = -(-c.a.extents[c.r] // reg)
        return reduction_blocking(c.a, c.row, tiles_per_row, self._row_tasks(c, spec, nvec), c.per_step,
                                  chunk_channels=POINTWISE_CHUNK)

    def _tilings(self, c: _ChannelCase, target: Target) -> list[ChannelTiling]:
        """Every structural variant: the register widths that fit, 1/2/4 vectors per tile,
        blocking on and off for windowed convs, both parallel orders for the others and blocking
        for 1x1 convs."""
        out = []
        full = self.spec(target).vector_bits
        for bits in sorted({full, full // 2}, reverse=True):
            spec = self._fitting_spec(c, target, bits)
            if spec is None or spec.vector_bits != bits:
                continue
            base = spec.lanes()
            channels = self._channels(c, spec)
            for nvec in (1, 2, 4):
                if channels % (base * nvec):
                    continue
                can_block = c.row is not None and bool(self._blocking_candidates(c, spec, nvec)[1])
                if c.windowed:
                    out += [ChannelTiling(bits, nvec, blocked, False) for blocked in (False, True)
                            if can_block or not blocked]
                else:
                    out += [ChannelTiling(bits, nvec, False, last) for last in (True, False)]
                    out += [ChannelTiling(bits, nvec, True, False)] if can_block and c.pointwise else []
        return out

    def _blocking_candidates(self, c: _ChannelCase, spec: VectorSpec, nvec: int) -> tuple[list[int], list[int]]:
        """(rows, chunks) a blocked tiling may sample: row counts dividing the height (up to
        ``MAX_BLOCK_ROWS``) that leave two parallel tasks, and input-channel chunks dividing the
        first reduction axis (up to 64 channels)."""
        stmt = c.a.sch.get(c.a.anchor.block_rv)
        reduction = [iv for iv in stmt.iter_vars if iv.iter_type != tirx.IterVar.DataPar]
        if c.row is None or not reduction:
            return [], []
        height, steps = c.a.extents[c.row], c.a.extents[reduction[0].var]
        tasks = self._row_tasks(c, spec, nvec)
        rows = [d for d in range(1, min(height, MAX_BLOCK_ROWS) + 1) if height % d == 0 and tasks * (height // d) >= 2]
        chunks = [k for k in range(1, steps) if steps % k == 0 and k * c.per_step <= 64]
        return rows, chunks

    def _schedule(self, c: _ChannelCase, target: Target, tiling: ChannelTiling) -> s_tir.Schedule | None:
        """Schedule ``c``'s function (its own schedule, which this modifies) with ``tiling``."""
        spec = self._fitting_spec(c, target, tiling.vector_bits)
        if spec is None or spec.vector_bits != tiling.vector_bits:
            return None
        a, sch, base = c.a, c.a.sch, spec.lanes()
        sch.annotate(a.anchor.block_rv, SPACE_ANNOTATION, type(self).__name__)
        blocks_var = self._blocks_var(c, base)
        nvec = tiling.nvec
        default_nvec, default_reg = self._default_tile(c, spec)
        if nvec != default_nvec:  # the rows the default tile would take with this many vectors
            default_reg = self._reg_candidates(c, spec, nvec)[-1]
        reg = choose(sch, self._reg_candidates(c, spec, nvec), default_reg)
        vec_blocks = (blocks_var, nvec) if blocks_var is not None and nvec > 1 else None
        lanes = base if blocks_var is not None else base * nvec
        dim = next(i for i, x in enumerate(c.w_region.region) if x.min.same_as(c.v))
        # Weights already blocked by the vector (NCHWc convs: [.., ci, fi], fi innermost) need no packing.
        prepacked = dim == len(c.w_region.region) - 1 and a.extents[c.v] == lanes
        blocking = None
        if tiling.blocked:
            rows, chunks = self._blocking_candidates(c, spec, nvec)
            if not rows or not chunks:
                return None
            default = self._default_blocking(c, spec, nvec, default_reg)
            default_rows = default.rows if default is not None and default.rows in rows else rows[0]
            default_chunk = default.chunk if default is not None and default.chunk in chunks else chunks[-1]
            blocking = ReductionBlocking(c.row, choose(sch, rows, default_rows), choose(sch, chunks, default_chunk))
        try:
            # 1x1 convs and matmuls: a data tile shared by all channel blocks (ResNet-50's 256->64 1x1
            # at 56x56: 1.18 -> 1.00 ms; whole network 84.95 -> 79.95 ms, same process).
            return _tile_anchor(a, c.v, lanes, c.r, reg, spec, pack=None if prepacked else (c.w_index, dim),
                                blocking=blocking, vec_blocks_last=tiling.vec_blocks_last, vec_blocks=vec_blocks,
                                rows_last=_rows_last(c), channel_blocks=blocks_var)
        except ScheduleError:
            return None

    @staticmethod
    def _reg_candidates(c: _ChannelCase, spec: VectorSpec, nvec: int) -> list[int]:
        """Register rows a tile of ``nvec`` vectors may take (``register_tile``'s register budget):
        any count up to it for windowed convs (a tail is allowed), divisors of the axis otherwise."""
        extent = c.a.extents[c.r]
        if c.windowed:
            cap = max(1, min(spec.registers - nvec - 3, 16) // nvec)
            return list(range(1, min(extent, cap) + 1))
        cap = max(1, min(spec.registers - 2, 16) // nvec)
        return [d for d in range(1, min(extent, cap) + 1) if extent % d == 0]


L1_SET_STRIDE = 4096  # bytes: addresses this far apart share an L1 set (x86's 64-set L1 data caches)
ROWS_LAST_MIN_COLUMNS = 256  # output columns each copied value must feed for the copy to pay


def _rows_last(c: _ChannelCase) -> tuple[int, int] | None:
    """(read index, dim) of a matmul's data when its register-tiled axis (rows) is not its
    innermost dim and its rows lie a multiple of ``L1_SET_STRIDE`` apart. Each FMA step of the
    tile broadcasts one value from each of ``reg`` rows; rows 4 KB apart put all those lines in
    one L1 set, where they evict each other (ddddocr's ``[32, 1024] x [1024, 8224]`` classifier
    ran at 83 GFLOP/s with 16 rows 4 KB apart). Copying the data with that dim innermost makes
    one step's broadcasts consecutive floats. Measured at 2 threads, same process, with and
    without the copy: ``[32, 1024] x [1024, 4096]`` 0.44x, ``[128, 3072] x [3072, 768]`` 0.53x;
    rows 2 or 3 KB apart gained nothing (K = 512 and 768: 0.98x) and ``[128, 768] x [768, 768]``
    lost (1.08x: the copy is its own parallel loop), and so did DeepFilterNet's per-band
    ``einsum`` with 16 output columns (0.05 -> 0.17 ms): the copy needs ``ROWS_LAST_MIN_COLUMNS``
    output columns to pay. NCHW convs keep their data (their register axis, the output columns,
    is the innermost), and so do windowed reads, which a copy cannot reorder this way; NHWC 1x1
    convs with a multiple of 1024 input channels and 256 or more output channels are copied too."""
    if (c.windowed or c.a.extents[c.r] == 1 or c.a.extents[c.v] < ROWS_LAST_MIN_COLUMNS
            or not _plain_indices(c.d_region)):
        return None
    dims = [i for i, x in enumerate(c.d_region.region) if x.min.same_as(c.r)]
    if len(dims) != 1:
        return None
    data = c.d_region.source
    row_bytes = math.prod(int(n) for n in data.shape[dims[0] + 1:]) * tvm.DataType(str(data.dtype)).bits // 8
    return (c.d_index, dims[0]) if row_bytes % L1_SET_STRIDE == 0 else None


def _weight_to_pack(a: _Anchor, x: tirx.Var, lanes: int) -> tuple[int, int] | None:
    """(read index, dim) of a constant weight (a function argument with plain indices) that the
    vector axis ``x`` indexes in a dim other than its innermost: NHWC depthwise ``W[c, kh, kw, 1]``
    with ``c`` vectorized, where each vector would gather ``lanes`` values ``kh*kw`` apart."""
    if a.extents[x] % lanes:
        return None
    for index, region in input_reads(a.sch.get(a.anchor.block_rv)):
        if not _is_param(a.sch, region.source) or not _plain_indices(region):
            continue
        dims = [d for d, r in enumerate(region.region) if r.min.same_as(x)]
        if len(dims) == 1 and any(int(n) > 1 for n in region.source.shape[dims[0] + 1:]):
            return index, dims[0]
    return None


class SpatialVectorized(CPUScheduleRule):
    """Depthwise/grouped conv2d, pooling and other one-reduction kernels with a wide last axis.

    Expects one reduction block writing ``out[..., x]`` with ``x`` at least 4 wide. Vectorizes
    ``x`` by a divisor of its extent, or, when every read indexes ``[..., y, x]`` exactly like
    the output (1x1 stride-1 convs), by several whole rows (see ``spatial_tile``). Register-tiles
    the channel axis (dim 1 of a 4-D output, else the second-to-last) and parallelizes the
    rest. Strided pooling instead runs output rows in parallel with scalar loops
    (``_rows_in_parallel``). Every output keeps its reduction order.
    """

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not self.is_target_available(target):
            return None
        c = self._case(func, target)
        if c is None:
            return None
        if c.pooling_by_rows:
            try:
                return _rows_in_parallel(c.a)
            except ScheduleError:
                return None
        return self._schedule(c, c.tile[:3])

    def design_spaces(self, func: tirx.PrimFunc, target: Target) -> list[s_tir.Schedule]:
        """One space per accumulator tile shape (rows, lanes, chunk) that ``spatial_tile`` would
        consider, the default first; the channel register tile is a sampled decision. Strided
        pooling (scalar rows, no decisions) has none."""
        c = self._case(func, target) if self.is_target_available(target) else None
        if c is None or c.pooling_by_rows:
            return []
        shapes = [c.tile[:3], *(t for t in spatial_tile_shapes(*c.tile_args) if t != c.tile[:3])]
        spaces = (self._schedule(self._case(func, target), shape) for shape in shapes)
        return [sch for sch in spaces if sch is not None]

    def _case(self, func: tirx.PrimFunc, target: Target) -> "_SpatialCase | None":
        a = _find_anchor(func)
        if a is None:
            return None
        spec = self.spec(target)
        x = a.out_dims[-1]
        if x is None:
            return None
        nd = len(a.out_dims)
        reg_var = a.out_dims[1] if nd == 4 else (a.out_dims[-2] if nd >= 2 else None)
        y = a.out_dims[-2] if nd == 4 else None
        rows_ok = y is not None and _rows_contiguous(a, y, x)
        stmt = a.sch.get(a.anchor.block_rv)
        bits = tvm.DataType(str(stmt.writes[0].source.dtype)).bits
        strided = x_stride(a, x) > 1
        channels = a.extents[reg_var] if reg_var is not None else 1
        group = lane_group(a, x)
        if group is not None and group % spec.lanes(bits):
            # A grouped conv in NHWC reads input channel ``x // group * Cg + rc``: a vector across a
            # group boundary loads each lane on its own. The tile is one group, as unrolled vectors
            # that divide it (INT8 ShuffleNet's 68-channel groups: 4-lane vectors; 14x14 grouped
            # 1x1 conv 0.76 -> 0.20 ms, same process).
            tile_args = (group, 1, channels, spec, bits, strided)
            tile = (1, group, _power_of_two_divisor(group, spec.lanes(bits)), divisor_at_most(channels, 8))
        else:
            tile_args = (a.extents[x], a.extents[y] if rows_ok else 1, channels, spec, bits, strided)
            tile = spatial_tile(*tile_args)
        if tile is None:
            return None
        products = len(input_reads(stmt)) >= 2  # a conv, not a pooling
        return _SpatialCase(a, spec, x, reg_var, tile, tile_args, products, strided and not products)

    def _schedule(self, c: "_SpatialCase", shape: tuple[int, int, int]) -> s_tir.Schedule | None:
        """Schedule ``c``'s function (its own schedule, which this modifies) with this tile shape."""
        rows, lanes, chunk = shape
        a, sch = c.a, c.a.sch
        sch.annotate(a.anchor.block_rv, SPACE_ANNOTATION, type(self).__name__)
        channels = a.extents[c.reg_var] if c.reg_var is not None else 1
        default_reg = c.tile[3] if shape == c.tile[:3] else spatial_channel_rows(channels, lanes, chunk, c.spec)
        reg = choose(sch, [d for d in range(1, min(channels, 8) + 1) if channels % d == 0], default_reg)
        strided = c.tile_args[5]
        try:
            # Strided depthwise/grouped convs: each lane is loaded on its own anyway, so zero padding
            # is cheaper as a select per load than as a padded copy (ShuffleNet's 116-channel 3x3
            # stride-2 depthwise: 0.56 -> 0.16 ms; ONNX Runtime 0.15). Not for max-pooling: its
            # -inf padding inlined was slower (ResNet-50's max-pool 0.41 -> 1.18 ms).
            # NHWC depthwise weights packed channel-innermost at compile time: the PP-OCR
            # classifier's INT8 200-channel 5x5 depthwise 0.33 -> 0.25 ms (same process, 6 pairs).
            pack = _weight_to_pack(a, c.x, lanes) if c.products and rows == 1 else None
            return _tile_anchor(a, c.x, lanes, c.reg_var, reg, c.spec, pack=pack, rows=rows, chunk=chunk,
                                inline_padding=strided and c.products)
        except ScheduleError:
            return None


@dataclass
class _SpatialCase:
    """What ``SpatialVectorized`` reads from one function before deciding anything."""

    a: _Anchor
    spec: VectorSpec
    x: tirx.Var  # vectorized output axis (the last)
    reg_var: tirx.Var | None  # register-tiled channel axis
    tile: tuple[int, int, int, int]  # spatial_tile's default (rows, lanes, chunk, channel rows)
    tile_args: tuple  # spatial_tile's arguments
    products: bool  # a conv (two reads), not a pooling
    pooling_by_rows: bool  # strided pooling: scalar rows in parallel (_rows_in_parallel)


class RowReduction(CPUScheduleRule):
    """Softmax / layer-norm style kernels (per-row reductions and elementwise passes over the same
    rows; a last-axis softmax is ``RowSoftmax``'s) by TVM's dlight CPU ``Reduction`` rule — rows in
    parallel, a row's passes together —
    where there are at least two rows. Declines single rows: dlight's schedule for one row of
    1000 (SqueezeNet's softmax) took 3.0 ms against the fallback's 0.009 ms here; on the PP-OCR
    recognizer's 40 rows of 6625 it takes 0.83 ms against 1.65 ms.
    """

    def __init__(self) -> None:
        from tvm.s_tir.dlight.cpu import Reduction

        self.dlight = Reduction()

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not self.is_target_available(target) or not isinstance(func, tirx.PrimFunc):
            return None
        infos = normalize_prim_func(s_tir.Schedule(func))
        if not infos:
            return None
        kinds = infos[0].dom_kind()
        rows = 1
        for it in infos[0].iters[: len(kinds) - len(kinds.lstrip("S"))]:
            rows *= int_extent(it.dom) or 0
        if rows < 2:
            return None
        try:
            return self.dlight.apply(func, target, tunable)
        except ScheduleError:  # e.g. Inception's unfused global pool writing two outputs: decline
            return None
