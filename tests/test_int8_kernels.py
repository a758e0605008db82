"""int8 kernels: tensorized uint8 x int8 conv2d / matmul are bit-exact, declined ones stay exact.

Every case builds a Relax module the way kiln's quantizer emits it (``conv2d`` / ``matmul``
with ``out_dtype="int32"``, constant int8 weights, an elementwise epilogue), runs kiln's
pipeline and compares with a numpy int64 reference: equal, not close.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.s_tir import TensorIntrin

from compiler.passes.mark_int8_weight_bits import mark_int8_weight_bits
from compiler.pipeline import build_pipeline, pipeline_steps
from schedules.defaults import CPU_RULES, RULE_ATTR, default_schedule_pass, schedule_summary
from schedules.int8 import WEIGHT_BITS_ATTR, dot_desc, int8_bits, weight_bits_for
from schedules.rules import ChannelVectorized, SpatialVectorized
from schedules.rules.int8 import (AVX2_DOT, AVX512_DOT, VNNI_DOT, VNNI_DOT_YMM, DotIntrin, Int8Tensorized,
                                  int8_tile)
from targets.registry import cpu_flags, resolve_target, with_conv_layout

AVX2_HERE = "avx2" in cpu_flags()
needs_avx2 = pytest.mark.skipif(not AVX2_HERE, reason="this CPU has no AVX2")

# Each x86 int8 kernel family, run where this CPU can: (target, CPU flag, weight bits, instruction).
# vpmaddubsw saturates its int16 pair sums, so AVX2/AVX-512 take 7-bit weights; VNNI's vpdpbusd
# accumulates in int32 and takes the full 8 bits.
X86_INT8 = [
    pytest.param("x86-avx2", 7, "vpmaddubsw", marks=needs_avx2, id="avx2"),
    pytest.param("x86-avx512", 7, "vpmaddubsw", id="avx512",
                 marks=pytest.mark.skipif("avx512bw" not in cpu_flags(), reason="this CPU has no AVX-512")),
    pytest.param("x86-vnni", 8, "vpdpbusd", id="vnni",
                 marks=pytest.mark.skipif("avx512_vnni" not in cpu_flags(), reason="this CPU has no AVX-512 VNNI")),
]


# ---------------------------------------------------------------- models and references


def conv_model(c: int, f: int, size: int, k: int = 3, stride: int = 1, pad: int = 1, groups: int = 1,
               x_dtype: str = "uint8", epilogue: str = "bias", w_bits: int = 7, seed: int = 0,
               layout: str = "NCHW"):
    """x (c channels, x_dtype) -> int32 conv -> + bias [-> float rescale, relu, round, clip, uint8].

    ``layout="NHWC"``: data, output and per-channel constants NHWC, the weight OHWI."""
    rng = np.random.default_rng(seed)
    limit = 2 ** (w_bits - 1)
    w = rng.integers(-limit, limit, (f, c // groups, k, k)).astype("int8")
    b = rng.integers(-2000, 2000, (1, f, 1, 1)).astype("int32")
    s = (rng.random((1, f, 1, 1)) * 0.004 + 0.001).astype("float32")
    nhwc = layout == "NHWC"
    to_nhwc = (lambda a: a.transpose(0, 2, 3, 1)) if nhwc else (lambda a: a)
    x = relax.Var("x", relax.TensorType((1, size, size, c) if nhwc else (1, c, size, size), x_dtype))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(to_nhwc(w).copy()), strides=stride, padding=pad,
                                           groups=groups, data_layout=layout,
                                           kernel_layout="OHWI" if nhwc else "OIHW", out_dtype="int32"))
            y = bb.emit(relax.op.add(y, relax.const(to_nhwc(b).copy())))
            if epilogue == "requant":
                y = bb.emit(relax.op.multiply(relax.op.astype(y, "float32"), relax.const(to_nhwc(s).copy())))
                y = bb.emit(relax.op.astype(relax.op.clip(relax.op.round(relax.op.nn.relu(y)), 0, 255), "uint8"))
            out = bb.emit_output(y)
        bb.emit_func_output(out)

    def reference(xv: np.ndarray) -> np.ndarray:
        if nhwc:
            return to_nhwc(reference_nchw(xv.transpose(0, 3, 1, 2)))
        return reference_nchw(xv)

    def reference_nchw(xv: np.ndarray) -> np.ndarray:
        xp = np.pad(xv.astype(np.int64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        out_size = (size + 2 * pad - k) // stride + 1
        acc = np.zeros((1, f, out_size, out_size), np.int64)
        cg, fg = c // groups, f // groups
        for g in range(groups):
            for ky in range(k):
                for kx in range(k):
                    rows, cols = slice(ky, ky + stride * out_size, stride), slice(kx, kx + stride * out_size, stride)
                    patch = xp[:, g * cg:(g + 1) * cg, rows, cols]
                    acc[:, g * fg:(g + 1) * fg] += np.einsum("nchw,fc->nfhw", patch,
                                                             w[g * fg:(g + 1) * fg, :, ky, kx].astype(np.int64))
        acc += b
        if epilogue != "requant":
            return acc
        scaled = acc.astype(np.int32).astype(np.float32) * s
        return np.clip(np.round(np.maximum(scaled, np.float32(0))), 0, 255).astype(np.uint8)

    return bb.get(), reference


def matmul_model(m: int, k: int, n: int, batch: int | None = None, seed: int = 0, w_bits: int = 7):
    """x [.., m, k] uint8 @ w [k, n] int8 (``w_bits``-bit) -> int32, + bias."""
    rng = np.random.default_rng(seed)
    limit = 2 ** (w_bits - 1)
    w = rng.integers(-limit, limit, (k, n)).astype("int8")
    b = rng.integers(-2000, 2000, (n,)).astype("int32")
    shape = (m, k) if batch is None else (batch, m, k)
    x = relax.Var("x", relax.TensorType(shape, "uint8"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.matmul(x, relax.const(w), out_dtype="int32"))
            out = bb.emit_output(relax.op.add(y, relax.const(b)))
        bb.emit_func_output(out)
    return bb.get(), lambda xv: xv.astype(np.int64) @ w.astype(np.int64) + b


def random_input(mod: tvm.IRModule, seed: int = 1) -> np.ndarray:
    param = mod["main"].params[0]
    shape = [int(d) for d in param.ty.shape]
    dtype = str(param.ty.dtype)
    low, high = (0, 256) if dtype == "uint8" else (-128, 128)
    return np.random.default_rng(seed).integers(low, high, shape).astype(dtype)


# ---------------------------------------------------------------- building


def lower(mod: tvm.IRModule, target="x86-avx2", rules=None, mark_bits: bool = False) -> tvm.IRModule:
    """kiln's pipeline; ``rules`` replaces the default CPU rules, ``mark_bits`` runs
    ``mark_int8_weight_bits`` just before the default schedules."""
    preset = resolve_target(target)
    with tvm.transform.PassContext(opt_level=3), preset.tvm_target() as tgt:
        if rules is None and not mark_bits:
            return build_pipeline(preset)(mod)
        for step in pipeline_steps(preset):
            if step.name == "DefaultCPUSchedule":
                if mark_bits:
                    mod = mark_int8_weight_bits(mod)
                mod = default_schedule_pass(tgt, rules or CPU_RULES)(mod)
            else:
                mod = step.make()(mod)
        return mod


def run(lowered: tvm.IRModule, x: np.ndarray, target: str = "x86-avx2") -> tuple[np.ndarray, str]:
    """Output of the compiled module on ``x`` and the assembly of its kernels."""
    ex = tvm.compile(lowered, resolve_target(target).tvm_target(), relax_pipeline=None)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy(), ex.mod.imports[0].inspect_source("asm")


def rules_used(lowered: tvm.IRModule, op: str) -> set[str]:
    return {str(f.attrs[RULE_ATTR]) for gv, f in lowered.functions_items()
            if isinstance(f, tvm.tirx.PrimFunc) and op in gv.name_hint and f.attrs is not None
            and RULE_ATTR in f.attrs}


# ---------------------------------------------------------------- tensorized kernels

TENSORIZED = {
    "conv1x1": dict(c=32, f=64, size=14, k=1, pad=0),
    "conv3x3_pad": dict(c=16, f=32, size=12),
    "conv3x3_requant_uint8": dict(c=16, f=16, size=10, epilogue="requant"),
    "conv3x3_stride2_odd": dict(c=8, f=24, size=13, stride=2),
    # NHWC: 4 consecutive channels are contiguous already, the kernel reads them in place
    "nhwc_conv3x3_requant_uint8": dict(c=16, f=16, size=10, epilogue="requant", layout="NHWC"),
    "nhwc_conv1x1": dict(c=32, f=64, size=14, k=1, pad=0, layout="NHWC"),
    "nhwc_conv3x3_stride2_odd": dict(c=8, f=24, size=13, stride=2, layout="NHWC"),
}


@pytest.mark.parametrize("target,w_bits,instruction", X86_INT8)
@pytest.mark.parametrize("name", sorted(TENSORIZED))
def test_tensorized_conv_is_exact(name, target, w_bits, instruction):
    mod, reference = conv_model(**TENSORIZED[name], w_bits=w_bits)
    lowered = lower(mod, target)
    assert rules_used(lowered, "conv2d") == {"Int8Tensorized"}
    x = random_input(mod)
    out, asm = run(lowered, x, target)
    np.testing.assert_array_equal(out, reference(x))
    assert instruction in asm


@pytest.mark.parametrize("target,w_bits,instruction", X86_INT8)
@pytest.mark.parametrize("m,k,n,batch", [(1, 64, 32, None), (16, 128, 64, None), (5, 36, 24, None), (4, 64, 16, 2)])
def test_tensorized_matmul_is_exact(m, k, n, batch, target, w_bits, instruction):
    mod, reference = matmul_model(m, k, n, batch, w_bits=w_bits)
    lowered = lower(mod, target)
    assert rules_used(lowered, "matmul") == {"Int8Tensorized"}
    x = random_input(mod)
    out, asm = run(lowered, x, target)
    np.testing.assert_array_equal(out, reference(x))
    assert instruction in asm


@pytest.mark.parametrize("layout, packed", [("NHWC", [4, 3, 3, 4, 8, 4]), ("NCHW", [4, 4, 3, 3, 8, 4])])
def test_weights_are_packed_at_compile_time(layout, packed):
    """The conv kernel takes the weight as [F/8, C/4, KH, KW, 8, 4] (NCHW) or [F/8, KH, KW, C/4, 8, 4]
    (NHWC: x86's int8 layout, which Int8ConvLayout gives these int8 NCHW convs), folded into a constant."""
    mod, _ = conv_model(c=16, f=32, size=8)
    lowered = lower(mod, target=with_conv_layout(resolve_target("x86-avx2"), layout))
    names = {gv.name_hint: f for gv, f in lowered.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}
    assert not [n for n in names if "weight_prepack" in n], sorted(names)
    conv = [f for n, f in names.items() if "conv2d" in n]
    assert conv and any([int(d) for d in p.shape] == packed for p in conv[0].params)


# ---------------------------------------------------------------- declined kernels stay exact

DECLINED = {
    "three_input_channels": dict(c=3, f=16, size=10),
    "depthwise": dict(c=16, f=16, size=10, groups=16),
    "signed_activations": dict(c=16, f=16, size=10, x_dtype="int8"),
    "odd_output_channels": dict(c=16, f=12, size=10),
}


@pytest.mark.parametrize("name", sorted(DECLINED))
def test_declined_conv_is_exact(name):
    mod, reference = conv_model(**DECLINED[name], w_bits=8)
    lowered = lower(mod)
    rules = rules_used(lowered, "conv2d")
    assert rules and "Int8Tensorized" not in rules
    x = random_input(mod)
    out, _ = run(lowered, x)
    np.testing.assert_array_equal(out, reference(x))


def test_declined_matmul_is_exact():
    """K = 30 is not a multiple of 4: the generic rules take it."""
    mod, reference = matmul_model(3, 30, 16)
    lowered = lower(mod)
    assert "Int8Tensorized" not in rules_used(lowered, "matmul")
    x = random_input(mod)
    np.testing.assert_array_equal(run(lowered, x)[0], reference(x))


def test_channel_vectorized_leaves_integer_convs_alone():
    """ChannelVectorized is float32-only: an int32-accumulating conv goes to SpatialVectorized."""
    mod, _ = conv_model(c=16, f=16, size=8)
    preset = resolve_target("x86-avx2")
    with tvm.transform.PassContext(opt_level=3), preset.tvm_target() as tgt:
        for step in pipeline_steps(preset):
            if step.name == "DefaultCPUSchedule":
                break
            mod = step.make()(mod)
        conv = next(f for gv, f in mod.functions_items() if "conv2d" in gv.name_hint)
        assert ChannelVectorized().apply(conv, tgt, False) is None
        assert SpatialVectorized().apply(conv, tgt, False) is not None


@needs_avx2
def test_eight_bit_weights_are_kept_off_the_saturating_intrinsic():
    """Full-range weights saturate vpmaddubsw; marked, the kernel takes the generic (exact) path."""
    mod, reference = conv_model(c=16, f=16, size=8, w_bits=8)
    x = random_input(mod)
    marked = lower(mod, mark_bits=True)
    conv = next(f for gv, f in marked.functions_items() if "conv2d" in gv.name_hint)
    assert int(conv.attrs[WEIGHT_BITS_ATTR]) == 8
    assert rules_used(marked, "conv2d") == {"SpatialVectorized"}
    np.testing.assert_array_equal(run(marked, x)[0], reference(x))
    # kiln's pipeline runs the marking step itself: plain lowering is exact too.
    np.testing.assert_array_equal(run(lower(mod), x)[0], reference(x))
    mod7, reference7 = conv_model(c=16, f=16, size=8, w_bits=7)
    marked7 = lower(mod7, mark_bits=True)
    assert rules_used(marked7, "conv2d") == {"Int8Tensorized"}
    np.testing.assert_array_equal(run(marked7, x)[0], reference7(x))


# ---------------------------------------------------------------- other targets and helpers


def test_weight_bits_follow_the_target():
    assert weight_bits_for(resolve_target("x86-avx2").tvm_target()) == 7
    assert weight_bits_for(resolve_target("x86-avx512").tvm_target()) == 7
    assert weight_bits_for(resolve_target("x86-vnni").tvm_target()) == 8
    assert weight_bits_for(resolve_target("graviton2").tvm_target()) == 8
    assert weight_bits_for({"kind": "llvm", "mcpu": "haswell"}) == 7
    assert int8_bits(np.array([-64, 63, 64], "int8")) == 7 and int8_bits(np.array([-65], "int8")) == 8


@pytest.mark.parametrize("target,instruction", [("x86-vnni", "vpdpbusd"), ("x86-avx512", "vpmaddubsw")])
def test_avx512_targets_compile_to_their_instruction(target, instruction):
    """Compiled only (this CPU may lack AVX-512): 16-lane kernels with zmm dot products."""
    mod, _ = conv_model(c=16, f=32, size=8)
    lowered = lower(mod, target)
    assert rules_used(lowered, "conv2d") == {"Int8Tensorized"}
    ex = tvm.compile(lowered, resolve_target(target).tvm_target(), relax_pipeline=None)
    asm = ex.mod.imports[0].inspect_source("asm")
    assert instruction in asm and "zmm" in asm


def _loop_intrin(lanes: int) -> DotIntrin:
    """The description itself as implementation: runs anywhere, checks the schedule's layouts."""
    name = f"kiln_test_dot_{lanes}x4_loops"
    if TensorIntrin.get(name, allow_missing=True) is None:
        TensorIntrin.register(name, dot_desc(lanes), dot_desc(lanes))
    return DotIntrin(name, lanes, 32, exact_bits=8)


def test_sixteen_lane_schedule_is_exact():
    """The AVX-512/VNNI layout (16 lanes, [F/16, C/4, KH, KW, 16, 4]) run here through a loop intrinsic."""
    rules = (Int8Tensorized((_loop_intrin(16),)), *CPU_RULES)
    for mod, reference in (conv_model(c=16, f=32, size=9, w_bits=8), matmul_model(3, 32, 48)):
        lowered = lower(mod, rules=rules)
        assert "Int8Tensorized" in schedule_summary(lowered)
        x = random_input(mod)
        np.testing.assert_array_equal(run(lowered, x)[0], reference(x))


@pytest.mark.parametrize("intrin", [AVX2_DOT, AVX512_DOT, VNNI_DOT, VNNI_DOT_YMM], ids=lambda i: i.name)
def test_tile_fits_the_registers(intrin):
    for lane_blocks, rows in [(8, 56), (1, 7), (64, 1), (3, 13), (125, 13), (32, 13), (2, 56), (64, 14), (6, 7)]:
        vectors, tile_rows = int8_tile(lane_blocks, rows, intrin=intrin)
        assert lane_blocks % vectors == 0 and rows % tile_rows == 0
        # a one-row tile uses each weight vector once: only one is live
        assert vectors * tile_rows + (vectors if tile_rows > 1 else 1) + 4 <= intrin.registers


def test_avx512_tiles_take_the_fewest_loads():
    """32 registers: rows join the channel blocks so each weight vector is reused."""
    assert int8_tile(64, 14, tasks=14, intrin=VNNI_DOT) == (2, 7)  # ResNet-50 14x14: 9 loads for 14 dots
    assert int8_tile(32, 56, tasks=56, intrin=VNNI_DOT) == (4, 4)
    assert int8_tile(6, 7, tasks=7, intrin=VNNI_DOT) == (3, 7)
    assert int8_tile(64, 1, tasks=1, intrin=VNNI_DOT) == (4, 1)  # a matmul row: channel blocks only


def test_tile_is_channel_blocks_on_one_row_unless_tasks_run_short():
    # ResNet-50's 14x14 256 -> 1024 1x1: 8 channel blocks on one row (y: 14 tasks)
    assert int8_tile(128, 14, tasks=14) == (8, 1)
    # 16 channels: rows fill the tile
    assert int8_tile(2, 56, tasks=56) == (2, 4)
    # PP-OCR classifier's 16 -> 40 on 3x96: 5 blocks x 3 rows of tasks; taking all 5 blocks would
    # leave 3 tasks (rows parallel, tile out of registers): one block, rows in the tile
    assert int8_tile(5, 96, tasks=3) == (1, 8)


def test_a_tile_tensorize_cannot_match_declines_to_exact_generic_rules(monkeypatch):
    """Tensorize refuses a row tile that does not divide its loop with TVM's InternalError (not a
    ScheduleError): the rule declines and the generic rules still compute the exact result."""
    import schedules.rules.int8 as int8_rules

    monkeypatch.setattr(int8_rules, "int8_tile", lambda *args: (1, 4))
    mod, reference = conv_model(c=16, f=16, size=13, k=1, pad=0, layout="NHWC")
    lowered = lower(mod)
    assert "Int8Tensorized" not in rules_used(lowered, "conv2d")
    x = random_input(mod)
    np.testing.assert_array_equal(run(lowered, x)[0], reference(x))
