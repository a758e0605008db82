"""Tensorized uint8 x int8 -> int32 conv2d and matmul kernels (x86 AVX2, AVX-512, VNNI; AArch64
i8mm ``usdot``, and int8 x int8 on dotprod ``sdot``).

``Int8Tensorized`` takes a fused kernel whose one reduction is
``acc[...] += int32(data[...]) * int32(weight[...])`` with ``data`` uint8 (activations,
zero point 0) and ``weight`` int8, plus any elementwise epilogue (bias, rescale, relu,
requantize to uint8). Each call of a dot-product tensor intrinsic (``schedules.int8``)
does 4 reduction steps for ``L`` output channels (8 on AVX2, 16 on AVX-512/VNNI, 4 on AArch64):

* the weight is packed to ``[F/L, C/4, KH, KW, L, 4]`` (matmul: ``[K/4, N/L, L, 4]``) by a
  copy marked for ``SplitLayoutRewritePreproc``: constant weights are packed once, at
  compile time (``FoldConstant``), as ``ChannelVectorized`` does for fp32;
* the activations are packed inside the kernel to ``[N, C/4, H, W, 4]`` (4 consecutive
  input channels contiguous: one broadcast 32-bit load per intrinsic call), by a parallel
  pass before the convolution; with zero padding, the padding pass itself writes the
  packed layout (no extra copy). Matmul activations ``[M, K]`` already have 4 consecutive
  ``k`` contiguous and are read in place;
* the accumulator tile (``vectors x rows`` registers of ``L`` int32) stays in registers
  through the reduction (window loops outside the channel loop, so LLVM does not unroll
  3x3 windows into spills); the epilogue runs on the tile right after, vectorized over the
  ``L`` channels, so the int32 result never reaches memory;
* the output rows (conv: ``n, F/(L*vectors), y``; matmul: column blocks, or row blocks
  when there is only one column block) run in parallel.

Declines (None: the generic rules then take the kernel, exact but slower) unless the
target has an int8 intrinsic for the data's type (uint8; int8 only with ``sdot``) and the
weight is int8, the reduced channel count is a multiple of 4 and the output channel count a
multiple of ``L``: depthwise and grouped convolutions stay generic (``LowerQDQ`` pads RGB
inputs to 4 channels).
Also declines a kernel marked ``kiln.int8_weight_bits`` above what the intrinsic sums
exactly (``MarkInt8WeightBits``, ``compiler.passes.mark_int8_weight_bits``).

With the saturating AVX2/AVX-512 intrinsics results are exact only for 7-bit weights
(``|w| <= 63``, ``schedules.int8.weight_bits_for``); with VNNI, ``usdot`` and ``sdot``
for any int8 weight.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import tvm
from tvm import s_tir, tirx
from tvm.ir import TensorLoad
from tvm.s_tir.dlight.analysis import collect_vars_used_in_prim_expr
from tvm.s_tir.schedule import ScheduleError
from tvm.target import Target

from schedules.int8 import (
    ARM_SDOT_4x4,
    ARM_USDOT_4x4,
    AVX512_DOT_16x4,
    DOT_8x4_AVX2,
    VNNI_DOT_16x4,
    VNNI_DOT_8x4,
    WEIGHT_BITS_ATTR,
    has_arm_dotprod,
    has_arm_i8mm,
    has_avx2,
    has_avx512bw,
    has_vnni,
    reads_int8,
)
from schedules.rules.common import (
    SPACE_ANNOTATION,
    CPUScheduleRule,
    choose,
    divisor_at_most,
    inline_epilogue,
    inline_producers,
    int_extent,
    schedule_injective_nest,
    vars_of,
)
from schedules.rules.reduction import (LAYOUT_REWRITE_PREPROC, _Anchor, _find_anchor, _is_param, input_reads,
                                      weight_rank)

log = logging.getLogger(__name__)

MIN_PARALLEL = 4  # parallel tasks below which row blocks are parallelized too


@dataclass(frozen=True)
class DotIntrin:
    """A registered ``C[lanes] (int32) += A[4] (uint8) . B[lanes, 4] (int8)`` tensor intrinsic."""

    name: str
    lanes: int  # int32 outputs per call
    registers: int  # vector registers of the ISA (bounds the accumulator tile)
    exact_bits: int  # weights of at most this many bits (sign included) give exact sums
    depth: int = 4  # reduction elements per call
    data_dtype: str = "uint8"  # the activations' type (AArch64 sdot: int8)
    # register tile (``int8_tile``): "channels" (most channel blocks on one row) or "fewest_loads"
    tile: str = "channels"
    tile_vectors: int = 8  # at most this many channel blocks in a tile
    tile_accumulators: int = 8  # at most this many accumulator registers in a tile


AVX2_DOT = DotIntrin(DOT_8x4_AVX2, 8, 16, exact_bits=7)
# AVX-512's 32 registers take larger tiles (``int8_tile``); ARM keeps AVX2's (unmeasured there)
_AVX512_TILE = dict(tile="fewest_loads", tile_vectors=4, tile_accumulators=24)
AVX512_DOT = DotIntrin(AVX512_DOT_16x4, 16, 32, exact_bits=7, **_AVX512_TILE)
VNNI_DOT = DotIntrin(VNNI_DOT_16x4, 16, 32, exact_bits=8, **_AVX512_TILE)
VNNI_DOT_YMM = DotIntrin(VNNI_DOT_8x4, 8, 32, exact_bits=8, **_AVX512_TILE)
ARM_USDOT = DotIntrin(ARM_USDOT_4x4, 4, 32, exact_bits=8)
ARM_SDOT = DotIntrin(ARM_SDOT_4x4, 4, 32, exact_bits=8, data_dtype="int8")


def dot_intrins_for(target: Target) -> tuple[DotIntrin, ...]:
    """The int8 dot intrinsics of an LLVM target, widest first (empty: none, e.g. no AVX2).

    A VNNI target gets VNNI only, 16 lanes and then 8 (channel counts that are multiples of 8
    but not 16): the saturating 8-lane AVX2 intrinsic would be wrong for its 8-bit weights.
    """
    if has_arm_i8mm(target):
        return (ARM_USDOT,)
    if has_arm_dotprod(target):
        return (ARM_SDOT,)  # int8 activations (``signed_activations_for``)
    if has_vnni(target):
        return (VNNI_DOT, VNNI_DOT_YMM)
    if has_avx512bw(target):
        return (AVX512_DOT, AVX2_DOT)
    if has_avx2(target):
        return (AVX2_DOT,)
    return ()


@dataclass(frozen=True)
class Int8Plan:
    """Which read and which axis of the kernel's reduction plays which part of the intrinsic."""

    data: int  # index of the uint8 read among the reduction block's reads
    weight: int  # index of the int8 read
    lane_var: tirx.Var  # output axis only the weight indexes (conv F, matmul N): the intrinsic's lanes
    row_var: tirx.Var | None  # output axis only the data indexes (conv x, matmul M): register-tiled
    depth_var: tirx.Var  # reduction axis both index plainly (conv C, matmul K): 4 per call
    intrin: DotIntrin


@dataclass(frozen=True)
class Int8Tiling:
    """The accumulator tile of an int8 kernel: ``vectors`` x ``rows`` (``int8_tile``'s choice),
    the values a tuning search may give each instead, and whether the row blocks run in the
    parallel loop (decided with the default tile, so every point of the space has the same loops)."""

    vectors: int
    rows: int
    vector_choices: tuple[int, ...] = ()
    row_choices: tuple[int, ...] = ()
    rows_parallel: bool = False


def _cast_load(expr: tirx.PrimExpr) -> tirx.Buffer | None:
    """The buffer ``expr`` reads if it is ``int32(buffer[...])``, else None."""
    if isinstance(expr, tirx.Cast) and str(expr.ty.dtype) == "int32" and isinstance(expr.value, TensorLoad):
        return expr.value.source
    return None


def _plain_dim(region: tirx.BufferRegion, var: tirx.Var) -> int | None:
    """The dimension of ``region`` indexed by exactly ``var``, if ``var`` indexes no other; else None."""
    dims = [i for i, r in enumerate(region.region) if r.min.same_as(var)]
    uses = sum(1 for r in region.region if var in set(collect_vars_used_in_prim_expr(r.min)))
    return dims[0] if len(dims) == 1 and uses == 1 else None


def _signed_roles(a: _Anchor, reads: list) -> tuple[tirx.Buffer, tirx.Buffer]:
    """(data, weight) of an int8 x int8 reduction, told apart as ``ChannelVectorized`` does
    (``weight_rank``: plain indices, fewest output axes, then the output's last axis)."""
    weight, data = sorted((r for _, r in reads), key=lambda region: weight_rank(a, region))
    return data.source, weight.source


def plan(a: _Anchor, intrins: tuple[DotIntrin, ...]) -> Int8Plan | None:
    """Match ``acc += int32(u8 data) * int32(i8 weight)`` and assign the axes for the first
    intrinsic whose lane count divides the output channels; None if the kernel is not that."""
    stmt = a.sch.get(a.anchor.block_rv)
    out = stmt.writes[0].source
    body = stmt.body
    if str(out.dtype) != "int32" or not isinstance(body, tirx.BufferStore) or not body.buffer.same_as(out):
        return None
    value = body.value
    if not (isinstance(value, tirx.Add) and isinstance(value.a, TensorLoad) and value.a.source.same_as(out)
            and isinstance(value.b, tirx.Mul)):
        return None
    lhs, rhs = _cast_load(value.b.a), _cast_load(value.b.b)
    if lhs is None or rhs is None:
        return None
    reads = input_reads(stmt)
    if len(reads) != 2:
        return None
    dtypes = sorted([str(lhs.dtype), str(rhs.dtype)])
    if dtypes == ["int8", "uint8"]:  # uint8 activations, int8 weights
        by_dtype = {str(lhs.dtype): lhs, str(rhs.dtype): rhs}
        data_buf, weight_buf = by_dtype["uint8"], by_dtype["int8"]
    elif dtypes == ["int8", "int8"]:  # signed activations (AArch64 sdot): tell them apart by their indices
        data_buf, weight_buf = _signed_roles(a, reads)
    else:
        return None  # wider types: generic rules
    data = next((i for i, r in reads if r.source.same_as(data_buf)), None)
    weight = next((i for i, r in reads if r.source.same_as(weight_buf)), None)
    if data is None or weight is None or data == weight:
        return None
    d_region, w_region = stmt.reads[data], stmt.reads[weight]
    if not all(isinstance(r.min, (tirx.Var, tirx.IntImm)) for r in w_region.region):
        return None  # the weight is packed with transform_layout: plain indices only
    d_vars, w_vars = vars_of(d_region), vars_of(w_region)
    spatial = set(a.out_vars)
    rows = [v for v in a.out_vars if v in d_vars and v not in w_vars]
    for intrin in intrins:
        if intrin.data_dtype != str(data_buf.dtype):
            continue
        lanes = [v for v in a.out_vars if v in w_vars and v not in d_vars and a.extents[v] % intrin.lanes == 0]
        depth = [v for v in a.extents if v not in spatial and a.extents[v] % intrin.depth == 0
                 and _plain_dim(d_region, v) is not None and _plain_dim(w_region, v) is not None]
        if lanes and depth:
            return Int8Plan(data, weight, lanes[-1], rows[-1] if rows else None, depth[0], intrin)
    return None


def int8_tile(lane_blocks: int, rows: int, tasks: int = MIN_PARALLEL, intrin: "DotIntrin | None" = None) -> tuple[int, int]:
    """(vectors, rows) of the accumulator tile: ``vectors`` blocks of ``L`` channels (a divisor
    of ``lane_blocks``, at most ``intrin.tile_vectors``) times ``rows`` data positions (a divisor
    of ``rows``), at most ``intrin.tile_accumulators`` accumulators; ``intrin`` defaults to the
    AVX2 intrinsic.

    Fewer channel blocks are taken where the blocks left, times ``tasks`` (the parallel tasks the
    other output axes give: conv ``n * y``), would be under ``MIN_PARALLEL``: rows would then
    run in parallel and the tile leave the registers (PP-OCR classifier's 16 -> 40 1x1 conv on
    3x96: 0.024 ms with 1 x 8, 0.050 with 5 x 1).

    ``tile="channels"`` (AVX2's 16 registers): the most channel blocks on one row, rows only where
    channels are few; each weight vector is used once. Measured (AVX2, 2 threads, alternating
    rounds): ResNet-50's five 1x1 shapes with their epilogues 8 x 1 2.40 ms, 4 x 1 2.62, 4 x 2
    2.66, 2 x 4 2.94, rows first (1 x 7) 3.19; its four 3x3 shapes 8 x 1 3.65-3.77 ms, 4 x 1
    3.58-3.64, 4 x 2 3.80-4.02, 1 x 7 4.20.

    ``tile="fewest_loads"`` (AVX-512's 32 registers): the tile with the fewest loads per dot
    product, ``(vectors + rows) / (vectors * rows)`` (more channel blocks on a tie): 7x7 and
    14x14 maps get 2 x 7 or 3 x 7, not 4 x 1 or 4 x 2. Whole INT8 models on an AVX-512 VNNI CPU
    (AMD EPYC, 2 threads, alternating rounds, identical outputs): ResNet-50 12.10 ms with the
    channels tile, 7.43 with 4 blocks x up to 6 rows, 6.26 with fewest loads (4 blocks, 24
    accumulators), 6.93 with fewest loads up to 8 blocks; SqueezeNet 1.02, 0.95, 0.91, 0.95 ms.
    """
    intrin = intrin or AVX2_DOT
    blocks = [n for n in range(1, intrin.tile_vectors + 1)
              if lane_blocks % n == 0 and (n == 1 or lane_blocks // n * tasks >= MIN_PARALLEL)]
    if intrin.tile == "channels":
        vectors = max(blocks)
        return vectors, divisor_at_most(rows, max(1, intrin.tile_accumulators // vectors))
    tiles = [(v, r) for v in blocks for r in range(1, intrin.tile_accumulators // v + 1) if rows % r == 0]
    return min(tiles, key=lambda t: ((t[0] + t[1]) / (t[0] * t[1]), -t[0]))


def _pack_last(dim: int, ndim: int, factor: int):
    """Index map ``[.., d, ..] -> [.., d / factor, .., d % factor]`` for dimension ``dim``."""

    def index_map(*ax):
        return [*(ax[i] // factor if i == dim else ax[i] for i in range(ndim)), ax[dim] % factor]

    return index_map


def schedule_int8(a: _Anchor, p: Int8Plan, tiling: Int8Tiling) -> s_tir.Schedule:
    """Pack, tile, tensorize and parallelize the kernel of ``a`` as ``p`` and ``tiling`` say.

    The tile's vectors and rows are ``sample_categorical`` decisions over ``tiling``'s choices
    (decided as ``tiling`` says; ``common.choose``), so a tuning search can move them.
    Raises ``ScheduleError`` when a schedule primitive refuses (the rule then declines).
    """
    sch = a.sch
    vectors = choose(sch, tiling.vector_choices, tiling.vectors)
    rows = choose(sch, tiling.row_choices, tiling.rows) if p.row_var is not None else tiling.rows
    sampled = not (isinstance(vectors, int) and isinstance(rows, int))
    L, D = p.intrin.lanes, p.intrin.depth
    kept_producers = inline_producers(sch, a.producers)
    consumers = inline_epilogue(sch, a.consumers)
    block = a.anchor.block_rv
    stmt = sch.get(block)
    w_region, d_region = stmt.reads[p.weight], stmt.reads[p.data]

    # Weight [.., F, .., C, ..] -> [.., F/L, .., C/4, .., L, 4]; constant weights: at compile time.
    w_lane, w_depth = _plain_dim(w_region, p.lane_var), _plain_dim(w_region, p.depth_var)
    w_ndim = len(w_region.region)

    def w_map(*ax):
        outer = [ax[i] // L if i == w_lane else ax[i] // D if i == w_depth else ax[i] for i in range(w_ndim)]
        return [*outer, ax[w_lane] % L, ax[w_depth] % D]

    w_packed = sch.cache_read(block, p.weight, "global")
    sch.transform_layout(w_packed, ("write", 0), w_map)
    if _is_param(sch, w_region.source):
        sch.annotate(w_packed, LAYOUT_REWRITE_PREPROC, tirx.IntImm("int32", 1))

    # Data [.., C, ..] -> [.., C/4, .., 4] unless C is already the last axis (matmul rows).
    d_depth = _plain_dim(d_region, p.depth_var)
    d_ndim = len(d_region.region)
    d_packer = None
    if d_depth != d_ndim - 1:
        d_map = _pack_last(d_depth, d_ndim, D)
        padding = next((b for b in kept_producers
                        if any(w.source.same_as(d_region.source) for w in sch.get(b.block_rv).writes)), None)
        if padding is None:
            d_packer = sch.cache_read(block, p.data, "global")
            sch.transform_layout(d_packer, ("write", 0), d_map)
        else:  # the padding pass writes the packed layout itself
            sch.transform_layout(block, ("read", p.data), d_map)
            kept_producers = [b for b in kept_producers if b is not padding]
            d_packer = padding.block_rv
        _iterate_in_write_order(sch, d_packer, d_depth, D)

    # parallel(outer) · row blocks · window · channel blocks · unroll(vectors, rows) · intrinsic(L, 4)
    loop_of = dict(zip([iv.var for iv in stmt.iter_vars], sch.get_loops(block)))
    outer, row_outer, tile = [], None, []
    lane_inner = None
    for v in a.out_vars:
        if v.same_as(p.lane_var):
            o, tile_vec, lane_inner = sch.split(loop_of[v], [None, vectors, L])
            outer.append(o)
            tile.insert(0, tile_vec)
        elif p.row_var is not None and v.same_as(p.row_var):
            row_outer, tile_rows = sch.split(loop_of[v], [None, rows])
            tile.append(tile_rows)
        else:
            outer.append(loop_of[v])
    depth_outer, depth_inner = sch.split(loop_of[p.depth_var], [None, D])
    # Channel blocks innermost: LLVM keeps the window loops rolled. With the window inside,
    # it unrolls 3x3 windows into 9 interleaved tiles and spills accumulators.
    reductions = [loop_of[v] for v in a.extents if v not in set(a.out_vars) and not v.same_as(p.depth_var)]
    reductions.append(depth_outer)
    # Row blocks stay a serial loop inside the parallel one: the accumulator tile is then
    # allocated per row block and kept in registers (fused into the parallel loop it cost
    # 1 ms more of 3 ms on the 64x56x56 3x3 conv, one thread). Only when the other axes
    # give fewer than ``MIN_PARALLEL`` tasks (a matmul with one column block) are rows parallel.
    if row_outer is not None and tiling.rows_parallel:
        outer.append(row_outer)
        row_outer = None
    sch.reorder(*outer, *([row_outer] if row_outer is not None else []), *reductions, *tile, lane_inner, depth_inner)
    fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    sch.parallel(fused)
    at = row_outer if row_outer is not None else fused

    # The accumulator tile (in the intrinsic's [.., F/L, .., L] layout) is consumed per tile.
    if consumers:
        for c in consumers[:-1]:
            schedule_injective_nest(sch, c.block_rv, L)
        epilogue = consumers[-1].block_rv
    else:
        epilogue = sch.cache_write(block, 0, "global")
    # Sampled tiles keep their unit loops, so that every decision gives the same loops to replay.
    sch.reverse_compute_at(epilogue, at, preserve_unit_loops=sampled)
    out_lane = next(i for i, v in enumerate(a.out_dims) if v is not None and v.same_as(p.lane_var))
    sch.transform_layout(block, ("write", 0), _pack_last(out_lane, len(a.out_dims), L))
    init = sch.decompose_reduction(block, reductions[0])
    # On the init block: tensorize replaces the update block, and its annotations with it.
    sch.annotate(init, SPACE_ANNOTATION, "Int8Tensorized")
    sch.tensorize(lane_inner, p.intrin.name)
    for loop in tile:
        sch.unroll(loop)
    sch.vectorize(sch.get_loops(init)[-1])
    _vectorize_channels(sch, epilogue, at, out_lane, L)
    for b in kept_producers:
        schedule_injective_nest(sch, b.block_rv, L)
    if d_packer is not None:
        _schedule_packer(sch, d_packer)
    schedule_injective_nest(sch, w_packed, L)
    return sch


def _iterate_in_write_order(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, dim: int, factor: int) -> None:
    """Let a copy that writes ``[.., C/f, .., f]`` iterate in that order (contiguous stores).

    Leaves the block as it is when no block iterator indexes dimension ``dim`` of its write.
    """
    stmt = sch.get(block)
    index = stmt.writes[0].region[dim].min
    if isinstance(index, tirx.FloorDiv):
        index = index.a
    iters = [iv.var for iv in stmt.iter_vars]
    pos = next((i for i, v in enumerate(iters) if index.same_as(v)), None)
    if pos is None:
        return
    sch.transform_block_layout(block, tirx.IndexMap.from_func(_pack_last(pos, len(iters), factor), ndim=len(iters)))


def _schedule_packer(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> None:
    """Parallel over all but the two innermost loops (``W``, ``4``); the 4 channels unrolled.

    Fusing the whole nest instead costs a div/mod chain per byte: 1 ms of a 2.8 ms
    64x56x56 3x3 conv (one thread, measured here).
    """
    loops = sch.get_loops(block)
    if len(loops) < 3:
        schedule_injective_nest(sch, block, 4)
        return
    outer = sch.fuse(*loops[:-2]) if len(loops) > 3 else loops[0]
    sch.parallel(outer)
    sch.unroll(loops[-1])


def _vectorize_channels(sch: s_tir.Schedule, epilogue: s_tir.schedule.SBlockRV, at: s_tir.schedule.LoopRV,
                        out_lane: int, lanes: int) -> None:
    """Vectorize ``lanes`` output channels of the per-tile epilogue, innermost: contiguous loads
    of the accumulator and of per-channel bias and scale, strided stores.

    Leaves the epilogue serial when its write does not index channels by one loop.
    """
    loops = sch.get_loops(epilogue)
    at_node = sch.get(at)
    start = next(i for i, lp in enumerate(loops) if sch.get(lp).same_as(at_node)) + 1
    inner = loops[start:]
    stmt = sch.get(epilogue)
    region = stmt.writes[0].region
    if not inner or out_lane >= len(region):
        return
    realize = sch.get(inner[-1]).body
    index = region[out_lane].min
    binding = next((val for iv, val in zip(stmt.iter_vars, realize.iter_values) if iv.var.same_as(index)), None)
    if binding is None:
        return
    used = set(collect_vars_used_in_prim_expr(binding))
    lane_loop = next((lp for lp in inner if sch.get(lp).loop_var in used), None)
    extent = int_extent(sch.get(lane_loop).extent) if lane_loop is not None else None
    if extent is None or extent % lanes:
        return
    _, lane_inner = sch.split(lane_loop, [None, lanes])
    lane_node = sch.get(lane_inner)
    others = [lp for lp in sch.get_loops(epilogue)[start:] if not sch.get(lp).same_as(lane_node)]
    sch.reorder(*others, lane_inner)
    sch.vectorize(lane_inner)


class Int8Tensorized(CPUScheduleRule):
    """uint8 x int8 -> int32 conv2d / matmul (with its fused epilogue) on a dot-product intrinsic.

    Expects one reduction ``acc += int32(u8) * int32(i8)`` (see the module docstring for
    the axes it needs); declines (None) otherwise, and on targets without an int8
    intrinsic. ``intrins`` replaces the target's intrinsics (tests, new ISAs).
    """

    def __init__(self, intrins: tuple[DotIntrin, ...] | None = None) -> None:
        self.intrins = intrins

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not self.is_target_available(target) or not isinstance(func, tirx.PrimFunc):
            return None
        intrins = self._intrins(func, target)
        if not intrins or not reads_int8(func):
            return None  # float kernels: no analysis
        a = _find_anchor(func)
        if a is None:
            return None
        p = plan(a, intrins)
        if p is None:
            return None
        return self._schedule(a, p, self._default_tiling(a, p))

    def design_spaces(self, func: tirx.PrimFunc, target: Target) -> list[s_tir.Schedule]:
        """The default tile's space (vectors and rows sampled), then, for kernels with rows, the
        same with the row blocks' place in the parallel loop flipped; each on a fresh schedule."""
        first = self.apply(func, target, True)
        if first is None:
            return []
        spaces = [first]
        a = _find_anchor(func)
        p = plan(a, self._intrins(func, target))
        default = self._default_tiling(a, p)
        if p.row_var is not None:
            flipped = self._schedule(a, p, replace(default, rows_parallel=not default.rows_parallel))
            spaces += [flipped] if flipped is not None else []
        return spaces

    def _intrins(self, func: tirx.PrimFunc, target: Target) -> tuple[DotIntrin, ...]:
        intrins = self.intrins if self.intrins is not None else dot_intrins_for(target)
        marked = func.attrs.get(WEIGHT_BITS_ATTR) if func.attrs is not None else None
        if marked is not None:
            intrins = tuple(i for i in intrins if i.exact_bits >= int(marked))
        return intrins

    @staticmethod
    def _default_tiling(a: _Anchor, p: Int8Plan) -> Int8Tiling:
        """``int8_tile``'s tile, with the search's choices: every channel-block count ``int8_tile``
        may take and every row count dividing the rows within the accumulator budget."""
        rows = a.extents[p.row_var] if p.row_var is not None else 1
        tasks = 1
        for v in a.out_vars:
            if not v.same_as(p.lane_var) and (p.row_var is None or not v.same_as(p.row_var)):
                tasks *= a.extents[v]
        lane_blocks = a.extents[p.lane_var] // p.intrin.lanes
        vectors, tile_rows = int8_tile(lane_blocks, rows, tasks, p.intrin)
        vector_choices = tuple(n for n in range(1, p.intrin.tile_vectors + 1)
                               if lane_blocks % n == 0 and (n == 1 or lane_blocks // n * tasks >= MIN_PARALLEL))
        row_choices = tuple(r for r in range(1, p.intrin.tile_accumulators + 1) if rows % r == 0)
        # Row blocks join the parallel loop only when the other axes give too few tasks.
        rows_parallel = p.row_var is not None and tasks * (lane_blocks // vectors) < MIN_PARALLEL
        return Int8Tiling(vectors, tile_rows, vector_choices, row_choices, rows_parallel)

    @staticmethod
    def _schedule(a: _Anchor, p: Int8Plan, tiling: Int8Tiling) -> s_tir.Schedule | None:
        try:
            return schedule_int8(a, p, tiling)
        # TVM's tensorize reports a body it cannot match as an InternalError, not a ScheduleError
        # (seen with a tile that did not divide its loop): decline, the generic rules are exact.
        except (ScheduleError, tvm.error.InternalError) as err:
            log.debug("Int8Tensorized declined a kernel: %s", str(err).splitlines()[0] if str(err) else err)
            return None
