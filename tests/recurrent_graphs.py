"""One-node ONNX LSTM / GRU / RNN models built with ``onnx.helper``, every optional input and
attribute switchable, seeded weights; and the same node in ``layout=0`` form (ONNX Runtime
implements only that layout, so layout-1 models are checked through their layout-0 twin)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def recurrent_model(cell: str, steps: int = 7, batch: int = 2, input_size: int = 5, hidden: int = 16,
                    direction: str = "bidirectional", layout: int = 0, bias: bool = True, lens: bool = False,
                    h0: bool = False, c0: bool = False, peepholes: bool = False, seed: int = 0,
                    **attrs) -> onnx.ModelProto:
    """A model with one ``cell`` node whose only graph input is ``X``; optional inputs are initializers."""
    rng = np.random.default_rng(seed)
    gates, dirs = GATES[cell], 2 if direction == "bidirectional" else 1

    def init(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    def normal(*shape: int, std: float = 0.3) -> np.ndarray:
        return rng.normal(0, std, shape).astype(np.float32)

    inits: list[onnx.TensorProto] = []
    state_shape = (dirs, batch, hidden) if layout == 0 else (batch, dirs, hidden)
    lengths = np.array([steps - 3 * (i % 2) for i in range(batch)], np.int32)  # every other one shorter
    names = ["X", init("W", normal(dirs, gates * hidden, input_size)), init("R", normal(dirs, gates * hidden, hidden)),
             init("B", normal(dirs, 2 * gates * hidden)) if bias else "",
             init("lens", lengths) if lens else "",
             init("h0", normal(*state_shape, std=0.5)) if h0 else ""]
    if cell == "LSTM":
        names += [init("c0", normal(*state_shape, std=0.5)) if c0 else "",
                  init("P", normal(dirs, 3 * hidden)) if peepholes else ""]
    while names[-1] == "":
        names.pop()
    outputs = ["Y", "Y_h", "Y_c"] if cell == "LSTM" else ["Y", "Y_h"]
    if layout:
        attrs["layout"] = layout
    node = helper.make_node(cell, names, outputs, hidden_size=hidden, direction=direction, name=f"{cell.lower()}0",
                            **attrs)
    x_shape = [steps, batch, input_size] if layout == 0 else [batch, steps, input_size]
    y_shape = [steps, dirs, batch, hidden] if layout == 0 else [batch, steps, dirs, hidden]
    graph = helper.make_graph(
        [node], f"{cell.lower()}_graph", [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, y_shape)]
        + [helper.make_tensor_value_info(o, TensorProto.FLOAT, list(state_shape)) for o in outputs[1:]],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], producer_name="kiln-test")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def layout0_twin(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (one recurrent node, ``layout=1``) with ``layout=0``: X, initial states and
    outputs transposed to time-major / direction-major."""
    twin = onnx.ModelProto.FromString(model.SerializeToString())
    node = twin.graph.node[0]
    for attr in list(node.attribute):
        if attr.name == "layout":
            node.attribute.remove(attr)
    for t in twin.graph.initializer:
        if t.name in ("h0", "c0"):
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).transpose(1, 0, 2).copy(), t.name))
    for vi, perm in [(twin.graph.input[0], (1, 0, 2)), (twin.graph.output[0], (1, 2, 0, 3)),
                     *[(o, (1, 0, 2)) for o in twin.graph.output[1:]]]:
        dims = vi.type.tensor_type.shape.dim
        values = [d.dim_value for d in dims]
        for d, p in zip(dims, perm):
            d.dim_value = values[p]
    return twin


def reference_outputs(model: onnx.ModelProto, x: np.ndarray, threads: int = 2) -> dict[str, np.ndarray]:
    """ONNX Runtime's outputs for ``X = x`` (through the layout-0 twin for a layout-1 node)."""
    from compiler.reference import OnnxRuntimeReference

    layout = {a.name: a.i for a in model.graph.node[0].attribute}.get("layout", 0)
    if layout == 0:
        return OnnxRuntimeReference(model, threads).run({"X": x})
    out = OnnxRuntimeReference(layout0_twin(model), threads).run({"X": x.transpose(1, 0, 2)})
    return {k: v.transpose(2, 0, 1, 3) if k == "Y" else v.transpose(1, 0, 2) for k, v in out.items()}
