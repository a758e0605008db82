"""Built-in example models, made offline.

The light zoo: real architectures shipped inside the ``onnx`` package
(``onnx/backend/test/data/light``) whose weights are ``ConstantOfShape`` placeholders.
``zoo_model`` replaces each placeholder with seeded random weights scaled so
activations stay in range (He-normal convolutions, sane batch-norm statistics), and
lifts the model to IR version 7 so the weights are constants, not inputs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from targets.errors import KilnError

LIGHT_ZOO_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


@dataclass(frozen=True)
class Example:
    name: str
    description: str
    make: Callable[[int], onnx.ModelProto]


def _weight_for(name: str, shape: tuple[int, ...], fill: float, consumer: tuple[str, int] | None,
                rng: np.random.Generator) -> np.ndarray:
    op, idx = consumer if consumer else ("", -1)
    if op in ("Conv", "Gemm", "MatMul") and idx == 1 and len(shape) >= 2:
        fan_in = int(np.prod(shape[1:])) if op == "Conv" else (shape[1] if op == "Gemm" else shape[0])
        return rng.normal(0.0, np.sqrt(2.0 / max(fan_in, 1)), shape).astype(np.float32)
    if op in ("Conv", "Gemm", "Add") and len(shape) <= 1:
        return rng.uniform(-0.1, 0.1, shape).astype(np.float32)
    if op == "BatchNormalization":  # 1 scale, 2 bias, 3 mean, 4 variance
        low, high = {1: (0.2, 0.5), 2: (-0.1, 0.1), 3: (-0.1, 0.1), 4: (0.5, 1.5)}.get(idx, (0.0, 0.0))
        return rng.uniform(low, high, shape).astype(np.float32)
    return np.full(shape, fill, dtype=np.float32)  # anything else keeps the zoo's own constant


def zoo_model(arch: str, seed: int = 0) -> onnx.ModelProto:
    """Light-zoo architecture ``arch`` (e.g. ``resnet50``) with seeded random weights."""
    path = os.path.join(LIGHT_ZOO_DIR, f"light_{arch}.onnx")
    if not os.path.isfile(path):
        raise KilnError(f"the installed onnx package has no light-zoo model '{arch}' ({path})")
    model = onnx.load(path)
    graph = model.graph
    rng = np.random.default_rng(seed)
    consumers: dict[str, tuple[str, int]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, (node.op_type, i))
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    new_inits: list[onnx.TensorProto] = []
    keep_nodes = []
    dropped: set[str] = set()
    for node in graph.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in inits:
            keep_nodes.append(node)
            continue
        shape = tuple(int(d) for d in inits[node.input[0]])
        value = numpy_helper.to_array(node.attribute[0].t).ravel()[0] if node.attribute else 0.0
        out = node.output[0]
        w = _weight_for(out, shape, float(value), consumers.get(out), rng)
        new_inits.append(numpy_helper.from_array(w, out))
        dropped.add(node.input[0])
    # Biases already given as initializers (e.g. SqueezeNet's) get seeded values too.
    for t in graph.initializer:
        if t.name in dropped:
            continue
        arr = inits[t.name]
        if arr.dtype == np.float32 and t.name in consumers:
            arr = _weight_for(t.name, arr.shape, float(arr.ravel()[0]) if arr.size else 0.0, consumers[t.name], rng)
        new_inits.append(numpy_helper.from_array(arr, t.name))
    init_names = {t.name for t in new_inits}
    inputs = [i for i in graph.input if i.name not in init_names and i.name not in dropped]
    new_graph = helper.make_graph(keep_nodes, arch, inputs, list(graph.output), new_inits)
    out = helper.make_model(new_graph, opset_imports=list(model.opset_import), producer_name="kiln-example")
    out.ir_version = 7
    onnx.checker.check_model(out)
    return out


def tiny_cnn(seed: int = 0) -> onnx.ModelProto:
    """A small CNN (conv+BN+ReLU, max-pool, residual add, global pool, gemm, softmax), 1×3×32×32."""
    rng = np.random.default_rng(seed)

    def w(name: str, *shape: int, std: float | None = None) -> onnx.TensorProto:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        scale = std if std is not None else np.sqrt(2.0 / fan_in)
        return numpy_helper.from_array(rng.normal(0, scale, shape).astype(np.float32), name)

    def u(name: str, n: int, low: float, high: float) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.uniform(low, high, n).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["data", "c1_w", "c1_b"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"], name="bn1"),
        helper.make_node("Relu", ["bn"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="pool1"),
        helper.make_node("Conv", ["p1", "c2_w", "c2_b"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Add", ["r2", "p1"], ["res"], name="residual"),
        helper.make_node("GlobalAveragePool", ["res"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1, name="fc"),
        helper.make_node("Softmax", ["logits"], ["prob"], axis=1, name="softmax"),
    ]
    inits = [
        w("c1_w", 16, 3, 3, 3), u("c1_b", 16, -0.1, 0.1),
        u("bn_s", 16, 0.5, 1.5), u("bn_b", 16, -0.1, 0.1), u("bn_m", 16, -0.1, 0.1), u("bn_v", 16, 0.5, 1.5),
        w("c2_w", 16, 16, 3, 3), u("c2_b", 16, -0.1, 0.1),
        w("fc_w", 10, 16), u("fc_b", 10, -0.1, 0.1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_cnn",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="kiln-example")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def recurrent_stack(cell: str = "LSTM", layers: int = 2, input_size: int = 80, hidden: int = 256,
                    steps: int = 200, batch: int = 1, bidirectional: bool = True, seed: int = 0) -> onnx.ModelProto:
    """Stacked ``LSTM``/``GRU``/``RNN`` layers as ``torch.onnx.export`` writes ``nn.LSTM``/``nn.GRU``
    (``[T, D, B, H]`` outputs transposed and reshaped to ``[T, B, D·H]`` between layers), with
    seeded weights drawn as PyTorch initializes them (uniform ±1/√hidden), and a linear
    classifier (40 classes) per step. Input ``features`` [steps, batch, input_size]."""
    rng = np.random.default_rng(seed)
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[cell]
    dirs = 2 if bidirectional else 1
    bound = 1.0 / np.sqrt(hidden)

    def uniform(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.uniform(-bound, bound, shape).astype(np.float32), name)

    nodes, inits, x, width = [], [], "features", input_size
    for layer in range(layers):
        w, r, b = f"l{layer}_W", f"l{layer}_R", f"l{layer}_B"
        inits += [uniform(w, dirs, gates * hidden, width), uniform(r, dirs, gates * hidden, hidden),
                  uniform(b, dirs, 2 * gates * hidden)]
        extra = {"linear_before_reset": 1} if cell == "GRU" else {}  # what PyTorch's GRU computes
        nodes += [
            helper.make_node(cell, [x, w, r, b], [f"l{layer}_y"], hidden_size=hidden, name=f"{cell.lower()}{layer}",
                             direction="bidirectional" if bidirectional else "forward", **extra),
            helper.make_node("Transpose", [f"l{layer}_y"], [f"l{layer}_t"], perm=[0, 2, 1, 3]),
            helper.make_node("Reshape", [f"l{layer}_t", "merge_dirs"], [f"l{layer}_out"]),
        ]
        x, width = f"l{layer}_out", dirs * hidden
    # [0, 0, D·H]: time and batch copied from the input, so the model also takes other lengths
    inits += [numpy_helper.from_array(np.array([0, 0, dirs * hidden], np.int64), "merge_dirs"),
              numpy_helper.from_array(rng.uniform(-bound, bound, (width, 40)).astype(np.float32), "fc_w"),
              numpy_helper.from_array(np.zeros(40, np.float32), "fc_b")]
    nodes += [helper.make_node("MatMul", [x, "fc_w"], ["fc"]), helper.make_node("Add", ["fc", "fc_b"], ["logits"])]
    graph = helper.make_graph(
        nodes, f"{cell.lower()}_stack",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [steps, batch, input_size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [steps, batch, 40])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="kiln-example")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _zoo(arch: str, what: str) -> Example:
    return Example(arch, f"{what} (onnx light zoo, seeded random weights, 1x3x224x224)",
                   lambda seed, a=arch: zoo_model(a, seed))


EXAMPLES: dict[str, Example] = {
    e.name: e
    for e in [
        Example("tiny", "small CNN for quick tries (conv, BN, pool, residual, gemm, softmax; 1x3x32x32)", tiny_cnn),
        Example("lstm", "speech-style 2-layer bidirectional LSTM (80 features, hidden 256, 200 steps, "
                "batch 1, 40-class output per step)", lambda seed: recurrent_stack("LSTM", seed=seed)),
        Example("gru", "the same stack with GRU layers (PyTorch's linear_before_reset)",
                lambda seed: recurrent_stack("GRU", seed=seed)),
        _zoo("squeezenet", "SqueezeNet 1.0"),
        _zoo("resnet50", "ResNet-50"),
        _zoo("densenet121", "DenseNet-121"),
        _zoo("inception_v1", "Inception v1 (GoogLeNet)"),
        _zoo("shufflenet", "ShuffleNet"),
        _zoo("inception_v2", "Inception v2"),
        _zoo("vgg19", "VGG-19"),
    ]
}

LIGHT_ZOO_BENCH = ["resnet50", "densenet121", "inception_v1", "squeezenet", "shufflenet"]


def example_model(name: str, seed: int = 0) -> onnx.ModelProto:
    """The built-in example ``name`` as an ONNX model."""
    if name not in EXAMPLES:
        raise KilnError(f"unknown example '{name}'. Known examples: {', '.join(EXAMPLES)}")
    return EXAMPLES[name].make(seed)
