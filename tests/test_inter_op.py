"""Inter-op parallelism: a library's independent branches run side by side on split threads."""

from __future__ import annotations

import threading

import numpy as np
import onnx
import pytest
from onnx import helper

from compiler.build import compile_model
from compiler.passes.split_parallel_branches import plan_stages
from compiler.reference import OnnxRuntimeReference
from compiler.runtime import load
from targets.errors import InputError
from targets.library_format import StagePlan, read_metadata
from tests.onnx_graphs import const, conv, model
from tests.test_cli import kiln


def _conv(x: str, w: str, y: str, k: int) -> list:
    return [helper.make_node("Conv", [x, w, w + "_b"], [y + "_c"], pads=[k // 2] * 4),
            helper.make_node("Relu", [y + "_c"], [y])]


def branchy() -> onnx.ModelProto:
    """An Inception module (four branches into one concatenation), then a residual block whose
    projection is a branch of its own; a second output from the stem."""
    rng = np.random.default_rng(7)
    shapes = {"stem": (32, 16, 3), "b1": (16, 32, 1), "b2a": (16, 32, 1), "b2": (24, 16, 3), "b3": (8, 32, 1),
              "b4": (16, 32, 3), "ra": (32, 64, 1), "rb": (32, 32, 3), "proj": (32, 64, 1)}
    inits = []
    for name, (o, i, k) in shapes.items():
        inits += [const(f"w_{name}", o, i, k, k, low=-0.3, high=0.3, rng=rng), const(f"w_{name}_b", o, rng=rng)]
    nodes = [
        *_conv("x", "w_stem", "stem", 3),
        helper.make_node("GlobalAveragePool", ["stem"], ["pooled"]),
        *_conv("stem", "w_b1", "b1", 1),
        *_conv("stem", "w_b2a", "b2a", 1), *_conv("b2a", "w_b2", "b2", 3),
        helper.make_node("MaxPool", ["stem"], ["pool"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        *_conv("pool", "w_b3", "b3", 1),
        *_conv("stem", "w_b4", "b4", 3),
        helper.make_node("Concat", ["b1", "b2", "b3", "b4"], ["cat"], axis=1),
        *_conv("cat", "w_ra", "ra", 1), *_conv("ra", "w_rb", "rb", 3),
        *_conv("cat", "w_proj", "proj", 1),
        helper.make_node("Add", ["rb", "proj"], ["y"]),
    ]
    return model(nodes, [("x", [1, 16, 20, 20])], [("y", None), ("pooled", None)], inits)


@pytest.fixture(scope="module")
def libs(tmp_path_factory):
    """The branchy model built with --inter-op on and auto (host target), and its ONNX file."""
    d = tmp_path_factory.mktemp("inter_op")
    onnx.save(branchy(), d / "branchy.onnx")
    built = {}
    for mode in ("on", "auto"):
        built[mode] = d / f"branchy_{mode}.so"
        compile_model(d / "branchy.onnx", built[mode], target="host", inter_op=mode)
    built["onnx"] = d / "branchy.onnx"
    return built


def test_the_plan_splits_the_inception_module_and_the_residual_block(libs):
    plan = StagePlan.from_dict(read_metadata(libs["on"]).extra["inter_op"]["plan"])
    assert len(plan.regions) == 2
    inception, residual = plan.regions
    assert len(inception.functions) == 2 and len(residual.functions) == 2
    # the concatenation's writers landed in both groups: they write into one buffer allocated before
    bufs = {name for names in inception.inputs for name in names if name.startswith("buf")}
    assert len(bufs) == 1 and all(bufs <= set(names) for names in inception.inputs)
    assert plan.inputs == ["x"] and len(plan.outputs) == 2


def test_side_by_side_gives_exactly_what_main_gives(libs):
    main = load(libs["on"], threads=2, inter_op=False)
    staged = load(libs["on"], threads=2)  # --inter-op on: every region side by side
    assert main.branches is None and staged.branches is not None
    assert staged.branches.side_by_side == {0, 1}
    assert {"kiln-inter-op-0", "kiln-inter-op-1"} <= {t.name for t in threading.enumerate()}
    for seed in range(3):
        x = main.random_inputs(seed=seed)
        expected = main.run(x)
        got = staged.run(x)
        assert list(got) == ["y", "pooled"]
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name])
    reference = OnnxRuntimeReference(libs["onnx"], threads=1).run(x)
    np.testing.assert_allclose(got["y"], reference["y"], rtol=1e-4, atol=1e-4)


def test_auto_times_every_region_and_keeps_only_the_faster(libs):
    info = read_metadata(libs["auto"]).extra["inter_op"]
    measured = info["measured"]
    assert [r["region"] for r in measured["regions"]] == [0, 1]
    for r in measured["regions"]:
        assert r["after_ms"] > 0 and r["side_by_side_ms"] > 0
        assert r["kept"] == (r["side_by_side_ms"] < r["after_ms"] * 0.97)
    assert set(info["side_by_side"]) <= {r["region"] for r in measured["regions"] if r["kept"]}
    model = load(libs["auto"], threads=2)
    assert (model.branches is None) == (not info["side_by_side"])
    out = kiln("inspect", str(libs["auto"])).stdout
    assert "inter_op:" in out and "regions of independent branches" in out and "region 1:" in out


def test_branches_straight_from_the_input_get_their_buffer_from_a_stage_of_its_own(tmp_path):
    rng = np.random.default_rng(3)
    nodes = [*_conv("x", "w_a", "a", 3), *_conv("x", "w_b", "b", 1),
             helper.make_node("Concat", ["a", "b"], ["y"], axis=1)]
    inits = [const("w_a", 16, 8, 3, 3, rng=rng), const("w_a_b", 16, rng=rng),
             const("w_b", 16, 8, 1, 1, rng=rng), const("w_b_b", 16, rng=rng)]
    onnx.save(model(nodes, [("x", [1, 8, 12, 12])], [("y", None)], inits), tmp_path / "fork.onnx")
    compile_model(tmp_path / "fork.onnx", tmp_path / "fork.so", target="host", inter_op="on")
    plan = StagePlan.from_dict(read_metadata(tmp_path / "fork.so").extra["inter_op"]["plan"])
    first, region = plan.stages[:2]
    assert first.inputs == [[]] and first.outputs[0][0].startswith("buf")  # allocates, computes nothing
    assert region.region == 0 and all(first.outputs[0][0] in names for names in region.inputs)
    x = {"x": np.random.default_rng(0).standard_normal((1, 8, 12, 12)).astype(np.float32)}
    np.testing.assert_array_equal(load(tmp_path / "fork.so", threads=2).run(x)["y"],
                                  load(tmp_path / "fork.so", threads=2, inter_op=False).run(x)["y"])


def test_one_thread_runs_main_and_forcing_side_by_side_needs_two(libs):
    one = load(libs["on"], threads=1)
    assert one.branches is None
    with pytest.raises(InputError, match="at least 2 threads"):
        load(libs["on"], threads=1, inter_op=True)
    with pytest.raises(InputError, match="streams and inter-op"):
        load(libs["on"], threads=2, streams=2, inter_op=True)


def test_a_chain_has_no_branches_and_main_alone_runs(tmp_path):
    onnx.save(conv(), tmp_path / "conv.onnx")
    out = kiln("compile", str(tmp_path / "conv.onnx"), "-o", str(tmp_path / "conv.so"), "--inter-op", "on").stdout
    assert "no independent branches found" in out
    assert load(tmp_path / "conv.so", threads=2).branches is None
    with pytest.raises(InputError, match="no independent branches"):
        load(tmp_path / "conv.so", threads=2, inter_op=True)


def test_auto_needs_this_machine_and_modes_are_checked(tmp_path):
    onnx.save(conv(), tmp_path / "conv.onnx")
    with pytest.raises(InputError, match="needs --target host"):
        compile_model(tmp_path / "conv.onnx", tmp_path / "x.so", target="x86-avx512", inter_op="auto")
    with pytest.raises(InputError, match="not one of off, on, auto"):
        compile_model(tmp_path / "conv.onnx", tmp_path / "x.so", target="host", inter_op="sometimes")
    with pytest.raises(InputError, match="CPU threads"):
        compile_model(tmp_path / "conv.onnx", tmp_path / "x.so", target="cuda-sm80", inter_op="on")


def test_without_a_region_the_module_is_left_alone():
    import tvm
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4,), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.add(x, x))
            z = bb.emit_output(relax.op.multiply(y, y))
        bb.emit_func_output(z)
    chain = bb.get()
    mod, plan = plan_stages(chain, {})
    assert plan is None and mod.same_as(chain)


def test_a_real_speech_model_runs_its_branches_side_by_side(tmp_path):
    """silero-vad (If on the sample rate, LSTM) from its PyPI wheel: same outputs either way."""
    from compiler.real_models import REAL_MODELS, real_model_path, sample_inputs
    from targets.errors import KilnError

    spec = REAL_MODELS["silero_vad"]
    try:
        path = real_model_path("silero_vad")
    except KilnError as err:
        pytest.skip(str(err))
    compile_model(path, tmp_path / "vad.so", target="host", input_shapes=spec.input_shapes,
                  input_values=spec.input_values, inter_op="on")
    staged = load(tmp_path / "vad.so", threads=2)
    assert staged.branches is not None and len(staged.branches.plan.regions) >= 1
    main = load(tmp_path / "vad.so", threads=2, inter_op=False)
    for seed in range(2):
        x = sample_inputs(spec, main.inputs, seed=seed)
        expected, got = main.run(x), staged.run(x)
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name])
