"""Small ONNX graphs built with onnx.helper, one operator family each."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(1)


def const(name: str, *shape: int, low: float = -1.0, high: float = 1.0,
          rng: np.random.Generator | None = None) -> onnx.TensorProto:
    """Uniform random weights; from the shared ``RNG`` unless ``rng`` is given (the shared one's
    draws depend on which tests ran before in the process)."""
    return numpy_helper.from_array((rng or RNG).uniform(low, high, shape).astype(np.float32), name)


def model(nodes, inputs, outputs, inits=(), opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        list(inits),
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return onnx.shape_inference.infer_shapes(m, strict_mode=True)  # fills the output shapes left as None


def conv() -> onnx.ModelProto:
    return model([helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1], strides=[2, 2])],
                 [("x", [1, 4, 9, 9])], [("y", None)], [const("w", 8, 4, 3, 3), const("b", 8)])


def depthwise_conv() -> onnx.ModelProto:
    return model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], group=8)],
                 [("x", [1, 8, 10, 10])], [("y", None)], [const("w", 8, 1, 3, 3)])


def gemm() -> onnx.ModelProto:
    return model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, alpha=0.5, beta=2.0)],
                 [("x", [3, 16])], [("y", None)], [const("w", 10, 16), const("b", 10)])


def matmul_batched() -> onnx.ModelProto:
    return model([helper.make_node("MatMul", ["a", "b"], ["y"])], [("a", [2, 5, 7]), ("b", [2, 7, 3])], [("y", None)])


def pooling() -> onnx.ModelProto:
    return model([
        helper.make_node("MaxPool", ["x"], ["m"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("AveragePool", ["m"], ["a"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["a"], ["y"]),
    ], [("x", [1, 3, 16, 16])], [("y", None)])


def concat() -> onnx.ModelProto:
    return model([
        helper.make_node("Relu", ["a"], ["ra"]),
        helper.make_node("Sigmoid", ["b"], ["sb"]),
        helper.make_node("Concat", ["ra", "sb"], ["y"], axis=1),
    ], [("a", [1, 2, 4, 4]), ("b", [1, 3, 4, 4])], [("y", None)])


def residual_add() -> onnx.ModelProto:
    return model([
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Add", ["r", "x"], ["y"]),
    ], [("x", [1, 4, 8, 8])], [("y", None)], [const("w", 4, 4, 3, 3)])


def softmax() -> onnx.ModelProto:
    return model([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], [("x", [2, 3, 50])], [("y", None)])


def batchnorm() -> onnx.ModelProto:
    return model([
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["bn"]),
        helper.make_node("BatchNormalization", ["x", "s2", "b2", "m2", "v2"], ["bx"]),
        helper.make_node("Concat", ["bn", "bx"], ["y"], axis=1),
    ], [("x", [1, 3, 6, 6])], [("y", None)], [
        const("w", 5, 3, 1, 1), const("s", 5, low=0.5, high=1.5), const("b", 5), const("m", 5),
        const("v", 5, low=0.5, high=1.5), const("s2", 3, low=0.5, high=1.5), const("b2", 3), const("m2", 3),
        const("v2", 3, low=0.5, high=1.5),
    ])


def two_outputs() -> onnx.ModelProto:
    return model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Neg", ["x"], ["n"])],
                 [("x", [2, 3])], [("r", None), ("n", None)])


ALL = {f.__name__: f for f in [conv, depthwise_conv, gemm, matmul_batched, pooling, concat, residual_add,
                               softmax, batchnorm, two_outputs]}
