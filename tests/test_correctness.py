"""kiln against ONNX Runtime: small graphs per operator family, and (slow) light-zoo models."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from compiler.build import compile_model
from compiler.examples import example_model
from compiler.reference import OnnxRuntimeReference, max_abs_diff
from compiler.runtime import load
from tests import onnx_graphs

TOLERANCE = 1e-4  # max abs error relative to the output scale


def compile_and_compare(model: onnx.ModelProto, tmp_path, threads: int = 2) -> float:
    lib = tmp_path / "m.so"
    compile_model(model, lib, target="host")
    m = load(lib, threads=threads)
    inputs = m.random_inputs(seed=3)
    ours = m.run(inputs)
    ref = OnnxRuntimeReference(model, threads).run(inputs)
    assert list(ours) == list(ref), "outputs must come back under their ONNX names, in graph order"
    _, rel = max_abs_diff(ours, ref)
    return rel


@pytest.mark.parametrize("name", sorted(onnx_graphs.ALL))
def test_small_graph_matches_onnxruntime(name, tmp_path):
    assert compile_and_compare(onnx_graphs.ALL[name](), tmp_path) <= TOLERANCE


def test_tiny_example_matches_onnxruntime(tmp_path):
    assert compile_and_compare(example_model("tiny"), tmp_path) <= TOLERANCE


def test_comparison_detects_a_wrong_result(tmp_path):
    """The check above can fail: a library from another model disagrees with the reference."""
    lib = tmp_path / "relu.so"
    compile_model(onnx_graphs.two_outputs(), lib)
    m = load(lib)
    x = {"x": np.array([[1, -2, 3], [-4, 5, -6]], np.float32)}
    ours = m.run(x)
    ours["r"] = ours["r"] + 1e-2
    _, rel = max_abs_diff(ours, OnnxRuntimeReference(onnx_graphs.two_outputs(), 1).run(x))
    assert rel > TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["squeezenet", "resnet50"])
def test_light_zoo_matches_onnxruntime(arch, tmp_path):
    model = example_model(arch)
    rel = compile_and_compare(model, tmp_path)
    assert rel <= TOLERANCE
