"""Freeze an ONNX model's input shapes and fold the shape arithmetic that then becomes constant.

Paddle2ONNX exports (the PP-OCR models in ``rapidocr_onnxruntime``) compute Reshape targets
at run time: ``Shape -> Cast -> Slice -> Cast -> Concat -> Reshape``. TVM 0.27's Relax ONNX
importer rejects that ("Reshape requires the input new shape to be Shape. However, the given
one is relax.TensorType") even when kiln is given fixed input shapes. Once the input shapes
are fixed every ``Shape`` there is a constant, so the chain folds to one constant tensor and
the model imports. The folded model computes the same function at that input shape.

    model = freeze_input_shapes(onnx.load(path), {"x": (1, 3, 48, 192)})
"""

from __future__ import annotations

import logging

import numpy as np

from compiler.errors import InputError

log = logging.getLogger("kiln.onnx_static")

# Ops never folded: random ones (a new value each run), control flow, and Constant itself.
_NOT_FOLDABLE = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                 "Bernoulli", "If", "Loop", "Scan", "Constant"}


def _static_shapes(model) -> dict[str, tuple[int, ...]]:
    """Every value whose shape ONNX shape inference knows completely, by name."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    shapes = {}
    g = inferred.graph
    for vi in [*g.input, *g.value_info, *g.output]:
        tt = vi.type.tensor_type
        if tt.HasField("shape") and all(d.HasField("dim_value") and d.dim_value >= 0 for d in tt.shape.dim):
            shapes[vi.name] = tuple(d.dim_value for d in tt.shape.dim)
    return shapes


def _constants(graph) -> dict[str, np.ndarray]:
    """Initializers (except those a caller may override as graph inputs) and Constant outputs, by name."""
    from onnx import numpy_helper

    overridable = {i.name for i in graph.input}
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name not in overridable}
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _shape_value(node, shape: tuple[int, ...]) -> np.ndarray:
    """What ``Shape`` returns for an input of ``shape`` (``start``/``end`` attributes of opset 15+)."""
    attrs = {a.name: a.i for a in node.attribute}
    return np.array(shape[attrs.get("start", 0):attrs.get("end", None)], dtype=np.int64)  # ONNX clamps like Python


def _fold_once(model) -> int:
    """Replace each foldable node by Constants holding its outputs, in place; returns how many were folded.

    Foldable: a ``Shape`` of a value with a fully known shape, or a deterministic op whose
    inputs are all constants. Replacements take the node's position, so the order stays topological.
    """
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    shapes = _static_shapes(model)
    consts = _constants(graph)
    opsets = {o.domain: o.version for o in model.opset_import}
    nodes, folded = [], 0
    for node in graph.node:
        outputs = None
        if node.op_type in _NOT_FOLDABLE or node.domain not in ("", "ai.onnx"):
            pass
        elif node.op_type == "Shape":
            if node.input[0] in shapes:
                outputs = [_shape_value(node, shapes[node.input[0]])]
        elif node.input and all(not n or n in consts for n in node.input):
            outputs = ReferenceEvaluator(node, opsets=opsets).run(None, {n: consts[n] for n in node.input if n})
        if outputs is None:
            nodes.append(node)
            continue
        for k, (name, value) in enumerate(zip(node.output, outputs)):
            consts[name] = np.asarray(value)
            nodes.append(helper.make_node("Constant", [], [name], name=f"{node.name or node.op_type}_folded{k}",
                                          value=numpy_helper.from_array(consts[name], name)))
        folded += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return folded


def _drop_dead(graph) -> int:
    """Remove nodes none of whose outputs are read by a node or a graph output."""
    removed = 0
    while True:
        used = {n for node in graph.node for n in node.input} | {o.name for o in graph.output}
        dead = [node for node in graph.node if not (set(node.output) & used)]
        if not dead:
            return removed
        for node in dead:
            graph.node.remove(node)
        removed += len(dead)


def freeze_input_shapes(model, input_shapes: dict[str, tuple[int, ...]]):
    """A copy of ``model`` (ModelProto) with ``input_shapes`` fixed and constant shape arithmetic folded.

    Expects every named input to exist with the same rank; ``InputError`` otherwise. Guarantees a
    model that passes ``onnx.checker`` and computes the same outputs for inputs of those shapes.
    """
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    by_name = {i.name: i for i in graph.input}
    for name, shape in input_shapes.items():
        if name not in by_name:
            raise InputError(f"input '{name}' not in the model (inputs: {', '.join(by_name)})")
        dims = by_name[name].type.tensor_type.shape.dim
        if len(dims) != len(shape):
            raise InputError(f"input '{name}' has rank {len(dims)}, got shape {shape}")
        for dim, size in zip(dims, shape):
            dim.Clear()
            dim.dim_value = int(size)
    for vi in graph.output:  # stale symbolic output dims would contradict the inferred static ones
        for dim in vi.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value") or dim.dim_value <= 0:
                dim.Clear()
    del graph.value_info[:]
    total = 0
    while (count := _fold_once(model)):
        total += count
    dropped = _drop_dead(graph)
    onnx.checker.check_model(model)
    log.info("froze %s: folded %d nodes, dropped %d dead ones", graph.name, total, dropped)
    return model
