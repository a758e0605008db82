"""Frontend validation: every bad model ends in one clear kiln error."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from targets.errors import InputError, ModelError, UnsupportedOperatorError
from compiler.frontend import import_onnx, parse_input_shapes, prepare_onnx
from tests.onnx_graphs import model


def test_truncated_file_is_a_model_error(tiny_onnx, tmp_path):
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(tiny_onnx.read_bytes()[:300])
    with pytest.raises(ModelError, match="truncated.onnx"):
        import_onnx(bad)


def test_non_onnx_file_is_a_model_error(tmp_path):
    bad = tmp_path / "notes.onnx"
    bad.write_text("this is not a model\n" * 10)
    with pytest.raises(ModelError):
        import_onnx(bad)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(ModelError, match="no such file"):
        import_onnx(tmp_path / "nope.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ModelError, match="empty"):
        import_onnx(tmp_path / "empty.onnx")


def test_empty_graph_is_a_model_error():
    graph = helper.make_graph([], "empty", [], [])
    with pytest.raises(ModelError, match="empty"):
        import_onnx(helper.make_model(graph))


def test_unsupported_operators_are_listed_together():
    nodes = [
        helper.make_node("FancyOp", ["x"], ["a"], domain="com.example", name="fancy_1"),
        helper.make_node("FancyOp", ["a"], ["b"], domain="com.example", name="fancy_2"),
        helper.make_node("Relu", ["b"], ["c"]),
        helper.make_node("QLinearConvLike", ["c"], ["y"], domain="com.example", name="q1"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    with pytest.raises(UnsupportedOperatorError) as err:
        import_onnx(proto)
    text = str(err.value)
    assert "com.example.FancyOp ×2" in text and "fancy_1" in text and "fancy_2" in text
    assert "com.example.QLinearConvLike ×1" in text and "q1" in text


def test_dynamic_dims_need_input_shape():
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(InputError, match=r"--input-shape x:1x3"):
        import_onnx(proto)
    imported = import_onnx(proto, {"x": (4, 3)})
    assert imported.inputs[0].shape == (4, 3)
    assert imported.outputs[0].shape == (4, 3)
    with pytest.raises(InputError, match="rank"):
        import_onnx(proto, {"x": (4, 3, 1)})
    with pytest.raises(InputError, match="model's inputs are: x"):
        import_onnx(proto, {"data": (4, 3)})


def test_parse_input_shapes():
    assert parse_input_shapes(["data:1x3x224x224", "gpu_0/data_0:2x3"]) == {
        "data": (1, 3, 224, 224), "gpu_0/data_0": (2, 3)}
    for bad in ["data", "data:1x", ":1x3", "data:ax3"]:
        with pytest.raises(InputError):
            parse_input_shapes([bad])


def test_old_opset_is_upgraded():
    old = model([helper.make_node("Relu", ["x"], ["y"])], [("x", [2, 2])], [("y", None)], opset=9)
    proto, _, _, _ = prepare_onnx(old)
    assert proto.opset_import[0].version >= 13


def test_shapes_that_do_not_fit_are_reported():
    nodes = [helper.make_node("Add", ["a", "b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]),
                                            helper.make_tensor_value_info("b", TensorProto.FLOAT, [4, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelError, match="shape"):
        import_onnx(proto)


def test_caller_model_is_not_mutated():
    original = model([helper.make_node("Relu", ["x"], ["y"])], [("x", [2, 2])], [("y", None)], opset=9)
    before = original.SerializeToString()
    import_onnx(original)
    assert original.SerializeToString() == before


def test_value_names_become_identifiers_but_specs_keep_onnx_names():
    nodes = [helper.make_node("Relu", ["gpu_0/data_0"], ["fire2/relu:0"]),
             helper.make_node("Neg", ["fire2/relu:0"], ["1out"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("gpu_0/data_0", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("1out", TensorProto.FLOAT, [2])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    imported = import_onnx(proto)
    assert [s.name for s in imported.inputs] == ["gpu_0/data_0"]
    assert [s.name for s in imported.outputs] == ["1out"]
    text = imported.mod["main"].script()
    assert "gpu_0_data_0" in text and "gpu_0/data_0" not in text


def test_fuzzed_models_end_in_kiln_errors(tmp_path):
    """A bounded slice of scripts/fuzz_frontend.py: no crash, hang or non-kiln exception."""
    import json
    import subprocess
    import sys

    out = tmp_path / "fuzz.json"
    done = subprocess.run([sys.executable, "scripts/fuzz_frontend.py", "--cases", "200", "--seed", "11",
                           "--timeout", "60", "--out", str(out)], capture_output=True, text=True, timeout=600)
    result = json.loads(out.read_text())
    assert done.returncode == 0, result["summary"]["bad_cases"]
    assert sum(row["cases"] for row in result["rows"]) == 200
    assert any(row["outcome"].startswith("kiln_error") for row in result["rows"])


def _one_node(node, inputs, outputs) -> onnx.ModelProto:
    from onnx import helper

    model = helper.make_model(helper.make_graph([node], "g", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _converter_failures() -> dict[str, onnx.ModelProto]:
    """Valid ONNX that TVM's converters refuse (they raise ValueError/AssertionError/TVMError)."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    return {
        "topk_k_input": _one_node(
            helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk_k_input"),
            [x, helper.make_tensor_value_info("k", TensorProto.INT64, [1])],
            [helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, None]),
             helper.make_tensor_value_info("i", TensorProto.INT64, [1, None])]),
        "reshape_data_shape": _one_node(
            helper.make_node("Reshape", ["x", "shp"], ["y"], name="reshape_data_shape"),
            [x, helper.make_tensor_value_info("shp", TensorProto.INT64, [2])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None])]),
    }


@pytest.mark.parametrize("name", sorted(_converter_failures()))
def test_converter_failure_names_the_node_and_its_op(name, tmp_path):
    from tests.test_cli import kiln

    model = _converter_failures()[name]
    op = model.graph.node[0].op_type
    with pytest.raises(ModelError, match=rf"node '{name}' \({op}\): "):
        import_onnx(model)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    done = kiln("compile", str(path), "-o", str(tmp_path / "m.so"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and f"node '{name}' ({op})" in done.stderr
