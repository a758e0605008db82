"""Small ONNX models with ``If``: decided by data, by a shape, by a fixed input, nested."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _branch(name: str, op: str, operand: float, out: str, shape: list[int], more: list | None = None
            ) -> onnx.GraphProto:
    const = numpy_helper.from_array(np.array(operand, np.float32), f"{name}_c")
    nodes = [helper.make_node(op, ["x", f"{name}_c"], [out])] + (more or [])
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, shape)], [const])


def _model(nodes, inputs, inits=(), shape=(1, 8)) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "branchy", inputs,
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, list(shape))], list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="kiln-test")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def data_if() -> onnx.ModelProto:
    """``out = relu(sum(x) > 0 ? 2x : x - 1)``: the condition depends on the data."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["cond"]),
             helper.make_node("If", ["cond"], ["y"], name="data_branch",
                              then_branch=_branch("then", "Mul", 2.0, "t", [1, 8]),
                              else_branch=_branch("else", "Sub", 1.0, "e", [1, 8])),
             helper.make_node("Relu", ["y"], ["out"])]
    return _model(nodes, [x], [numpy_helper.from_array(np.array(0, np.float32), "zero")])


def shape_if(width: str | int = "W") -> onnx.ModelProto:
    """``x.shape[1] == 8 ? x * 3 : x + 5``: decided once the input shape is fixed."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "one"], ["w"], axis=0),
             helper.make_node("Equal", ["w", "eight"], ["cond"]),
             helper.make_node("If", ["cond"], ["out"], name="shape_branch",
                              then_branch=_branch("then", "Mul", 3.0, "t", [1, width]),
                              else_branch=_branch("else", "Add", 5.0, "e", [1, width]))]
    inits = [numpy_helper.from_array(np.array(1, np.int64), "one"),
             numpy_helper.from_array(np.array(8, np.int64), "eight")]
    return _model(nodes, [x], inits, shape=(1, width))


def rate_if() -> onnx.ModelProto:
    """silero-vad's shape: ``sr == 16000 ? (sr16 branch, itself an If on sum(x)) : x - 1``.

    Inputs ``x`` [1, 8] float32 and ``sr`` (int64 scalar)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    sr = helper.make_tensor_value_info("sr", TensorProto.INT64, [])
    inner = helper.make_node("If", ["inner_cond"], ["inner_y"], name="inner",
                             then_branch=_branch("in_then", "Mul", 4.0, "it", [1, 8]),
                             else_branch=_branch("in_else", "Mul", -4.0, "ie", [1, 8]))
    then_nodes = [helper.make_node("ReduceSum", ["x"], ["x_sum"], keepdims=0),
                  helper.make_node("Greater", ["x_sum", "zero"], ["inner_cond"]), inner,
                  helper.make_node("Add", ["inner_y", "x"], ["t16"])]
    then_g = helper.make_graph(then_nodes, "sr16", [], [helper.make_tensor_value_info("t16", TensorProto.FLOAT, [1, 8])],
                               [numpy_helper.from_array(np.array(0, np.float32), "zero")])
    nodes = [helper.make_node("Equal", ["sr", "sr16k"], ["is16k"]),
             helper.make_node("If", ["is16k"], ["y"], name="rate_branch", then_branch=then_g,
                              else_branch=_branch("sr8", "Sub", 1.0, "e", [1, 8])),
             helper.make_node("Tanh", ["y"], ["out"])]
    return _model(nodes, [x, sr], [numpy_helper.from_array(np.array(16000, np.int64), "sr16k")])


def counting_loop(trips: int = 5, early_exit: bool = False) -> onnx.ModelProto:
    """``Loop`` (trip count ``trips``): ``acc = acc * 0.5 + x * i`` each step, plus the scan output of
    every step's ``acc``. ``early_exit``: the body's condition depends on data."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    body_nodes = [helper.make_node("Cast", ["i"], ["i_f"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", ["x", "i_f"], ["xi"]),
                  helper.make_node("Mul", ["acc_in", "half"], ["acc_half"]),
                  helper.make_node("Add", ["acc_half", "xi"], ["acc_out"]),
                  helper.make_node("Identity", ["acc_out"], ["scan_out"])]
    if early_exit:
        body_nodes += [helper.make_node("ReduceSum", ["acc_out"], ["total"], keepdims=0),
                       helper.make_node("Less", ["total", "limit"], ["cond_out"])]
    else:
        body_nodes.append(helper.make_node("Identity", ["cond_in"], ["cond_out"]))
    body = helper.make_graph(
        body_nodes, "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("scan_out", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.array(0.5, np.float32), "half"),
         numpy_helper.from_array(np.array(100.0, np.float32), "limit")])
    nodes = [helper.make_node("Loop", ["trips", "", "zeros"], ["acc", "steps"], body=body, name="counter"),
             helper.make_node("ReduceSum", ["steps", "axis0"], ["steps_sum"], keepdims=0),
             helper.make_node("Add", ["acc", "steps_sum"], ["out"])]
    inits = [numpy_helper.from_array(np.array(trips, np.int64), "trips"),
             numpy_helper.from_array(np.zeros((1, 4), np.float32), "zeros"),
             numpy_helper.from_array(np.array([0], np.int64), "axis0")]
    return _model(nodes, [x], inits, shape=(1, 4))


def running_scan(steps: int = 6, reverse: bool = False) -> onnx.ModelProto:
    """``Scan`` over ``x`` [steps, 3] (axis 0): ``state = tanh(state + row)``, every state stacked
    along axis 1 of the output [3, steps] (scan_output_axes=[1])."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [steps, 3])
    body = helper.make_graph(
        [helper.make_node("Add", ["s_in", "row"], ["sum"]), helper.make_node("Tanh", ["sum"], ["s_out"]),
         helper.make_node("Identity", ["s_out"], ["y"])], "scan_body",
        [helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [3]),
         helper.make_tensor_value_info("row", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [3]),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])])
    nodes = [helper.make_node("Scan", ["init", "x"], ["final", "ys"], body=body, num_scan_inputs=1,
                              scan_input_directions=[1 if reverse else 0], scan_output_axes=[1], name="scanner"),
             helper.make_node("Unsqueeze", ["final", "axis1"], ["final2"]),
             helper.make_node("Add", ["ys", "final2"], ["out"])]
    inits = [numpy_helper.from_array(np.full(3, 0.1, np.float32), "init"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    return _model(nodes, [x], inits, shape=(3, steps))
