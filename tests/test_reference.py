"""The comparison with ONNX Runtime that correctness checks rely on: it must see NaN, shapes and names."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from compiler.build import compile_model
from compiler.reference import compare_outputs, max_abs_diff

X = np.float32([[1.0, -2.0, 3.0]])


def test_close_outputs_report_their_differences():
    result = compare_outputs({"y": X + 1e-3}, {"y": X})
    assert result.ok and result.max_abs == pytest.approx(1e-3, rel=1e-3)
    assert result.max_rel == pytest.approx(1e-3 / 3, rel=1e-3)


@pytest.mark.parametrize("ours, problem", [
    ({"y": np.full_like(X, np.nan)}, "NaN/inf on one side only"),
    ({"y": np.float32([[1.0, np.nan, 3.0]])}, r"1 value\(s\)"),
    ({"y": np.float32([[1.0, np.inf, 3.0]])}, "NaN/inf"),
    ({"y": X.reshape(3)}, r"shape \[3\], the reference \[1, 3\]"),
    ({"y": X.reshape(3, 1)}, "shape"),
    ({}, "'y' is missing"),
    ({"y": X, "z": X}, "'z' that the reference does not"),
])
def test_broken_outputs_never_pass_a_tolerance(ours, problem):
    result = compare_outputs(ours, {"y": X})
    assert not result.ok and any(re.search(problem, p) for p in result.problems), result.problems
    diff, rel = max_abs_diff(ours, {"y": X})
    assert math.isinf(diff) and math.isinf(rel) and not rel <= 1e9


def test_non_finite_values_on_both_sides_agree():
    ref = np.float32([[np.nan, np.inf, -np.inf, 2.0]])
    assert compare_outputs({"y": ref.copy()}, {"y": ref}).ok
    assert not compare_outputs({"y": np.float32([[np.nan, -np.inf, -np.inf, 2.0]])}, {"y": ref}).ok


def _model(body: str, shape_out: list[int]) -> onnx.ModelProto:
    """x: float[1, 4] → y, where y is ``body`` ("sqrt_shifted": sqrt(x - 10); "identity"; "flat": reshape to [4])."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape_out)
    inits = [helper.make_tensor("ten", TensorProto.FLOAT, [], [10.0]),
             helper.make_tensor("flat_shape", TensorProto.INT64, [1], [4])]
    nodes = {
        "sqrt_shifted": [helper.make_node("Sub", ["x", "ten"], ["t"]), helper.make_node("Sqrt", ["t"], ["y"])],
        "identity": [helper.make_node("Relu", ["x"], ["t"]), helper.make_node("Neg", ["t"], ["y"])],
        "flat": [helper.make_node("Relu", ["x"], ["t"]), helper.make_node("Neg", ["t"], ["u"]),
                 helper.make_node("Reshape", ["u", "flat_shape"], ["y"])],
    }[body]
    graph = helper.make_graph(nodes, body, [x], [y], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run_against(tmp_path, library_body: str, library_shape, reference_body: str, reference_shape):
    lib, ref = tmp_path / "lib.so", tmp_path / "ref.onnx"
    compile_model(_model(library_body, library_shape), lib, target="host")
    onnx.save(_model(reference_body, reference_shape), ref)
    return subprocess.run([sys.executable, "-m", "compiler", "run", str(lib), "--reference", str(ref)],
                          capture_output=True, text=True, timeout=300)


def test_kiln_run_reference_fails_on_a_library_that_outputs_nan(tmp_path):
    done = _run_against(tmp_path, "sqrt_shifted", [1, 4], "identity", [1, 4])
    assert done.returncode == 1, done.stdout + done.stderr
    assert "onnxruntime MISMATCH: output 'y' has 4 value(s) that are NaN/inf on one side only" in done.stdout
    assert "agreement" not in done.stdout


def test_kiln_run_reference_fails_on_a_library_with_the_wrong_shape(tmp_path):
    done = _run_against(tmp_path, "flat", [4], "identity", [1, 4])
    assert done.returncode == 1, done.stdout + done.stderr
    assert "onnxruntime MISMATCH: output 'y' has shape [4], the reference [1, 4]" in done.stdout


def test_kiln_run_reference_passes_on_the_same_model(tmp_path):
    done = _run_against(tmp_path, "identity", [1, 4], "identity", [1, 4])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "onnxruntime agreement: max abs diff 0 " in done.stdout
