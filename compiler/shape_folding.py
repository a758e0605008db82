"""Once an ONNX model's input shapes are static, evaluate its shape arithmetic to constants.

PyTorch and Paddle2ONNX exports compute Reshape / Expand / Slice arguments at run time, e.g.
``Shape -> Cast -> Slice -> Cast -> Concat -> Reshape`` in the PP-OCR models shipped with
``rapidocr_onnxruntime``. TVM 0.27's Relax importer rejects such a Reshape ("Reshape requires
the input new shape to be Shape. However, the given one is relax.TensorType") even when every
input shape is fixed. With static input shapes every ``Shape`` / ``Size`` there is a constant,
so the chain folds to one ``Constant`` and the model imports.

What is folded: ``Shape`` and ``Size`` of a value whose shape ONNX shape inference knows
completely, and then every deterministic ONNX op whose inputs are all constants (initializers,
``Constant`` nodes, folded values) and whose outputs are shape-sized (at most
``MAX_FOLDED_ELEMENTS`` values each, known from shape inference before evaluating). Weight-sized
constant computations, Quantize/DequantizeLinear (kiln lowers QDQ itself), random ops, control
flow and custom domains are left in the graph. Folded nodes are evaluated by ONNX's own numpy
reference implementation (``onnx.reference.ReferenceEvaluator``), one node at a time; ONNX
Runtime is not involved. Initializers count as constants even when also listed as graph inputs,
as kiln binds them as weights.

    model = fold_shape_arithmetic(onnx.shape_inference.infer_shapes(model))   # static inputs
    model = freeze_input_shapes(model, {"x": (1, 3, 48, 192)})              # fixes them first
"""

from __future__ import annotations

import logging
import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compiler.control_flow import constant_node_value, inline_constant_ifs, unroll_loops
from targets.errors import InputError

log = logging.getLogger(__name__)

ONNX_DOMAINS = ("", "ai.onnx")
# Shape tensors hold a handful of values; anything larger is data, left for TVM to compute.
MAX_FOLDED_ELEMENTS = 4096
SHAPE_OPS = ("Shape", "Size")
# Never folded: random ops (a new value each run), control flow (subgraphs), QDQ (kiln's
# int8 lowering needs to see it) and Constant itself (already a constant).
NOT_FOLDABLE = frozenset({
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli",
    "If", "Loop", "Scan", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Constant",
})


def needs_folding(model: onnx.ModelProto) -> bool:
    """Whether the main graph reads shapes at run time (``Shape`` or ``Size`` nodes) or branches
    (``If``, whose condition may be known at compile time: ``compiler.control_flow``)."""
    return any(node.op_type in (*SHAPE_OPS, "If", "Loop", "Scan") and node.domain in ONNX_DOMAINS
               for node in model.graph.node)


def _known_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Every value of the main graph whose annotated shape is fully static, by name."""
    g = model.graph
    shapes = {t.name: tuple(t.dims) for t in g.initializer}
    for vi in [*g.input, *g.value_info, *g.output]:
        tt = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and tt.HasField("shape") and all(
            d.HasField("dim_value") and d.dim_value >= 0 for d in tt.shape.dim
        ):
            shapes[vi.name] = tuple(d.dim_value for d in tt.shape.dim)
    return shapes


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Initializers and ``Constant`` node outputs of ``graph``, by name."""
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ONNX_DOMAINS:
            value = constant_node_value(node)
            if value is not None:
                values[node.output[0]] = value
    return values


def _shape_op_value(node: onnx.NodeProto, shape: tuple[int, ...]) -> np.ndarray:
    """What ``Shape`` (with opset 15's ``start``/``end``) or ``Size`` returns for an input of ``shape``."""
    if node.op_type == "Size":
        return np.array(math.prod(shape), np.int64)
    attrs = {a.name: a.i for a in node.attribute}
    return np.array(shape[attrs.get("start", 0):attrs.get("end", None)], np.int64)  # ONNX clamps like Python


def _is_shape_sized(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> bool:
    """Whether every output of ``node`` has a known shape with at most MAX_FOLDED_ELEMENTS values."""
    outputs = [name for name in node.output if name]
    return bool(outputs) and all(
        name in shapes and math.prod(shapes[name]) <= MAX_FOLDED_ELEMENTS for name in outputs
    )


def _evaluate(node: onnx.NodeProto, consts: dict[str, np.ndarray], opsets: dict[str, int]) -> list[np.ndarray] | None:
    """``node``'s outputs computed by ONNX's reference implementation; None if it cannot compute them."""
    from onnx.reference import ReferenceEvaluator

    try:
        outputs = ReferenceEvaluator(node, opsets=opsets).run(None, {n: consts[n] for n in node.input if n})
    except Exception as err:  # the reference ops raise many types; such a node is simply left to TVM
        log.debug("not folding %s (%s): %s", node.name or node.output[0], node.op_type, err)
        return None
    arrays = [np.asarray(v) for v in outputs]
    if any(a.dtype == object for a in arrays):  # strings or sequences: not a Constant tensor
        return None
    return arrays


def _fold_pass(model: onnx.ModelProto) -> int:
    """Replace each foldable node of the main graph by Constants holding its outputs, in place.

    Returns how many nodes were replaced. A replacement takes the node's position, so the node
    order stays topological and values folded earlier in the pass feed later nodes.
    """
    graph = model.graph
    shapes = _known_shapes(model)
    consts = _constants(graph)
    opsets = {o.domain: o.version for o in model.opset_import}
    nodes: list[onnx.NodeProto] = []
    folded = 0
    for node in graph.node:
        outputs = None
        if node.op_type in NOT_FOLDABLE or node.domain not in ONNX_DOMAINS:
            pass
        elif node.op_type in SHAPE_OPS:
            if node.input[0] in shapes:
                outputs = [_shape_op_value(node, shapes[node.input[0]])]
        elif node.input and all(not n or n in consts for n in node.input) and _is_shape_sized(node, shapes):
            outputs = _evaluate(node, consts, opsets)
        if outputs is None:
            nodes.append(node)
            continue
        for name, value in zip(node.output, outputs):
            if not name:  # an optional output nobody reads
                continue
            consts[name] = value
            nodes.append(helper.make_node("Constant", [], [name], name=f"{name}_folded",
                                          value=numpy_helper.from_array(value, name)))
        folded += 1
    if folded:
        del graph.node[:]
        graph.node.extend(nodes)
    return folded


def _names_read(graph: onnx.GraphProto) -> set[str]:
    """Values read by ``graph``'s nodes, including from inside If/Loop/Scan bodies, and its outputs."""
    names = {o.name for o in graph.output}
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else attr.graphs:
                names |= _names_read(sub)
    return names


def _drop_dead(graph: onnx.GraphProto) -> int:
    """Remove nodes none of whose outputs are read; returns how many."""
    removed = 0
    while True:
        read = _names_read(graph)
        dead = [node for node in graph.node if not set(node.output) & read]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
        removed += len(dead)
    produced = {name for node in graph.node for name in node.output}
    stale = [vi for vi in graph.value_info if vi.name not in produced]
    for vi in stale:
        graph.value_info.remove(vi)
    return removed


def fold_shape_arithmetic(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its static shape arithmetic folded to ``Constant`` nodes (see the module doc).

    Expects static input shapes and the model's value_info as ONNX shape inference left it (the
    first pass reads those shapes; later passes re-infer without data propagation). Returns
    ``model`` itself when it has no ``Shape``/``Size`` nodes, otherwise a new model that computes
    the same outputs for inputs of those shapes, with the nodes only the folded values read removed.
    """
    if not needs_folding(model):
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    total = passes = inlined = 0
    while True:
        while count := _fold_pass(model):
            total, passes = total + count, passes + 1
            model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=False)
        # a condition known now takes its branch, a loop with a known trip count unrolls; fold again
        count = inline_constant_ifs(model) + unroll_loops(model)
        if not count:
            break
        inlined += count
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=False)
    dropped = _drop_dead(model.graph)
    log.info("%s: folded %d shape-arithmetic nodes to constants in %d passes, inlined/unrolled %d If, "
             "Loop and Scan nodes, dropped %d unused nodes", model.graph.name or "model", total, passes, inlined, dropped)
    return model


def freeze_input_shapes(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """A copy of ``model`` with ``input_shapes`` fixed and its shape arithmetic folded.

    Expects every named input to exist with the same rank; ``InputError`` otherwise. Guarantees a
    model that passes ``onnx.checker`` and computes the same outputs for inputs of those shapes.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    by_name = {i.name: i for i in graph.input}
    for name, shape in input_shapes.items():
        if name not in by_name:
            raise InputError(f"input '{name}' is not in the model; its inputs are: {', '.join(by_name)}")
        dims = by_name[name].type.tensor_type.shape.dim
        if len(dims) != len(shape):
            raise InputError(f"input '{name}' has rank {len(dims)}, but the shape given is {tuple(shape)}")
        for dim, size in zip(dims, shape):
            dim.Clear()
            dim.dim_value = int(size)
    for vi in graph.output:  # stale symbolic output dims would contradict the inferred static ones
        for dim in vi.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value") or dim.dim_value <= 0:
                dim.Clear()
    del graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    model = fold_shape_arithmetic(model)
    onnx.checker.check_model(model)
    return model
