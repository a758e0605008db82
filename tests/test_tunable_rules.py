"""kiln's design space for ``kiln tune``: the default rules' decisions opened to MetaSchedule.

The default schedule must be a point of the space (its trace, replayed with its own
decisions, rebuilds it exactly), every other point must compute the same numbers, and the
search's mutator must move one decision at a time.
"""

from __future__ import annotations

import random

import numpy as np
import onnx
import pytest
import tvm
import tvm_ffi
from onnx import helper
from tvm import s_tir
from tvm.s_tir import meta_schedule as ms

from compiler.frontend import import_onnx
from compiler.pipeline import tuning_input_pipeline
from schedules.resolved_target import resolve
from schedules.rules import ChannelVectorized, Int8Tensorized, SpatialVectorized
from schedules.rules.common import SPACE_ANNOTATION, space_of
from schedules.space import MutateDecision, design_spaces, tunable_rule
from schedules.tune import tuning_target
from targets.registry import cpu_flags
from tests.onnx_graphs import const, model


def conv_pair() -> onnx.ModelProto:  # a 3x3 conv (windowed: blocking applies) and a 1x1 conv
    return model([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", ["c"], ["r"]),
                  helper.make_node("Conv", ["r", "w1"], ["y"])],
                 [("x", [1, 32, 14, 14])], [("y", None)], [const("w", 32, 32, 3, 3), const("w1", 16, 32, 1, 1)])


def odd_width_conv() -> onnx.ModelProto:  # 13 wide: the default register tile has a tail
    return model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
                 [("x", [1, 8, 13, 13])], [("y", None)], [const("w", 32, 8, 3, 3)])


def dense() -> onnx.ModelProto:
    return model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)],
                 [("x", [4, 64])], [("y", None)], [const("w", 48, 64), const("b", 48)])


def depthwise() -> onnx.ModelProto:  # SpatialVectorized: a 3x3 depthwise conv, then a 2x2 stride-1 max-pool
    return model([helper.make_node("Conv", ["x", "w"], ["d"], pads=[1, 1, 1, 1], group=24),
                  helper.make_node("MaxPool", ["d"], ["y"], kernel_shape=[2, 2], strides=[1, 1])],
                 [("x", [1, 24, 28, 28])], [("y", None)], [const("w", 24, 1, 3, 3)])


MODELS = {"conv_pair": (conv_pair, ChannelVectorized), "odd_width_conv": (odd_width_conv, ChannelVectorized),
          "dense": (dense, ChannelVectorized), "depthwise": (depthwise, SpatialVectorized)}


def kernels(onnx_model: onnx.ModelProto, preset_name: str, rule=ChannelVectorized
            ) -> tuple[list[tvm.tirx.PrimFunc], tvm.target.Target]:
    """The tuning tasks' functions ``rule`` schedules, as ``kiln tune`` extracts them."""
    preset = resolve(preset_name, None, "fp32")
    imported = import_onnx(onnx_model, {}, preset.tvm_target(), {})
    with tvm.transform.PassContext(opt_level=3):
        mod = tuning_input_pipeline(preset, "fp32", None)(imported.mod)
    target = tuning_target(preset, 2)
    funcs = [t.dispatched[0]["main"] for t in ms.relax_integration.extract_tasks(mod, target)]
    return [f for f in funcs if isinstance(tunable_rule(f, target), rule)], target


def replay(func: tvm.tirx.PrimFunc, trace: s_tir.Trace) -> s_tir.Schedule:
    sch = s_tir.Schedule(func)
    trace.apply_to_schedule(sch, remove_postproc=True)
    return sch


def with_decisions(trace: s_tir.Trace, pick) -> s_tir.Trace:
    for inst in list(trace.decisions.keys()):
        trace = trace.with_decision(inst, pick(inst), remove_postproc=True)
    return trace


@pytest.mark.parametrize("preset", ["x86-avx2", "x86-vnni", "rpi4"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_first_space_with_its_decisions_is_the_default_schedule(name, preset):
    build, rule = MODELS[name]
    funcs, target = kernels(build(), preset, rule)
    assert funcs, f"no {rule.__name__} kernel: the test would check nothing"
    counts = []
    for func in funcs:
        default = rule().apply(func, target, False)
        spaces = design_spaces(func, target)
        counts.append(len(spaces))
        trace = spaces[0].trace.simplified(remove_postproc=True)  # as MetaSchedule keeps a space
        assert len(trace.decisions) >= 1  # the register rows at least
        tvm.ir.assert_structural_equal(replay(func, trace).mod, default.mod)
        assert space_of(default.mod["main"]) == rule.__name__
        # Other decisions give another schedule (so the equality above can fail).
        other = with_decisions(trace, lambda inst: (int(trace.decisions[inst]) + 1) % len(inst.attrs[0]))
        assert not tvm_ffi.structural_equal(replay(func, other).mod, default.mod)
    assert max(counts) >= 2  # some kernel is offered more than one tiling


def run_kernel(mod: tvm.IRModule, target, inputs: list[np.ndarray]) -> np.ndarray:
    """Build ``mod`` and run it on ``inputs``; the last parameter is the output."""
    lib = tvm.compile(mod, target=target)
    func = mod["main"]
    out_buffer = func.params[-1]  # PrimFunc parameters are buffers
    out = tvm.runtime.tensor(np.zeros([int(d) for d in out_buffer.shape], dtype=out_buffer.dtype))
    lib["main"](*[tvm.runtime.tensor(x) for x in inputs], out)
    return out.numpy()


@pytest.mark.parametrize("name", ["conv_pair", "odd_width_conv", "depthwise"])
def test_sampled_points_of_every_space_compute_the_default_numbers(name):
    build, rule = MODELS[name]
    funcs, target = kernels(build(), "x86-avx2", rule)  # runs on any x86-64 machine with AVX2
    rng = np.random.default_rng(0)
    pick = random.Random(0)
    checked = 0
    for func in funcs:
        inputs = [rng.standard_normal([int(d) for d in p.shape]).astype("float32")
                  for p in func.params[:-1]]
        expected = run_kernel(rule().apply(func, target, False).mod, target, inputs)
        for space in design_spaces(func, target):
            trace = with_decisions(space.trace.simplified(remove_postproc=True),
                                   lambda inst: pick.randrange(len(inst.attrs[0])))
            got = run_kernel(replay(func, trace).mod, target, inputs)
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
            checked += 1
    assert checked >= 4


def test_mutator_moves_exactly_one_decision_to_another_candidate():
    funcs, target = kernels(conv_pair(), "x86-avx2")
    trace = design_spaces(funcs[0], target)[0].trace.simplified(remove_postproc=True)
    mutator = MutateDecision(seed=3)

    def decisions(t: s_tir.Trace) -> list[int]:
        return [int(t.get_decision(inst)) for inst in t.insts if t.get_decision(inst) is not None]

    before = decisions(trace)
    for _ in range(10):
        mutated = mutator.apply(trace)
        after = decisions(mutated)
        assert len(after) == len(before)
        assert sum(a != b for a, b in zip(before, after)) == 1
        replay(funcs[0], mutated)  # a valid point of the space


def test_kernels_without_a_tunable_rule_have_no_kiln_space():  # strided pooling, softmax
    pool = model([helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
                  helper.make_node("Softmax", ["p"], ["y"], axis=-1)],
                 [("x", [1, 16, 8, 8])], [("y", None)])
    preset = resolve("x86-avx2", None, "fp32")
    imported = import_onnx(pool, {}, preset.tvm_target(), {})
    with tvm.transform.PassContext(opt_level=3):
        mod = tuning_input_pipeline(preset, "fp32", None)(imported.mod)
    target = tuning_target(preset, 2)
    funcs = [t.dispatched[0]["main"] for t in ms.relax_integration.extract_tasks(mod, target)]
    assert funcs and all(design_spaces(f, target) == [] for f in funcs)
    assert SPACE_ANNOTATION == "kiln.space"


def int8_kernels(preset_name: str) -> tuple[list[tvm.tirx.PrimFunc], tvm.target.Target]:
    """Int8Tensorized's tuning tasks for a 3x3 conv, a 1x1 conv and a matmul, as the quantizer emits them."""
    from schedules.intrinsics import import_tensor_intrinsics
    from tests.test_int8_kernels import conv_model, matmul_model

    import_tensor_intrinsics()
    preset = resolve(preset_name, None, "int8")
    target = tuning_target(preset, 2)
    funcs = []
    for mod, _ in (conv_model(c=16, f=32, size=14), conv_model(c=32, f=64, size=7, k=1, pad=0),
                   matmul_model(16, 128, 64, None)):
        with tvm.transform.PassContext(opt_level=3):
            lowered = tuning_input_pipeline(preset, "fp32", None)(mod)
        funcs += [t.dispatched[0]["main"] for t in ms.relax_integration.extract_tasks(lowered, target)
                  if isinstance(tunable_rule(t.dispatched[0]["main"], target), Int8Tensorized)]
    return funcs, target


@pytest.mark.parametrize("preset", ["x86-avx2", "x86-vnni"])
def test_int8_first_space_with_its_decisions_is_the_default_schedule(preset):
    funcs, target = int8_kernels(preset)
    assert len(funcs) == 3
    for func in funcs:
        spaces = design_spaces(func, target)
        assert len(spaces) == 2  # the row blocks inside or in the parallel loop
        trace = spaces[0].trace.simplified(remove_postproc=True)
        assert len(trace.decisions) >= 1  # the tile's channel blocks, its rows
        default = Int8Tensorized().apply(func, target, False)
        tvm.ir.assert_structural_equal(replay(func, trace).mod, default.mod)
        assert space_of(default.mod["main"]) == "Int8Tensorized"  # kiln inspect: tuned:Int8Tensorized
        other = with_decisions(trace, lambda inst: (int(trace.decisions[inst]) + 1) % len(inst.attrs[0]))
        assert not tvm_ffi.structural_equal(replay(func, other).mod, spaces[0].mod)


@pytest.mark.skipif("avx2" not in cpu_flags(), reason="this CPU has no AVX2")
def test_int8_sampled_points_of_every_space_are_exact():
    funcs, target = int8_kernels("x86-avx2")
    rng = np.random.default_rng(0)
    pick = random.Random(0)
    checked = 0
    for func in funcs:
        inputs = [rng.integers(0 if str(p.dtype) == "uint8" else -64, 64, [int(d) for d in p.shape]).astype(str(p.dtype))
                  for p in func.params[:-1]]
        expected = run_kernel(Int8Tensorized().apply(func, target, False).mod, target, inputs)
        for space in design_spaces(func, target):
            for _ in range(2):
                trace = with_decisions(space.trace.simplified(remove_postproc=True),
                                       lambda inst: pick.randrange(len(inst.attrs[0])))
                np.testing.assert_array_equal(run_kernel(replay(func, trace).mod, target, inputs), expected)
                checked += 1
    assert checked == 12
