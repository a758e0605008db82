"""PowerAsRoots: constant powers become square roots and products (Before/Expected), same values."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from onnx import TensorProto, helper
from tvm import relax

from compiler.build import compile_model
from compiler.passes.power_as_roots import power_as_roots
from compiler.reference import OnnxRuntimeReference, compare_outputs
from compiler.runtime import load
from tests.pass_checks import assert_rewrites


def _module(body, dtype: str = "float32", shape=(2, 8)) -> tvm.IRModule:
    x = relax.Var("x", relax.TensorType(shape, dtype))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(body(x))
        bb.emit_func_output(y)
    return bb.get()


@pytest.mark.parametrize("exponent, expected", [
    (0.75, lambda x: relax.op.multiply(relax.op.sqrt(x), relax.op.sqrt(relax.op.sqrt(x)))),
    (0.5, relax.op.sqrt),
    (2.0, lambda x: relax.op.multiply(x, x)),
])
def test_constant_powers_become_roots_and_products(exponent, expected):
    before = _module(lambda x: relax.op.power(x, relax.const(exponent, "float32")))
    assert_rewrites(power_as_roots, before, _module(expected))


@pytest.mark.parametrize("body", [
    lambda x: relax.op.power(x, relax.const(0.3, "float32")),  # no root form
    lambda x: relax.op.power(x, x),  # not a constant
])
def test_other_powers_stay(body):
    before = _module(body)
    tvm.ir.assert_structural_equal(power_as_roots(before), before)


def test_a_broadcasting_exponent_stays():
    before = _module(lambda x: relax.op.power(x, relax.const(np.float32([0.5]))), shape=())
    tvm.ir.assert_structural_equal(power_as_roots(before), before)


def test_local_response_normalization_matches_onnxruntime(tmp_path):
    """LRN (beta 0.75, Inception v1's) and x ** 1.5 on values including zeros and negatives."""
    nodes = [helper.make_node("LRN", ["x"], ["l"], size=5, alpha=1e-4, beta=0.75, bias=1.0),
             helper.make_node("Abs", ["x"], ["a"]), helper.make_node("Pow", ["a", "p"], ["q"]),
             helper.make_node("Add", ["l", "q"], ["y"])]
    graph = helper.make_graph(nodes, "lrn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 7, 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 7, 7])],
                              [helper.make_tensor("p", TensorProto.FLOAT, [], [1.5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    compile_model(model, tmp_path / "m.so", target="host")
    m = load(tmp_path / "m.so", threads=2)
    x = (np.random.default_rng(0).standard_normal((1, 16, 7, 7)) * 30).astype(np.float32)
    x[0, 0, 0, :3] = [0.0, 0.0, -0.0]  # (an inf: ONNX Runtime's running window sum gives NaN two channels away)
    comparison = compare_outputs(m.run(x), OnnxRuntimeReference(model, 2).run({"x": x}))
    assert comparison.ok and comparison.max_rel < 1e-6, comparison
