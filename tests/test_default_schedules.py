"""kiln's default CPU schedules: every kernel family gets parallel + vectorized loops, numbers unchanged."""

from __future__ import annotations

import math
import re

import numpy as np
import onnx
import pytest
import tvm
from onnx import helper, numpy_helper
from tvm import tirx

from compiler.build import compile_model
from compiler.frontend import import_onnx
from compiler.pipeline import build_pipeline, pipeline_steps
from compiler.reference import OnnxRuntimeReference, max_abs_diff
from compiler.runtime import load
from schedules.defaults import RULE_ATTR, ScheduleStats, default_schedule_pass, schedule_summary
from schedules.rules.reduction import register_tile, spatial_tile
from schedules.vector_spec import AVX2, AVX512, NEON, vector_spec
from targets.registry import resolve_target
from tests.onnx_graphs import const, model

TOLERANCE = 1e-4


def conv_relu() -> onnx.ModelProto:  # 3x3 conv + bias + relu, then a 1x1 conv
    return model([helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", ["c"], ["r"]),
                  helper.make_node("Conv", ["r", "w1"], ["y"])],
                 [("x", [1, 16, 14, 14])], [("y", None)],
                 [const("w", 32, 16, 3, 3), const("b", 32), const("w1", 16, 32, 1, 1)])


def conv_strided_residual() -> onnx.ModelProto:  # stride 2, odd width, residual add
    return model([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
                  helper.make_node("Add", ["c", "s"], ["y"])],
                 [("x", [1, 8, 13, 13]), ("s", [1, 24, 7, 7])], [("y", None)], [const("w", 24, 8, 3, 3)])


def depthwise_grouped() -> onnx.ModelProto:
    return model([helper.make_node("Conv", ["x", "w"], ["d"], pads=[1, 1, 1, 1], group=16),
                  helper.make_node("Conv", ["d", "g"], ["y"], group=2)],
                 [("x", [1, 16, 12, 12])], [("y", None)], [const("w", 16, 1, 3, 3), const("g", 32, 8, 1, 1)])


def dense() -> onnx.ModelProto:
    return model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)],
                 [("x", [2, 64])], [("y", None)], [const("w", 32, 64), const("b", 32)])


def batch_matmul() -> onnx.ModelProto:
    return model([helper.make_node("MatMul", ["a", "b"], ["y"])], [("a", [2, 8, 16]), ("b", [2, 16, 24])],
                 [("y", None)])


def pooling() -> onnx.ModelProto:
    return model([helper.make_node("MaxPool", ["x"], ["m"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
                  helper.make_node("AveragePool", ["m"], ["a"], kernel_shape=[2, 2], strides=[1, 1]),
                  helper.make_node("GlobalAveragePool", ["a"], ["y"])],
                 [("x", [1, 8, 32, 32])], [("y", None)])


def softmax() -> onnx.ModelProto:  # 100 = 12 vectors of 8 and a tail of 4
    return model([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], [("x", [16, 100])], [("y", None)])


def scaled_softmax() -> onnx.ModelProto:  # attention-like: a scale fused in, 3-D, rows a multiple of 8
    return model([helper.make_node("Mul", ["x", "s"], ["m"]), helper.make_node("Softmax", ["m"], ["y"], axis=-1)],
                 [("x", [2, 6, 40])], [("y", None)], [onnx.numpy_helper.from_array(np.array(0.125, np.float32), "s")])


def softmax_inner_axis() -> onnx.ModelProto:  # not the last axis: TVM's own softmax
    return model([helper.make_node("Softmax", ["x"], ["y"], axis=1)], [("x", [4, 30, 5])], [("y", None)])


def variadic_sum() -> onnx.ModelProto:  # ONNX Sum/Max of 3 and 2 inputs (ShuffleNet's residual Sum)
    return model([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                  helper.make_node("Sum", ["c", "x", "s"], ["t"]),
                  helper.make_node("Max", ["t", "b"], ["u"]),
                  helper.make_node("Relu", ["u"], ["y"])],
                 [("x", [1, 8, 6, 6]), ("s", [1, 8, 6, 6]), ("b", [1, 8, 1, 6])], [("y", None)],
                 [const("w", 8, 8, 3, 3)])


def shuffle_unit(size: int = 14, channels: int = 40) -> onnx.ModelProto:
    """A ShuffleNet unit: grouped 1x1 conv, channel shuffle, depthwise 3x3, grouped 1x1, residual Sum."""
    g, c = 4, channels
    return model([helper.make_node("Conv", ["x", "w1"], ["a"], group=g),
                  helper.make_node("Relu", ["a"], ["ra"]),
                  helper.make_node("Reshape", ["ra", "s5"], ["r5"]),
                  helper.make_node("Transpose", ["r5"], ["t5"], perm=[0, 2, 1, 3, 4]),
                  helper.make_node("Reshape", ["t5", "s4"], ["sh"]),
                  helper.make_node("Conv", ["sh", "dw"], ["d"], pads=[1, 1, 1, 1], group=c),
                  helper.make_node("Conv", ["d", "w2"], ["b"], group=g),
                  helper.make_node("Sum", ["b", "x"], ["s"]),
                  helper.make_node("Relu", ["s"], ["y"])],
                 [("x", [1, c, size, size])], [("y", None)],
                 [const("w1", c, c // g, 1, 1), const("dw", c, 1, 3, 3), const("w2", c, c // g, 1, 1),
                  numpy_helper.from_array(np.array([1, g, c // g, size, size], np.int64), "s5"),
                  numpy_helper.from_array(np.array([1, c, size, size], np.int64), "s4")])


def stem(size: int = 37, filters: int = 24, kernel: int = 3, pad: int = 1) -> onnx.ModelProto:
    """A network's first conv: 3 input channels, stride 2, bias and ReLU."""
    return model([helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[kernel, kernel], strides=[2, 2],
                                   pads=[pad] * 4),
                  helper.make_node("Relu", ["c"], ["y"])],
                 [("x", [1, 3, size, size])], [("y", None)], [const("w", filters, 3, kernel, kernel), const("b", filters)])


# graph -> rule expected on its main kernel(s), by a substring of the kernel name
CASES = {
    "conv_relu": (conv_relu, {"conv2d": "ChannelVectorized"}),
    "conv_strided_residual": (conv_strided_residual, {"conv2d": "ChannelVectorized"}),
    "depthwise_grouped": (depthwise_grouped, {"conv2d": "SpatialVectorized"}),
    "dense": (dense, {"matmul": "ChannelVectorized"}),
    "batch_matmul": (batch_matmul, {"matmul": "ChannelVectorized"}),
    "pooling": (pooling, {"max_pool2d": "SpatialVectorized", "avg_pool2d": "SpatialVectorized"}),
    "softmax": (softmax, {"softmax": "RowSoftmax"}),  # last axis: compiler.relax_utils.row_softmax
    "scaled_softmax": (scaled_softmax, {"softmax": "RowSoftmax"}),
    "softmax_inner_axis": (softmax_inner_axis, {"softmax": "RowReduction"}),  # TVM dlight's CPU Reduction
    "variadic_sum": (variadic_sum, {"conv2d": "ChannelVectorized"}),
    "shuffle_unit_14": (shuffle_unit, {"conv2d": "SpatialVectorized"}),
    "shuffle_unit_7": (lambda: shuffle_unit(7, 24), {"conv2d": "SpatialVectorized"}),
    "stem_conv": (stem, {"conv2d": "StemConv"}),  # 19 output columns: a shifted last tile
}


def scheduled_module(onnx_model: onnx.ModelProto, target: str = "x86-avx2",
                     layout: str | None = None) -> tuple[tvm.IRModule, ScheduleStats]:
    """Run kiln's pipeline up to and including the default-schedule step (``layout``: the
    activation layout of float convs, default the preset's)."""
    from dataclasses import replace

    preset = resolve_target(target)
    if layout is not None:
        preset = replace(preset, conv_layout=layout)
    mod = import_onnx(onnx_model, {}).mod
    stats = ScheduleStats()
    with tvm.transform.PassContext(opt_level=3), preset.tvm_target() as tgt:
        for step in pipeline_steps(preset):
            if step.name == "DefaultCPUSchedule":
                return default_schedule_pass(tgt, stats=stats)(mod), stats
            mod = step.make()(mod)
    raise AssertionError("the CPU pipeline has no default-schedule step")


def kernels(mod: tvm.IRModule, part: str) -> list[tirx.PrimFunc]:
    return [f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc) and part in gv.name_hint]


def assert_matches_onnxruntime(onnx_model: onnx.ModelProto, tmp_path, seed: int, layout: str | None = None) -> None:
    """Build for the host, run on seeded random inputs, compare with ONNX Runtime (2 threads)."""
    lib = tmp_path / "m.so"
    compile_model(onnx_model, lib, target="host", conv_layout=layout)
    m = load(lib, threads=2)
    inputs = m.random_inputs(seed=seed)
    _, rel = max_abs_diff(m.run(inputs), OnnxRuntimeReference(onnx_model, 2).run(inputs))
    assert rel <= TOLERANCE


@pytest.mark.parametrize("name", sorted(CASES))
def test_kernels_get_parallel_vectorized_schedules(name):
    make, expected = CASES[name]
    mod, stats = scheduled_module(make())
    assert not stats.declined, f"no rule took {stats.declined}"
    for part, rule in expected.items():
        funcs = kernels(mod, part)
        assert funcs, f"no kernel named *{part}* in {name}"
        for f in funcs:
            assert str(f.attrs[RULE_ATTR]) == rule
            text = f.script()
            assert "T.parallel" in text
            strided_pool = "pool_max" in text and "* T.int64(2) +" in text  # rows of scalars, by design
            if rule != "ParallelFallback" and not strided_pool:
                assert "T.vectorized" in text


@pytest.mark.parametrize("name", sorted(CASES))
def test_scheduled_kernels_match_onnxruntime(name, tmp_path):
    onnx_model = CASES[name][0]()
    assert_matches_onnxruntime(onnx_model, tmp_path, seed=5)


def test_conv_vector_width_follows_target():
    """AVX-512 packs 16 output channels per vector, AVX2 8, NEON 4 (times the tile's vector count)."""
    for target, lanes in [("x86-avx2", 8), ("x86-avx512", 16), ("arm64", 4)]:
        mod, _ = scheduled_module(conv_relu(), target)
        spec = vector_spec(resolve_target(target).tvm_target())
        f = kernels(mod, "conv2d_add_relu")[0]
        nvec, _ = register_tile(32, 14, spec)  # conv_relu's first conv: 32 channels, 14 wide
        width = nvec * lanes
        text = f.script()
        assert f"T.vectorized(T.int64({width}))" in text or f"T.vectorized({width})" in text, target


def test_register_tile_fits_the_registers():
    """The accumulator tile, its weight vectors and one broadcast fit the register file; no tails
    except where the width's only small divisor is 1 (13: a tile of 5 with a tail of 3)."""
    for spec in (AVX2, AVX512, NEON):
        for channels, width in [(64, 56), (128, 28), (256, 14), (512, 7), (24, 112), (32, 13)]:
            if channels % spec.lanes():
                continue
            nvec, rows = register_tile(channels, width, spec)
            assert nvec * rows + nvec + 1 <= spec.registers, (spec.isa, channels, width)
            assert channels % (nvec * spec.lanes()) == 0 and (width % rows == 0 or width == 13)
            assert rows > 1
    assert register_tile(32, 13, AVX2) == (2, 5)
    assert register_tile(64, 56, AVX2) != (1, 14)  # 3x3: 14 broadcasts per vector load is load-bound
    assert register_tile(256, 14, AVX2, windowed=False) == (1, 14)  # 1x1: reuse each weight vector 14 times


def test_vector_spec_from_target():
    cases = {"x86-avx2": 8, "x86-avx512": 16, "x86-vnni": 16, "arm64": 4, "graviton3": 4}
    for name, lanes in cases.items():
        assert vector_spec(resolve_target(name).tvm_target()).lanes() == lanes, name


def test_tuned_kernels_are_left_alone():
    """A function already marked scheduled (as MetaScheduleApplyDatabase leaves it) is not touched."""
    mod, _ = scheduled_module(dense())
    gv = next(gv for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc))
    naive = mod[gv].without_attr(RULE_ATTR)
    mod2 = tvm.IRModule({gv: naive})
    stats = ScheduleStats()
    with resolve_target("x86-avx2").tvm_target() as tgt:
        out = default_schedule_pass(tgt, stats=stats)(mod2)
    assert stats.tuned == [gv.name_hint] and stats.defaulted == 0
    assert out[gv].same_as(naive)
    assert schedule_summary(out)["tuned"] == 1


def test_variadic_sum_becomes_adds_fused_into_the_conv():
    """Sum/Max of N tensors are pairwise add/maximum (no stack copy), fused into the conv's epilogue."""
    mod, _ = scheduled_module(variadic_sum())
    names = [gv.name_hint for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)]
    assert not [n for n in names if "stack" in n], names
    assert [n for n in names if "conv2d" in n and "add" in n and "maximum" in n and "relu" in n], names


def lowered(onnx_model: onnx.ModelProto, target: str = "x86-avx2") -> tvm.IRModule:
    preset = resolve_target(target)
    with tvm.transform.PassContext(opt_level=3):
        return build_pipeline(preset)(import_onnx(onnx_model, {}).mod)


def test_constant_weights_are_packed_at_compile_time():
    """The NCHWc weight copy of a conv/dense kernel runs once in FoldConstant, not on every call.
    (A weight whose vector axis is already innermost and one tile wide, like a 32-output dense,
    is read in place: no copy.)"""
    wide_dense = lambda: model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)],  # noqa: E731
                               [("x", [2, 64])], [("y", None)], [const("w", 64, 64), const("b", 64)])
    for make in (conv_relu, wide_dense):
        mod = lowered(make())
        funcs = {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}
        assert not [n for n in funcs if "weight_prepack" in n], sorted(funcs)
        conv = [f for n, f in funcs.items() if n.endswith("_prepacked")]
        assert conv, sorted(funcs)
        for f in conv:
            # conv: [F/L, C, KH, KW, L]; dense: [N/L, K, L], with L a multiple of the 8 AVX2 lanes
            assert any(len(p.shape) in (3, 5) and int(p.shape[-1]) % 8 == 0 for p in f.params), f.params
            assert "meta_schedule.layout_rewrite_preproc" not in f.script()


def test_runtime_weights_are_packed_by_their_own_kernel():
    """A matmul whose 'weight' is an input keeps a packing kernel (run per call), still correct."""
    mod = lowered(batch_matmul())
    names = [gv.name_hint for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)]
    assert [n for n in names if "weight_prepack" in n], names


def test_pointwise_grouped_conv_vectorizes_whole_rows():
    """A 1x1 grouped conv on 28x28 takes two rows per tile: 7 unrolled 8-lane vectors, never a
    14- or 28-lane vector (LLVM scalarizes those when they are carried through the reduction loop)."""
    mod, _ = scheduled_module(shuffle_unit(28, 40))
    pointwise = [f for f in kernels(mod, "conv2d") if "pad" not in f.script()]
    assert pointwise
    for f in pointwise:
        text = f.script()
        widths = {int(w) for w in re.findall(r"T\.vectorized\(T\.int64\((\d+)\)\)", text)}
        assert widths == {8}, widths
        assert "T.unroll(T.int64(7))" in text


def test_spatial_tile_uses_whole_registers():
    assert spatial_tile(28, 28, 136, AVX2) == (2, 56, 8, 2)  # two 28-wide rows: 7 full AVX2 registers
    assert spatial_tile(56, 1, 24, AVX2)[2] == 8
    for spec in (AVX2, AVX512, NEON):
        for width, height, channels in [(28, 28, 136), (14, 14, 272), (7, 7, 544), (14, 1, 272), (112, 1, 24)]:
            tile = spatial_tile(width, height, channels, spec)
            if tile is None:
                continue
            rows, lanes, chunk, reg = tile
            assert lanes % chunk == 0 and (chunk <= spec.lanes() or lanes == chunk)
            assert (lanes // chunk) * reg <= spec.registers - 2
            assert (width % lanes == 0) if rows == 1 else (lanes == rows * width and height % rows == 0)


def test_channel_shuffle_vectorizes_only_contiguous_lanes():
    """A channel shuffle moves whole planes: 8 lanes on 28x28 planes, 4 on 14x14, none on 7x7
    (a vector there would gather one scalar per lane)."""
    for size, width in [(28, 8), (14, 4), (7, None)]:
        mod, _ = scheduled_module(shuffle_unit(size, 24))
        (shuffle,) = kernels(mod, "transpose")
        widths = {int(w) for w in re.findall(r"T\.vectorized\(T\.int64\((\d+)\)\)", shuffle.script())}
        assert widths == ({width} if width else set()), (size, widths)
        assert "T.parallel" in shuffle.script()


def strided_pair(size: int = 28, channels: int = 12) -> onnx.ModelProto:
    """A stride-1 depthwise conv (zero padding, 30-wide padded rows), then a stride-2 depthwise
    conv and a stride-2 max-pool (-inf padding) side by side."""
    half = size // 2
    return model([helper.make_node("Conv", ["x", "w1"], ["a"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                   group=channels),
                  helper.make_node("Conv", ["a", "w2"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                                   pads=[1, 1, 1, 1], group=channels),
                  helper.make_node("MaxPool", ["a"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
                 [("x", [1, channels, size, size])],
                 [("y", [1, channels, half, half]), ("p", [1, channels, half, half])],
                 [const("w1", channels, 1, 3, 3), const("w2", channels, 1, 3, 3)])


def _loop_kinds(func: tirx.PrimFunc, block: str) -> list[tuple[str, int]] | None:
    """(kind, extent) of the loops around ``block``; None when the kernel has no such block."""
    sch = tvm.s_tir.Schedule(func)
    try:
        rv = sch.get_sblock(block)
    except tvm.s_tir.schedule.ScheduleError:
        return None
    kinds = {0: "Serial", 1: "Parallel", 2: "Vectorized", 3: "Unrolled"}
    return [(kinds[int(sch.get(loop).kind)], int(sch.get(loop).extent)) for loop in sch.get_loops(rv)]


def test_padding_runs_by_rows_and_strided_depthwise_pads_in_place(tmp_path):
    """A padding copy whose rows (30) are not whole vectors runs parallel over rows with a serial
    loop per row (a flat loop paid an index division per element: 3x slower on ShuffleNet's);
    a stride-2 depthwise conv selects zeros in its loads instead of copying a padded input;
    the stride-2 max-pool computes output rows in parallel, scalar, each with its padded input
    rows (no gathering vector loads). Results equal ONNX Runtime."""
    onnx_model = strided_pair()
    mod, stats = scheduled_module(onnx_model)
    assert not stats.declined
    by_stride = {}
    for f in kernels(mod, "conv2d"):
        text = f.script()
        by_stride["stride2" if "* T.int64(2)" in text else "stride1"] = f
    assert set(by_stride) == {"stride1", "stride2"}
    assert _loop_kinds(by_stride["stride1"], "pad_temp") == [("Parallel", 12 * 30), ("Serial", 30)]
    assert _loop_kinds(by_stride["stride2"], "pad_temp") is None
    (pool,) = kernels(mod, "max_pool2d")
    assert _loop_kinds(pool, "pad_temp")[0] == ("Parallel", 12 * 14)  # per output row
    assert _loop_kinds(pool, "pool_max") == [("Parallel", 12 * 14), ("Serial", 14), ("Serial", 3), ("Serial", 3)]
    assert_matches_onnxruntime(onnx_model, tmp_path, seed=3)


def conv3x3(channels: int, filters: int, size: int) -> onnx.ModelProto:
    return model([helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", ["c"], ["y"])],
                 [("x", [1, channels, size, size])], [("y", [1, filters, size, size])],
                 [const("w", filters, channels, 3, 3), const("b", filters)])


def test_windowed_conv_walks_input_channels_in_chunks(tmp_path):
    """A 3x3 conv with 7 register tiles per row: each parallel task takes 7 rows (49 tiles), and
    they all step through the 32 input channels 16 at a time (the chunk's weights stay in L1).
    Not blocked: one tile per row (7x7), or too few parallel tasks left (16 filters)."""
    blocked = conv3x3(32, 256, 14)
    mod, _ = scheduled_module(blocked)
    (f,) = kernels(mod, "conv2d")
    loops = _loop_kinds(f, "conv2d_nchw_update")
    assert loops[:5] == [("Parallel", 8 * 2), ("Serial", 2), ("Serial", 7), ("Serial", 7), ("Serial", 16)], loops
    for unblocked in (conv3x3(64, 64, 7), conv3x3(32, 16, 14)):
        mod, _ = scheduled_module(unblocked)
        (f,) = kernels(mod, "conv2d")
        loops = _loop_kinds(f, "conv2d_nchw_update")
        assert loops[1] in {("Serial", 32), ("Serial", 64)}, loops  # all input channels inside one tile
    assert_matches_onnxruntime(blocked, tmp_path, seed=4)


@pytest.mark.parametrize("layout", ["NCHW", "NCHWc"])
def test_pointwise_conv_tasks_step_through_channel_blocks_first(layout):
    """A 1x1 conv's parallel tasks run all output-channel blocks of one spatial tile in a row
    (one data tile read into L1 for all of them): task 1 is channel block 1 of tile 0. In NCHWc
    the blocks are an output axis of their own (``fo``), not the vector axis' outer part."""
    from schedules.rules.common import _substitute

    onnx_model = model([helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[1, 1])],
                       [("x", [1, 32, 28, 28])], [("y", [1, 64, 28, 28])], [const("w", 64, 32, 1, 1), const("b", 64)])
    mod, _ = scheduled_module(onnx_model, layout=layout)
    (f,) = kernels(mod, "conv2d")
    block = "conv2d_nchw_update" if layout == "NCHW" else "conv2d_nchwc_update"
    sch = tvm.s_tir.Schedule(f)
    loops = sch.get_loops(sch.get_sblock(block))
    assert _loop_kinds(f, block)[0][0] == "Parallel"
    realize = sch.get(loops[-1]).body
    at_task_1 = [(sch.get(loop).loop_var, tirx.IntImm(sch.get(loop).loop_var.ty.dtype, int(loop == loops[0])))
                 for loop in loops]
    # the accumulator is [n, channel block, y, x, lanes] in both layouts
    block_index = _substitute(realize.block.writes[0].region[1].min,
                              list(zip([iv.var for iv in realize.block.iter_vars], realize.iter_values)))
    first_block = tvm.sym.Analyzer().simplify(_substitute(block_index, at_task_1))
    assert int(first_block) == 1, first_block  # task 1 starts at channel block 1, not at tile 1


def conv1x1(channels: int, filters: int, size: int) -> onnx.ModelProto:
    return model([helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[1, 1]),
                  helper.make_node("Relu", ["c"], ["y"])],
                 [("x", [1, channels, size, size])], [("y", [1, filters, size, size])],
                 [const("w", filters, channels, 1, 1), const("b", filters)])


def test_long_pointwise_conv_blocks_input_channels_under_a_four_vector_tile(tmp_path):
    """A 1x1 conv over 256 input channels (AVX2): each tile is four weight vectors (32 output
    channels) by 2 columns, a tail tile on the odd width 7 (bound-checked), and the tiles of a
    block of rows (all 7: 28 tiles) walk the input channels 64 at a time. Over 64 input channels
    it keeps ``register_tile``'s tile, unblocked. Results equal ONNX Runtime."""
    long = conv1x1(256, 256, 7)
    mod, _ = scheduled_module(long)
    (f,) = kernels(mod, "conv2d")
    loops = _loop_kinds(f, "conv2d_nchw_update")
    assert loops[0] == ("Parallel", 256 // 32) and loops[1] == ("Serial", 256 // 64), loops
    assert loops[-3:] == [("Serial", 64), ("Unrolled", 2), ("Vectorized", 32)], loops
    assert "T.where" in f.script()  # 7 columns: tiles of 2, the last one checked
    mod, _ = scheduled_module(conv1x1(64, 64, 7))
    (f,) = kernels(mod, "conv2d")
    assert _loop_kinds(f, "conv2d_nchw_update")[1:] == [("Serial", 64), ("Unrolled", 7), ("Vectorized", 16)]
    assert_matches_onnxruntime(long, tmp_path, seed=9)


def test_prime_width_conv_tiles_with_a_tail(tmp_path):
    """13 output columns (SqueezeNet's last fire modules): 5-column tiles with a tail instead of
    one column per tile; the tail's outputs are right (equal to ONNX Runtime)."""
    onnx_model = conv3x3(16, 32, 13)
    mod, _ = scheduled_module(onnx_model)
    (f,) = kernels(mod, "conv2d")
    assert ("Unrolled", 5) in _loop_kinds(f, "conv2d_nchw_update")
    assert_matches_onnxruntime(onnx_model, tmp_path, seed=6)


def test_row_reduction_declines_what_dlight_cannot_schedule():
    """A row-sum kernel that also writes an unrelated output (Inception's unfused global pool next
    to a full_like): TVM's dlight Reduction raises a ScheduleError on it; RowReduction declines
    instead of failing the build, and the default pass still schedules the kernel."""
    from tvm import te
    from tvm.s_tir.dlight.cpu import Reduction
    from tvm.s_tir.schedule import ScheduleError

    from schedules.rules.reduction import RowReduction

    x = te.placeholder((16, 49), name="x")
    k = te.reduce_axis((0, 49), name="k")
    row_sum = te.compute((16,), lambda i: te.sum(x[i, k], axis=k), name="row_sum")
    avg = te.compute((16,), lambda i: row_sum[i] / 49.0, name="avg")
    ones = te.compute((16,), lambda i: tvm.tirx.const(1.0, "float32"), name="ones")
    func = te.create_prim_func([x, avg, ones])
    target = resolve_target("x86-avx2").tvm_target()
    with pytest.raises(ScheduleError):
        Reduction().apply(func, target, False)
    assert RowReduction().apply(func, target, False) is None
    stats = ScheduleStats()
    with target:
        default_schedule_pass(target, stats=stats)(tvm.IRModule({"main": func}))
    assert not stats.declined and stats.defaulted == 1


def test_transpose_to_four_channels_runs_by_rows_of_short_inner_axes(tmp_path):
    """NCHW -> NHWC with channels padded 3 -> 4 (an INT8 model's input): no vector of whole
    rows, and the last axis (4) is short, so each parallel task is a row of the two innermost
    axes (24 x 4, the 4 unrolled) rather than one flat loop with an index division per
    element (SqueezeNet INT8's 224x224x4 input: 0.19 -> 0.017 ms). Results equal ONNX Runtime."""
    pads = helper.make_tensor("pads", onnx.TensorProto.INT64, [8], [0, 0, 0, 0, 0, 0, 0, 1])
    onnx_model = model([helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
                        helper.make_node("Pad", ["t", "pads"], ["y"])],
                       [("x", [1, 3, 20, 24])], [("y", [1, 20, 24, 4])], [pads])
    mod, stats = scheduled_module(onnx_model)
    assert not stats.declined
    (kernel,) = kernels(mod, "transpose")
    block = next(b for b in ("PadInput", "T_pad") if f'sblock("{b}")' in kernel.script())
    assert _loop_kinds(kernel, block) == [("Parallel", 20), ("Serial", 24), ("Unrolled", 4)]
    assert_matches_onnxruntime(onnx_model, tmp_path, seed=4)


def test_nhwc_depthwise_weights_are_packed_channel_innermost(tmp_path):
    """NHWC depthwise: the vectorized channel axis is the weight's first dim (W[c, kh, kw, 1]), so
    each vector would gather 8 weights 9 apart; the weight is packed channel-innermost at compile
    time (a layout-rewrite block SplitLayoutRewritePreproc moves out) and the results equal ORT's."""
    dw = model([helper.make_node("Conv", ["x", "w", "b"], ["d"], pads=[1, 1, 1, 1], group=32),
                helper.make_node("Relu", ["d"], ["y"])],
               [("x", [1, 32, 12, 12])], [("y", None)], [const("w", 32, 1, 3, 3), const("b", 32)])
    mod, _ = scheduled_module(dw, layout="NHWC")
    (f,) = kernels(mod, "conv2d")
    assert "layout_rewrite_preproc" in f.script()
    assert_matches_onnxruntime(dw, tmp_path, seed=5, layout="NHWC")


def test_row_softmax_is_accurate_on_wide_and_masked_rows(tmp_path):
    """The vectorized softmax (partial max/sum, TOPI's fast_exp) against float64: within 1e-5
    relative (1e-35 absolute near float32's smallest normals); a masked (-inf) entry gives 0 up
    to fast_exp's clamp at exp(-88)."""
    graph = model([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], [("x", [3, 6625])], [("y", None)])
    compile_model(graph, tmp_path / "s.so", target="host")
    lib = load(tmp_path / "s.so")
    x = (np.random.default_rng(2).standard_normal((3, 6625)) * 30).astype(np.float32)
    x[1, ::7] = -np.inf  # masked positions
    got = lib.run({"x": x})["y"]
    ref = np.exp(x.astype(np.float64) - x.max(axis=-1, keepdims=True))
    ref /= ref.sum(axis=-1, keepdims=True)
    # near float32's smallest normals fast_exp loses relative accuracy: an absolute 1e-35 there
    assert np.all(np.abs(got - ref) <= 1e-5 * ref + 1e-35)
    assert np.all(got[1, ::7] <= 1e-37)
    np.testing.assert_allclose(got.sum(axis=-1), 1.0, rtol=1e-5)


def test_stem_conv_vectorizes_rows_and_shifts_the_last_tile(tmp_path):
    """A 3-channel 3x3 stride-2 stem (27 multiply-adds per output) is vectorized along its output
    rows, 8 channels per tile (AVX2): 17 columns are tiles at 0, 8 and 9, so no bound check is
    left in the kernel. A 7x7 stem (147 multiply-adds per output) stays channel-vectorized.
    Results equal ONNX Runtime (built for this machine: 16 lanes, tiles at 0 and 1)."""
    onnx_model = stem(size=35, pad=0)
    mod, _ = scheduled_module(onnx_model)
    (f,) = kernels(mod, "conv2d")
    assert str(f.attrs[RULE_ATTR]) == "StemConv"
    assert _loop_kinds(f, "conv2d_nchw_update")[-2:] == [("Unrolled", 8), ("Vectorized", 8)]
    assert "T.where" not in f.script()
    assert "T.min" in f.script()  # the tile start, clamped to end at column 17
    mod, _ = scheduled_module(stem(size=38, kernel=7, pad=3))
    assert [str(f.attrs[RULE_ATTR]) for f in kernels(mod, "conv2d")] == ["ChannelVectorized"]
    assert_matches_onnxruntime(onnx_model, tmp_path, seed=7)


@pytest.mark.parametrize("pad", [0, 1])
def test_stride_two_stem_reads_even_and_odd_columns_from_two_planes(tmp_path, pad):
    """A stride-2 stem on an even-width input reads it laid out as [n, c, y, x % 2, x // 2] (the
    padding pass writes that layout; unpadded, a copy of the input does), so each vector of
    output columns is one contiguous load, and its tile is two vectors of columns (16 on AVX2)
    by 4 channels. Results equal ONNX Runtime."""
    onnx_model = stem(size=36, pad=pad)
    mod, _ = scheduled_module(onnx_model)
    (f,) = kernels(mod, "conv2d")
    assert str(f.attrs[RULE_ATTR]) == "StemConv"
    assert _loop_kinds(f, "conv2d_nchw_update")[-2:] == [("Unrolled", 4), ("Vectorized", 16)]
    planes = [b for b in f.script().splitlines() if "T.sblock_alloc_buffer" in b and "T.int64(2), T.int64(" in b]
    assert planes, f.script()  # a 5-D buffer with a 2-wide column-parity axis
    assert_matches_onnxruntime(onnx_model, tmp_path, seed=8)


def test_nhwc_grouped_conv_vectors_stay_inside_a_group(tmp_path):
    """NHWC grouped 1x1 conv, 4 groups of 12 channels: a vector of 8 output channels (AVX2)
    across a group boundary would load each input lane on its own (INT8 ShuffleNet's 68-channel
    groups ran 5x slower). The tile is one group, as 4-lane vectors; results equal ORT's."""
    grouped = model([helper.make_node("Conv", ["x", "w", "b"], ["c"], group=4),
                     helper.make_node("Relu", ["c"], ["y"])],
                    [("x", [1, 48, 10, 10])], [("y", None)], [const("w", 48, 12, 1, 1), const("b", 48)])
    mod, _ = scheduled_module(grouped, layout="NHWC")
    (f,) = kernels(mod, "conv2d")
    assert str(f.attrs[RULE_ATTR]) == "SpatialVectorized"
    loops = _loop_kinds(f, "group_conv2d_nhwc_update")
    assert loops[-2:] == [("Unrolled", 3), ("Vectorized", 4)], loops  # 12 channels: 3 vectors of 4
    assert_matches_onnxruntime(grouped, tmp_path, seed=8, layout="NHWC")


def matmul(rows: int, k: int, n: int = 64) -> onnx.ModelProto:
    return model([helper.make_node("MatMul", ["x", "w"], ["y"])], [("x", [rows, k])], [("y", None)],
                 [const("w", k, n)])


def test_matmul_weights_stream_by_block_and_far_apart_rows_are_copied(tmp_path):
    """A matmul's [K, N] weight is packed [N/L, K, L], so each task streams one contiguous block;
    data rows 4 KB apart (K = 1024) are first copied rows-innermost, so that a step of the register
    tile broadcasts consecutive floats instead of one line per row from a single L1 set (ddddocr's
    classifier: 2.3x faster); rows 2 KB apart keep their layout. Results equal ORT's."""
    for k, copied in ((1024, True), (512, False)):
        mod = lowered(matmul(8, k, n=256))
        (f,) = [f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc) and "matmul" in gv.name_hint]
        assert str(f.attrs[RULE_ATTR]) == "ChannelVectorized"
        script = f.script()
        assert f"T.Buffer((T.int64(32), T.int64({k}), T.int64(8))" in script, script  # 256 = 32 blocks of 8
        assert (f"T.sblock_alloc_buffer((T.int64({k}), T.int64(8)))" in script) == copied, script
    assert_matches_onnxruntime(matmul(8, 1024, n=256), tmp_path, seed=9)


def test_sigmoid_tanh_and_erf_epilogues_vectorize_and_stay_accurate(tmp_path):
    """A conv with a SiLU epilogue (x * sigmoid(x)), a matmul with a tanh and one with a GELU
    (x * (1 + erf(x / sqrt 2)) / 2) compute them with polynomials inside the fused kernel, not
    ``T.sigmoid``/``T.tanh``/``T.erf`` (which LLVM lowers to one scalar ``expf``/``erff`` call per
    lane); a lone sigmoid, tanh and erf over [-100, 100] stay within 1e-6 of float64's."""
    silu = model([helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
                  helper.make_node("Sigmoid", ["c"], ["s"]), helper.make_node("Mul", ["c", "s"], ["y"])],
                 [("x", [1, 8, 12, 12])], [("y", None)], [const("w", 16, 8, 3, 3), const("b", 16)])
    dense_tanh = model([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Tanh", ["h"], ["y"])],
                       [("x", [4, 32])], [("y", None)], [const("w", 32, 64)])
    dense_gelu = model([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Div", ["h", "r2"], ["d"]),
                        helper.make_node("Erf", ["d"], ["e"]), helper.make_node("Add", ["e", "one"], ["a"]),
                        helper.make_node("Mul", ["h", "a"], ["m"]), helper.make_node("Mul", ["m", "half"], ["y"])],
                       [("x", [4, 32])], [("y", None)],
                       [const("w", 32, 64)] + [numpy_helper.from_array(np.array(v, np.float32), n)
                                               for n, v in (("r2", 2 ** 0.5), ("one", 1.0), ("half", 0.5))])
    for onnx_model, part, seed in ((silu, "sigmoid", 10), (dense_tanh, "tanh", 11), (dense_gelu, "erf", 15)):
        (f,) = [f for gv, f in lowered(onnx_model).functions_items()
                if isinstance(f, tirx.PrimFunc) and part in gv.name_hint]
        script = f.script()
        assert not [c for c in ("T.sigmoid(", "T.tanh(", "T.exp(", "T.erf(") if c in script], script
        assert str(f.attrs[RULE_ATTR]) in ("ChannelVectorized", "SpatialVectorized"), part  # one fused kernel
        assert_matches_onnxruntime(onnx_model, tmp_path, seed=seed)

    x = np.linspace(-100, 100, 4001, dtype=np.float32)
    erf = np.vectorize(math.erf)(x.astype(np.float64))
    for op, want in (("Sigmoid", 1 / (1 + np.exp(-x.astype(np.float64)))), ("Tanh", np.tanh(x.astype(np.float64))),
                     ("Erf", erf)):
        alone = model([helper.make_node(op, ["x"], ["y"])], [("x", [4001])], [("y", None)])
        compile_model(alone, tmp_path / "a.so", target="host")
        got = load(tmp_path / "a.so", threads=1).run(x)["y"]
        assert np.abs(got - want).max() < 1e-6, op



@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_onnx_gelu_vectorizes_and_matches_onnxruntime(approximate, tmp_path):
    """ONNX ``Gelu`` (opset 20; relax ``nn.gelu`` / ``nn.gelu_tanh``) after a matmul: computed with
    the erf / tanh polynomials inside the matmul's kernel (no ``T.erf``/``T.tanh`` call left),
    results equal ONNX Runtime's."""
    gelu = model([helper.make_node("MatMul", ["x", "w"], ["h"]),
                  helper.make_node("Gelu", ["h"], ["y"], approximate=approximate)],
                 [("x", [4, 32])], [("y", None)], [const("w", 32, 64)], opset=20)
    (f,) = [f for gv, f in lowered(gelu).functions_items() if isinstance(f, tirx.PrimFunc) and "gelu" in gv.name_hint]
    assert str(f.attrs[RULE_ATTR]) == "ChannelVectorized"
    script = f.script()
    assert "T.erf(" not in script and "T.tanh(" not in script, script
    assert_matches_onnxruntime(gelu, tmp_path, seed=16)

def activation_chain(depth: int) -> onnx.ModelProto:
    """``depth`` times x -> x * sigmoid(x) then ``depth`` times x -> tanh(x): one elementwise kernel."""
    nodes, prev = [], "x"
    for i in range(depth):
        nodes += [helper.make_node("Sigmoid", [prev], [f"s{i}"]), helper.make_node("Mul", [prev, f"s{i}"], [f"m{i}"])]
        prev = f"m{i}"
    for i in range(depth):
        nodes.append(helper.make_node("Tanh", [prev], [f"t{i}"]))
        prev = f"t{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    return model(nodes, [("x", [4, 64])], [("y", None)])


def test_chained_activations_stay_small_and_match_onnxruntime(tmp_path):
    """The polynomials read their input 17-19 times, so inlining one activation into the next
    copies it each time: 8 SiLUs and 8 tanhs in a row would build an exponentially large kernel
    (at depth 7 one compile ran out of 6 GB). Values that large are kept in their own nest
    instead: the scheduled kernels stay small, compile and match ONNX Runtime."""
    for depth in (2, 8):
        size = sum(len(f.script()) for _, f in lowered(activation_chain(depth)).functions_items()
                   if isinstance(f, tirx.PrimFunc))
        assert size < 6000 * depth, (depth, size)
    assert_matches_onnxruntime(activation_chain(8), tmp_path, seed=12)


def test_matmul_epilogue_reading_a_sigmoid_many_times_stays_fused(tmp_path):
    """A gate read twice (s * a + (1 - s) * b) is still inlined; a sigmoid read four times
    (s * s * s * s) is too large to copy into every read, so it is computed per output tile beside
    the last epilogue block: the matmul keeps its vectorized schedule (it had fallen back to
    ``RowReduction``, 140x slower) and matches ONNX Runtime."""
    gate = model([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Sigmoid", ["h"], ["s"]),
                  helper.make_node("Mul", ["s", "a"], ["sa"]), helper.make_node("Sub", ["one", "s"], ["r"]),
                  helper.make_node("Mul", ["r", "b"], ["rb"]), helper.make_node("Add", ["sa", "rb"], ["y"])],
                 [("x", [8, 32]), ("a", [8, 64]), ("b", [8, 64])], [("y", None)],
                 [const("w", 32, 64), numpy_helper.from_array(np.array(1.0, np.float32), "one")])
    fourth_power = model([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Sigmoid", ["h"], ["s"]),
                          helper.make_node("Mul", ["s", "s"], ["s2"]), helper.make_node("Mul", ["s2", "s"], ["s3"]),
                          helper.make_node("Mul", ["s3", "s"], ["y"])],
                         [("x", [8, 32])], [("y", None)], [const("w", 32, 64)])
    for onnx_model, seed in ((gate, 13), (fourth_power, 14)):
        (f,) = [f for gv, f in lowered(onnx_model).functions_items()
                if isinstance(f, tirx.PrimFunc) and "matmul" in gv.name_hint]
        assert str(f.attrs[RULE_ATTR]) == "ChannelVectorized"
        assert_matches_onnxruntime(onnx_model, tmp_path, seed=seed)


def _accumulator_scopes(f: tirx.PrimFunc) -> list[str]:
    """Scopes of the buffers ``f``'s reduction blocks accumulate into (allocated in ``f``)."""
    from schedules.stack_accumulators import _realizes

    realizes = _realizes(f.body)
    allocated = {buf for r, _ in realizes for buf in r.block.alloc_buffers}
    return [w.source.scope() for r, _ in realizes for w in r.block.writes
            if w.source in allocated and any(x.source.same_as(w.source) for x in r.block.reads)]


def test_tiles_that_fit_the_registers_accumulate_on_the_stack(tmp_path):
    """On AVX2 a 1x1 conv's 1x14 tile (14 accumulators, a weight vector and a broadcast: 16
    registers) accumulates into a global-scope buffer, which LLVM gets as a stack array: its code
    calls no TVMBackendAllocWorkspace. A 2x7 tile (14 + 2 + 1 = 17 registers) keeps its local,
    workspace-allocated accumulator. Both compute what ONNX Runtime computes."""
    wide = model([helper.make_node("Conv", ["x", "w", "b"], ["c"]), helper.make_node("Add", ["c", "r"], ["y"])],
                 [("x", [1, 16, 28, 28]), ("r", [1, 32, 28, 28])], [("y", None)], [const("w", 32, 16, 1, 1),
                                                                                   const("b", 32)])
    narrow = model([helper.make_node("Conv", ["x", "w"], ["y"])], [("x", [1, 32, 7, 7])], [("y", None)],
                   [const("w", 64, 32, 1, 1)])
    for onnx_model, scope, seed in ((wide, "global", 20), (narrow, "local", 21)):
        mod = lowered(onnx_model)
        (conv,) = [f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc) and "conv2d" in gv.name_hint]
        assert str(conv.attrs[RULE_ATTR]) == "ChannelVectorized"
        assert _accumulator_scopes(conv) == [scope]
        kernel = tvm.compile(tvm.IRModule({"main": conv}), resolve_target("x86-avx2").tvm_target())
        workspace_calls = kernel.mod.inspect_source("ll").count("TVMBackendAllocWorkspace")
        assert (workspace_calls == 0) == (scope == "global"), workspace_calls
        assert_matches_onnxruntime(onnx_model, tmp_path, seed=seed)
