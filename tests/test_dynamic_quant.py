"""Models from ONNX Runtime's ``quantize_dynamic`` (DynamicQuantizeLinear, ConvInteger,
MatMulInteger, com.microsoft ops) against ONNX Runtime on the same file."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler.build import compile_model
from compiler.examples import example_model, recurrent_stack
from compiler.reference import OnnxRuntimeReference, max_abs_diff
from compiler.runtime import load
from tests.int8_reference import ORT_INT8_EXACT, needs_exact_ort


def _quantized(model: onnx.ModelProto, tmp_path, **options) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = tmp_path / "fp32.onnx", tmp_path / "dq.onnx"
    onnx.save(model, src)
    quantize_dynamic(str(src), str(dst), weight_type=options.pop("weight_type", QuantType.QInt8), **options)
    return onnx.load(dst)


def _compare(model: onnx.ModelProto, tmp_path, inputs=None):
    compile_model(model, tmp_path / "m.so", target="host")
    lib = load(tmp_path / "m.so", threads=2)
    x = inputs if inputs is not None else lib.random_inputs(seed=0)
    return lib, lib.run(x), OnnxRuntimeReference(model, 2).run(x)


def _ops(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node}


@needs_exact_ort
@pytest.mark.parametrize("per_channel", [False, True])
def test_dynamically_quantized_cnn_equals_onnxruntime(per_channel, tmp_path):
    """ConvInteger / MatMulInteger / DynamicQuantizeLinear: integer math equal to ORT's."""
    model = _quantized(example_model("tiny"), tmp_path, per_channel=per_channel)
    assert {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"} <= _ops(model)
    lib, ours, ref = _compare(model, tmp_path)
    assert max_abs_diff(ours, ref)[1] <= 1e-5
    schedules = lib.metadata.extra["kernel_schedules"]
    assert any("conv2d" in k and v == "default:Int8Tensorized" for k, v in schedules.items()), schedules


def test_uint8_weights_with_zero_points(tmp_path):
    from onnxruntime.quantization import QuantType

    model = _quantized(example_model("tiny"), tmp_path, weight_type=QuantType.QUInt8)
    _, ours, ref = _compare(model, tmp_path)
    assert max_abs_diff(ours, ref)[1] <= 1e-5


def test_dynamic_quantize_linear_is_exact_including_a_zero_tensor(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"])], "dql",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 96])],
        [helper.make_tensor_value_info("q", TensorProto.UINT8, [64, 96]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("z", TensorProto.UINT8, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    compile_model(model, tmp_path / "m.so", target="host")
    lib, ref = load(tmp_path / "m.so", threads=2), OnnxRuntimeReference(model, 2)
    rng = np.random.default_rng(0)
    for x in (rng.normal(size=(64, 96)) * 3, np.abs(rng.normal(size=(64, 96))), np.zeros((64, 96))):
        ours, theirs = lib.run({"x": x.astype(np.float32)}), ref.run({"x": x.astype(np.float32)})
        for key in ("q", "s", "z"):
            np.testing.assert_array_equal(ours[key], theirs[key])


def _contrib_model(op: str) -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    b = numpy_helper.from_array(rng.integers(-127, 128, (48, 32)).astype(np.int8), "b")
    b_scale = numpy_helper.from_array(np.array(0.02, np.float32), "b_scale")
    bias = numpy_helper.from_array(rng.normal(size=32).astype(np.float32), "bias")
    if op == "DynamicQuantizeMatMul":
        nodes = [helper.make_node(op, ["a", "b", "b_scale", "", "bias"], ["y"], domain="com.microsoft")]
    else:
        nodes = [helper.make_node("DynamicQuantizeLinear", ["a"], ["aq", "a_scale", "a_zero"]),
                 helper.make_node(op, ["aq", "b", "a_scale", "b_scale", "a_zero", "", "bias"], ["y"],
                                  domain="com.microsoft")]
    graph = helper.make_graph(nodes, op, [helper.make_tensor_value_info("a", TensorProto.FLOAT, [10, 48])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [10, 32])], [b, b_scale, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model


@needs_exact_ort
@pytest.mark.parametrize("op", ["MatMulIntegerToFloat", "DynamicQuantizeMatMul"])
def test_onnxruntime_contrib_matmuls(op, tmp_path):
    _, ours, ref = _compare(_contrib_model(op), tmp_path)
    assert max_abs_diff(ours, ref)[1] <= 1e-5


def test_matmul_integer_to_float_is_exact_integer_math(tmp_path):
    """On every CPU: DynamicQuantizeLinear + MatMulIntegerToFloat equal the integer math done in
    float64 by numpy (uint8 activations, 8-bit int8 weights, float scales and bias)."""
    model = _contrib_model("MatMulIntegerToFloat")
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    compile_model(model, tmp_path / "m.so", target="host")
    lib = load(tmp_path / "m.so", threads=2)
    a = lib.random_inputs(seed=0)["a"]
    x = a.astype(np.float64)
    scale = (max(x.max(), 0) - min(x.min(), 0)) / 255
    zero = np.clip(np.round(-min(x.min(), 0) / scale), 0, 255)
    q = np.clip(np.round(x / scale) + zero, 0, 255)
    exact = (q - zero) @ weights["b"].astype(np.float64) * scale * float(weights["b_scale"]) + weights["bias"]
    assert np.abs(lib.run({"a": a})["y"] - exact).max() <= 1e-5 * np.abs(exact).max()


def test_dynamic_quantize_lstm_runs_with_dequantized_weights(tmp_path):
    """DynamicQuantizeLSTM: float LSTM with the int8 weights dequantized; ONNX Runtime also
    quantizes each step's activations, so they agree to that noise, and both stay close to FP32."""
    fp32 = recurrent_stack("LSTM", layers=2, input_size=16, hidden=32, steps=12)
    model = _quantized(fp32, tmp_path, op_types_to_quantize=["LSTM", "MatMul"])
    assert "DynamicQuantizeLSTM" in _ops(model)
    lib, ours, ref = _compare(model, tmp_path)
    fp32_ref = OnnxRuntimeReference(fp32, 2).run(lib.random_inputs(seed=0))
    assert max_abs_diff(ours, fp32_ref)[1] <= 0.03
    if ORT_INT8_EXACT:  # see needs_exact_ort
        assert max_abs_diff(ours, ref)[1] <= 0.03
        assert np.mean(ours["logits"].argmax(-1) == ref["logits"].argmax(-1)) >= 0.9


def test_unknown_contrib_op_is_named(tmp_path):
    from targets.errors import UnsupportedOperatorError
    from compiler.frontend import prepare_onnx

    model = _contrib_model("MatMulIntegerToFloat")
    model.graph.node[1].op_type = "QOrderedMatMul"
    with pytest.raises(UnsupportedOperatorError, match=r"com\.microsoft\.QOrderedMatMul"):
        prepare_onnx(model)


def _dequantized_float_twin(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with each DynamicQuantizeLSTM replaced by a float LSTM holding its dequantized weights."""
    twin = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {t.name: numpy_helper.to_array(t) for t in twin.graph.initializer}
    for node in twin.graph.node:
        if node.op_type != "DynamicQuantizeLSTM":
            continue
        names = list(node.input)
        for slot, (q, s, z) in ((1, (names[1], names[8], names[9])), (2, (names[2], names[10], names[11]))):
            scale = inits[s].reshape(inits[s].shape[0], 1, -1)
            value = (inits[q].astype(np.float32) - inits[z].reshape(scale.shape)) * scale
            name = f"{q}_dequantized"
            twin.graph.initializer.append(numpy_helper.from_array(value.transpose(0, 2, 1).copy(), name))
            names[slot] = name
        node.op_type, node.domain = "LSTM", ""
        node.ClearField("input")
        node.input.extend(names[:8])
    return twin


def test_dynamic_quantize_lstm_reads_int8_recurrent_weights_exactly(tmp_path):
    """The recurrence reads R as int8 (a quarter of the bytes per step) and equals a float LSTM
    with the dequantized weights: the scale moves out of the sum, nothing is rounded."""
    from compiler.frontend import import_onnx
    from tvm import tirx

    model = _quantized(recurrent_stack("LSTM", layers=2, input_size=16, hidden=32, steps=12), tmp_path,
                       op_types_to_quantize=["LSTM"])
    kernels = [f for gv, f in import_onnx(model).mod.functions_items()
               if isinstance(f, tirx.PrimFunc) and "recurrence" in gv.name_hint]
    assert kernels and all(str(k.params[1].dtype) == "int8" for k in kernels)
    lib, ours, _ = _compare(model, tmp_path)
    twin = OnnxRuntimeReference(_dequantized_float_twin(model), 2).run(lib.random_inputs(seed=0))
    assert max_abs_diff(ours, twin)[1] <= 1e-5
