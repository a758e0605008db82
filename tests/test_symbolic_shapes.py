"""Variable-length inputs: one library for a range of sizes (symbolic batch and width),
run at three sizes against ONNX Runtime, the range checked at run time, shown in the metadata."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from compiler.build import compile_model
from targets.errors import InputError, KilnError
from compiler.examples import example_model
from compiler.frontend import parse_input_shapes
from compiler.inspect import inspect_path
from compiler.reference import OnnxRuntimeReference, max_abs_diff
from compiler.runtime import load


def _dynamic_tiny(axes: tuple[int, ...]) -> onnx.ModelProto:
    model = example_model("tiny")
    for axis in axes:
        dim = model.graph.input[0].type.tensor_type.shape.dim[axis]
        dim.Clear()
        dim.dim_param = f"d{axis}"
    for dim in model.graph.output[0].type.tensor_type.shape.dim:
        dim.Clear()
    return model


@pytest.mark.parametrize("dims, axis, sizes", [("?x3x32x32", 0, [1, 3, 8]), ("1x3x32x16..96", 3, [16, 41, 96])],
                         ids=["batch", "width"])
def test_symbolic_axis_runs_at_three_sizes(dims, axis, sizes, tmp_path):
    model = _dynamic_tiny((axis,))
    compile_model(model, tmp_path / "m.so", target="host", input_shapes=parse_input_shapes([f"data:{dims}"]))
    lib, ref = load(tmp_path / "m.so", threads=2), OnnxRuntimeReference(model, 2)
    schedules = lib.metadata.extra["kernel_schedules"]
    assert any("(replayed)" in v for v in schedules.values()), schedules  # not left to naive loops
    for size in sizes:
        shape = [1, 3, 32, 32]
        shape[axis] = size
        x = {"data": np.random.default_rng(size).standard_normal(shape).astype(np.float32)}
        ours = lib.run(x)
        assert ours["prob"].shape == (shape[0], 10)
        assert max_abs_diff(ours, ref.run(x))[1] <= 1e-5


def test_range_is_checked_and_shown(tmp_path):
    compile_model(_dynamic_tiny((3,)), tmp_path / "m.so", target="host",
                  input_shapes=parse_input_shapes(["data:1x3x32x16..96"]))
    lib = load(tmp_path / "m.so", threads=1)
    assert lib.inputs[0].describe() == "data: float32[1x3x32x(16..96)]"
    with pytest.raises(InputError, match=r"expected 1x3x32x\(16\.\.96\) \(axis 3 is 200; this library accepts 16\.\.96"):
        lib.run({"data": np.zeros((1, 3, 32, 200), np.float32)})
    with pytest.raises(InputError, match=r"axis 2 is 31, expected 32"):
        lib.run({"data": np.zeros((1, 3, 31, 40), np.float32)})
    assert "data: float32[1x3x32x(16..96)]" in inspect_path(tmp_path / "m.so")["inputs"]


@pytest.mark.parametrize("spec, message", [("x:1x3x0..4", "1 <= LOW <= HIGH"), ("x:1x3x9..4", "1 <= LOW <= HIGH"),
                                           ("x:1x3x?..4", "NAME:DxDxD")])
def test_malformed_ranges_are_refused(spec, message):
    with pytest.raises(InputError, match=message):
        parse_input_shapes([spec])


def test_symbolic_sizes_with_int8_are_refused_clearly(tmp_path):
    from compiler.quantization import Int8Options

    with pytest.raises(KilnError, match="float32 CPU builds"):
        compile_model(_dynamic_tiny((0,)), tmp_path / "m.so", target="host", precision="int8",
                      input_shapes=parse_input_shapes(["data:?x3x32x32"]),
                      int8=Int8Options(calibration=np.zeros((2, 1, 3, 32, 32), np.float32)))


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_recurrent_model_with_a_symbolic_sequence_length(cell, tmp_path):
    """One library for 4..64 steps: the recurrence loops to the run-time length."""
    from compiler.examples import recurrent_stack

    model = recurrent_stack(cell, layers=2, input_size=12, hidden=32, steps=20)
    for vi in (model.graph.input[0], model.graph.output[0]):
        dim = vi.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = "T"
    compile_model(model, tmp_path / "m.so", target="host", input_shapes=parse_input_shapes(["features:4..64x1x12"]))
    lib, ref = load(tmp_path / "m.so", threads=2), OnnxRuntimeReference(model, 2)
    for steps in (4, 23, 64):
        x = {"features": np.random.default_rng(steps).standard_normal((steps, 1, 12)).astype(np.float32)}
        ours = lib.run(x)
        assert ours["logits"].shape == (steps, 1, 40)
        assert max_abs_diff(ours, ref.run(x))[1] <= 1e-5


def test_a_model_that_declares_batch_1_compiles_for_a_batch_range(tmp_path):
    """tiny declares its output as [1, 10]: those declared shapes are re-inferred for the new batch."""
    model = example_model("tiny")
    compile_model(model, tmp_path / "m.so", target="host", input_shapes=parse_input_shapes(["data:1..8x3x32x32"]))
    m = load(tmp_path / "m.so", threads=2)
    assert m.outputs[0].shape == (-1, 10)
    x = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    ours = m.run(x)["prob"]
    one_by_one = np.concatenate([OnnxRuntimeReference(model, 2).run({"data": x[i:i + 1]})["prob"] for i in range(5)])
    assert ours.shape == (5, 10) and np.abs(ours - one_by_one).max() <= 1e-5


def test_stride_two_stem_replays_its_column_planes_on_a_symbolic_width(tmp_path):
    """The stride-2 stem's static twin reads its input as even and odd column planes
    (``schedules.rules.stem_conv``); replayed on a symbolic width, the layout change pads the odd
    widths' last plane, so the stem stays scheduled and is right at odd and even widths."""
    from tests.test_default_schedules import stem

    model = stem(size=64, pad=1)
    model.graph.input[0].type.tensor_type.shape.dim[3].dim_param = "W"
    compile_model(model, tmp_path / "m.so", target="host", input_shapes=parse_input_shapes(["x:1x3x64x32..96"]))
    lib, ref = load(tmp_path / "m.so", threads=2), OnnxRuntimeReference(model, 2)
    schedules = lib.metadata.extra["kernel_schedules"]
    assert any(v == "default:StemConv (replayed)" for v in schedules.values()), schedules
    for width in (33, 64, 95):
        x = {"x": np.random.default_rng(width).standard_normal((1, 3, 64, width)).astype(np.float32)}
        assert max_abs_diff(lib.run(x), ref.run(x))[1] <= 1e-5
