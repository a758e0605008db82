"""kiln's default CPU schedules: every kernel family gets parallel + vectorized loops, numbers unchanged."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tvm
from onnx import helper
from tvm import tirx

from compiler.build import compile_model
from compiler.frontend import import_onnx
from compiler.pipeline import pipeline_steps
from compiler.reference import OnnxRuntimeReference, max_abs_diff
from compiler.runtime import load
from schedules.defaults import RULE_ATTR, ScheduleStats, default_schedule_pass, schedule_summary
from schedules.vector_spec import vector_spec
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


def softmax() -> onnx.ModelProto:
    return model([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], [("x", [16, 100])], [("y", None)])


# graph -> rule expected on its main kernel(s), by a substring of the kernel name
CASES = {
    "conv_relu": (conv_relu, {"conv2d": "ChannelVectorized"}),
    "conv_strided_residual": (conv_strided_residual, {"conv2d": "ChannelVectorized"}),
    "depthwise_grouped": (depthwise_grouped, {"conv2d": "SpatialVectorized"}),
    "dense": (dense, {"matmul": "ChannelVectorized"}),
    "batch_matmul": (batch_matmul, {"matmul": "ChannelVectorized"}),
    "pooling": (pooling, {"max_pool2d": "SpatialVectorized", "avg_pool2d": "SpatialVectorized"}),
    "softmax": (softmax, {"softmax": "ParallelFallback"}),
}


def scheduled_module(onnx_model: onnx.ModelProto, target: str = "x86-avx2") -> tuple[tvm.IRModule, ScheduleStats]:
    """Run kiln's pipeline up to and including the default-schedule step."""
    preset = resolve_target(target)
    mod = import_onnx(onnx_model, {}).mod
    stats = ScheduleStats()
    with tvm.transform.PassContext(opt_level=3), preset.tvm_target() as tgt:
        for step in pipeline_steps(preset):
            if step.name.startswith("kiln default"):
                return default_schedule_pass(tgt, stats=stats)(mod), stats
            mod = step.make()(mod)
    raise AssertionError("the CPU pipeline has no default-schedule step")


def kernels(mod: tvm.IRModule, part: str) -> list[tirx.PrimFunc]:
    return [f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc) and part in gv.name_hint]


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
            if rule != "ParallelFallback":
                assert "T.vectorized" in text


@pytest.mark.parametrize("name", sorted(CASES))
def test_scheduled_kernels_match_onnxruntime(name, tmp_path):
    onnx_model = CASES[name][0]()
    lib = tmp_path / "m.so"
    compile_model(onnx_model, lib, target="host")
    m = load(lib, threads=2)
    inputs = m.random_inputs(seed=5)
    _, rel = max_abs_diff(m.run(inputs), OnnxRuntimeReference(onnx_model, 2).run(inputs))
    assert rel <= TOLERANCE


def test_conv_vector_width_follows_target():
    """AVX-512 packs 16 output channels per vector, AVX2 8, NEON 4."""
    for target, lanes in [("x86-avx2", 8), ("x86-avx512", 16), ("arm64", 4)]:
        mod, _ = scheduled_module(conv_relu(), target)
        text = kernels(mod, "conv2d")[0].script()
        assert f"T.vectorized(T.int64({lanes}))" in text or f"T.vectorized({lanes})" in text, target


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
