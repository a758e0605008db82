"""Compile-time control flow: fix scalar inputs to values, fold ``If`` nodes whose condition is
then known.

Speech models branch on things that are fixed for a deployment: silero-vad's graph is one
``If (sr == 16000)`` whose branches are the 16 kHz and the 8 kHz networks; other exports test a
shape. ``fix_input_values`` turns chosen graph inputs (``--input-value sr=16000``) into
initializers; ``inline_constant_ifs`` replaces every ``If`` of the main graph whose condition is
a constant by the nodes of the branch it takes (values the branch defines are renamed under the
``If`` node's name; values it reads from the outer graph keep theirs). ``compiler.shape_folding``
alternates the two with constant folding, so a condition computed from shapes or fixed inputs
folds first and nested ``If`` nodes unfold in turn. An ``If`` whose condition depends on data
stays, and TVM's importer builds it as a Relax ``If``.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compiler.errors import InputError

log = logging.getLogger(__name__)

ONNX_DOMAINS = ("", "ai.onnx")


def parse_input_values(specs: list[str] | None) -> dict[str, np.ndarray]:
    """``["sr=16000", "scale=0.5,0.5"]`` → ``{"sr": array(16000.), "scale": array([0.5, 0.5])}``.

    Values are kept as float64 (or int64 when every item is an integer) and cast to the input's
    type by ``fix_input_values``."""
    values: dict[str, np.ndarray] = {}
    for spec in specs or []:
        name, sep, text = spec.partition("=")
        items = [t.strip() for t in text.split(",")] if sep else []
        try:
            numbers = [int(t) for t in items] if all(t.lstrip("-").isdigit() for t in items) else \
                [float(t) for t in items]
        except ValueError:
            numbers = []
        if not name or not numbers:
            raise InputError(f"--input-value '{spec}' is not NAME=VALUE or NAME=V1,V2,... (e.g. sr=16000)")
        values[name] = np.array(numbers[0] if len(numbers) == 1 else numbers)
    return values


def fix_input_values(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` whose inputs named in ``values`` are initializers holding them.

    The value is cast to the input's element type and must fit its declared shape (a scalar
    for a rank-0 input). ``InputError`` names the problem otherwise."""
    if not values:
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    by_name = {i.name: i for i in graph.input if i.name not in initializers}
    for name, value in values.items():
        if name not in by_name:
            raise InputError(f"--input-value names '{name}', but the model's inputs are: {', '.join(by_name)}")
        vi = by_name[name]
        dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
        array = np.asarray(value)
        if array.size == 1 and len(dims) != array.ndim:
            array = array.reshape([1] * len(dims))
        if array.ndim != len(dims) or any(d >= 0 and d != s for d, s in zip(dims, array.shape)):
            raise InputError(f"--input-value {name}: input '{name}' has shape {dims}, the value has "
                             f"{list(array.shape)}")
        if np.issubdtype(dtype, np.integer) and not np.all(np.equal(np.mod(array, 1), 0)):
            raise InputError(f"--input-value {name}: input '{name}' is {np.dtype(dtype).name}, "
                             f"{array.tolist()} is not a whole number")
        graph.input.remove(vi)
        graph.initializer.append(numpy_helper.from_array(array.astype(dtype), name))
    return model


def _constant_value(name: str, graph: onnx.GraphProto) -> np.ndarray | None:
    for t in graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name and node.attribute:
            attr = node.attribute[0]
            if attr.name == "value":
                return numpy_helper.to_array(attr.t)
            if attr.name in ("value_int", "value_float"):
                return np.array(helper.get_attribute_value(attr))
    return None


def _defined(graph: onnx.GraphProto) -> set[str]:
    return ({t.name for t in graph.initializer} | {i.name for i in graph.input}
            | {o for node in graph.node for o in node.output if o})


def _rename_reads(graph: onnx.GraphProto, mapping: dict[str, str]) -> None:
    """Rename values read inside ``graph`` (and its subgraphs) per ``mapping``, except those
    the graph defines itself (which shadow the outer ones)."""
    local = {k: v for k, v in mapping.items() if k not in _defined(graph)}
    for node in graph.node:
        node.input[:] = [local.get(n, n) for n in node.input]
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else attr.graphs:
                _rename_reads(sub, local)
    for out in graph.output:
        out.name = local.get(out.name, out.name)


def _inline(node: onnx.NodeProto, branch: onnx.GraphProto, taken: set[str]) -> tuple[list, list]:
    """The nodes and initializers that replace ``node`` (an ``If``) by ``branch``."""
    prefix = (node.name or node.output[0]) + "/"
    mapping = {}
    for name in _defined(branch):
        new, k = prefix + name, 1
        while new in taken:
            new, k = f"{prefix}{name}_{k}", k + 1
        taken.add(new)
        mapping[name] = new
    branch = onnx.GraphProto.FromString(branch.SerializeToString())
    inits = []
    for t in branch.initializer:
        t.name = mapping[t.name]
        inits.append(t)
    nodes = []
    for inner in branch.node:
        inner.input[:] = [mapping.get(n, n) for n in inner.input]
        inner.output[:] = [mapping.get(n, n) if n else n for n in inner.output]
        inner.name = prefix + inner.name if inner.name else ""
        for attr in inner.attribute:
            for sub in [attr.g] if attr.HasField("g") else attr.graphs:
                _rename_reads(sub, mapping)
        nodes.append(inner)
    for out, result in zip(branch.output, node.output):
        if result:
            nodes.append(helper.make_node("Identity", [mapping.get(out.name, out.name)], [result],
                                          name=f"{prefix}{result}_out"))
    return nodes, inits


def inline_constant_ifs(model: onnx.ModelProto) -> int:
    """Replace every ``If`` of the main graph whose condition is a constant by its taken branch,
    in place; returns how many were replaced."""
    graph = model.graph
    taken = _defined(graph)
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else attr.graphs:
                taken |= _defined(sub)
    nodes, replaced = [], 0
    for node in graph.node:
        cond = _constant_value(node.input[0], graph) if node.op_type == "If" and node.domain in ONNX_DOMAINS \
            else None
        if cond is None or cond.size != 1:
            nodes.append(node)
            continue
        branches = {a.name: a.g for a in node.attribute}
        chosen = "then_branch" if bool(cond.reshape(())) else "else_branch"
        new_nodes, inits = _inline(node, branches[chosen], taken)
        log.info("If %s: condition is %s at compile time, inlined its %s (%d nodes)",
                 node.name or node.output[0], bool(cond.reshape(())), chosen, len(new_nodes))
        nodes.extend(new_nodes)
        graph.initializer.extend(inits)
        replaced += 1
    if replaced:
        del graph.node[:]
        graph.node.extend(nodes)
    return replaced
