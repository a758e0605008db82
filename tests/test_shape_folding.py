"""Shape arithmetic folded once input shapes are static (compiler/shape_folding.py): fast checks."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler.build import compile_model
from targets.errors import InputError
from compiler.frontend import import_onnx
from compiler.reference import OnnxRuntimeReference, max_abs_diff
from compiler.runtime import load
from compiler.shape_folding import MAX_FOLDED_ELEMENTS, fold_shape_arithmetic, freeze_input_shapes

TOLERANCE = 1e-4  # max abs error relative to the output scale, as in test_correctness.py


def _const(name: str, value, dtype=np.int64) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, dtype), name)


def _shape_chain_model(batch: int | str = 2) -> onnx.ModelProto:
    """x [batch, 3, 4, 5]; two run-time Reshape targets as PyTorch / Paddle2ONNX export them:

    - ``flat = Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), [-1])) @ w``  -> [batch, 4]
    - ``rows = Reshape(Relu(x), Concat(Cast(Slice(Cast(Shape(x), f32), 0:2), i64), [-1]))`` -> [batch, 3, 20]
    """
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus_one"], ["flat_target"], axis=0),
        helper.make_node("Reshape", ["x", "flat_target"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["y"]),
        helper.make_node("Cast", ["shape"], ["shape_f"], to=TensorProto.FLOAT),
        helper.make_node("Slice", ["shape_f", "starts", "ends", "axes0"], ["lead_f"]),
        helper.make_node("Cast", ["lead_f"], ["lead"], to=TensorProto.INT64),
        helper.make_node("Concat", ["lead", "minus_one"], ["rows_target"], axis=0),
        helper.make_node("Relu", ["x"], ["rx"]),
        helper.make_node("Reshape", ["rx", "rows_target"], ["rows"]),
    ]
    w = np.random.default_rng(1).standard_normal((60, 4)).astype(np.float32)
    inits = [_const("zero", 0), _const("axes0", [0]), _const("minus_one", [-1]), _const("starts", [0]),
             _const("ends", [2]), numpy_helper.from_array(w, "w")]
    graph = helper.make_graph(
        nodes, "shape_chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 4, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4]),
         helper.make_tensor_value_info("rows", TensorProto.FLOAT, [batch, 3, 20])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _compile_and_compare(model: onnx.ModelProto, tmp_path: Path, **options) -> float:
    lib = tmp_path / "m.so"
    compile_model(model, lib, target="host", **options)
    m = load(lib, threads=1)
    inputs = m.random_inputs(seed=3)
    ours = m.run(inputs)
    ref = OnnxRuntimeReference(model, 1).run(inputs)  # the original, unfolded model
    assert list(ours) == list(ref)
    return max_abs_diff(ours, ref)[1]


def test_static_shape_chain_imports_and_matches_onnxruntime(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="compiler.shape_folding"):
        imported = import_onnx(_shape_chain_model())
    ops = {n.op_type for n in imported.onnx_model.graph.node}
    assert not ops & {"Shape", "Gather", "Slice", "Concat", "Cast"}, ops
    assert [o.shape for o in imported.outputs] == [(2, 4), (2, 3, 20)]
    assert "folded 8 shape-arithmetic nodes" in caplog.text
    assert _compile_and_compare(_shape_chain_model(), tmp_path) <= TOLERANCE


def test_dynamic_batch_needs_input_shape_then_works(tmp_path):
    model = _shape_chain_model("N")
    with pytest.raises(InputError, match="--input-shape x:1x3x4x5"):
        import_onnx(model)
    imported = import_onnx(model, {"x": (3, 3, 4, 5)})
    assert [o.shape for o in imported.outputs] == [(3, 4), (3, 3, 20)]
    assert _compile_and_compare(model, tmp_path, input_shapes={"x": (3, 3, 4, 5)}) <= TOLERANCE


def test_models_without_shape_nodes_are_returned_untouched():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2])
    graph = helper.make_graph([helper.make_node("Transpose", ["c"], ["t"]), helper.make_node("Add", ["x", "t"], ["y"])],
                              "plain", [x], [y], [_const("c", np.ones((3, 2)), np.float32)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    assert fold_shape_arithmetic(model) is model  # constant-only Transpose left for TVM


def test_weights_qdq_and_subgraph_reads_are_kept():
    """Weight-sized constant math and DequantizeLinear stay; a value read only inside If stays
    (an If on a run-time input: one on a constant would fold to its branch)."""
    big = int(np.sqrt(MAX_FOLDED_ELEMENTS)) + 1
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Reshape", ["x", "s"], ["x2"]),
        helper.make_node("Transpose", ["w"], ["wt"]),  # big x big > MAX_FOLDED_ELEMENTS
        helper.make_node("DequantizeLinear", ["b_q", "b_scale"], ["b"]),
        helper.make_node("MatMul", ["x2", "wt"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["mb"]),
        helper.make_node("Relu", ["mb"], ["r"]),  # read only by the If branches
        helper.make_node("If", ["cond"], ["out"],
                         then_branch=helper.make_graph([helper.make_node("Identity", ["r"], ["o1"])], "then", [],
                                                       [helper.make_tensor_value_info("o1", TensorProto.FLOAT, None)]),
                         else_branch=helper.make_graph([helper.make_node("Neg", ["r"], ["o2"])], "else", [],
                                                       [helper.make_tensor_value_info("o2", TensorProto.FLOAT, None)])),
    ]
    inits = [_const("w", np.ones((big, big)), np.float32), _const("b_q", np.ones(big), np.int8),
             _const("b_scale", 0.5, np.float32)]
    graph = helper.make_graph(nodes, "kept", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, big]),
                                              helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, big])], inits)
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    folded = fold_shape_arithmetic(model)
    ops = [n.op_type for n in folded.graph.node]
    assert ops == ["Constant", "Reshape", "Transpose", "DequantizeLinear", "MatMul", "Add", "Relu", "If"]
    x = np.random.default_rng(0).standard_normal((2, big)).astype(np.float32)
    for cond in (True, False):
        feed = {"x": x, "cond": np.array(cond)}
        want = OnnxRuntimeReference(model, 1).run(feed)["out"]
        assert np.array_equal(OnnxRuntimeReference(folded, 1).run(feed)["out"], want)


def test_freeze_input_shapes_checks_names_and_ranks():
    model = _shape_chain_model("N")
    frozen = freeze_input_shapes(model, {"x": (2, 3, 4, 5)})
    assert "Shape" not in {n.op_type for n in frozen.graph.node}
    with pytest.raises(InputError, match="rank 4"):
        freeze_input_shapes(model, {"x": (2, 3)})
    with pytest.raises(InputError, match="not in the model"):
        freeze_input_shapes(model, {"data": (2, 3, 4, 5)})


def test_ppocr_classifier_imports_with_a_fixed_shape():
    rapidocr = pytest.importorskip("rapidocr_onnxruntime")
    path = Path(rapidocr.__file__).parent / "models" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    if not path.exists():
        pytest.skip(f"{path} is not in this rapidocr_onnxruntime install")
    imported = import_onnx(path, {"x": (1, 3, 48, 192)})
    assert [(s.shape, s.dtype) for s in imported.inputs] == [((1, 3, 48, 192), "float32")]
    assert [(s.shape, s.dtype) for s in imported.outputs] == [((1, 2), "float32")]
    assert "Shape" not in {n.op_type for n in imported.onnx_model.graph.node}
