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

from targets.errors import InputError

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


def constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The tensor a ``Constant`` node holds; None for string and sparse constants."""
    if len(node.attribute) != 1:
        return None
    attr = node.attribute[0]
    value = helper.get_attribute_value(attr)
    if attr.name == "value":
        array = numpy_helper.to_array(value)
        return None if array.dtype == object else array
    if attr.name in ("value_float", "value_floats"):
        return np.array(value, np.float32)
    if attr.name in ("value_int", "value_ints"):
        return np.array(value, np.int64)
    return None


def _constant_value(name: str, graph: onnx.GraphProto) -> np.ndarray | None:
    """The value ``name`` holds in ``graph`` when it is an initializer or a ``Constant`` node's output."""
    for t in graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ONNX_DOMAINS and node.output[0] == name:
            return constant_node_value(node)
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


def _inline_graph(prefix: str, graph: onnx.GraphProto, bindings: dict[str, str], taken: set[str]
                  ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], list[str]]:
    """``graph``'s nodes and initializers for the main graph: its formal inputs bound to the values
    ``bindings`` names, every value it defines renamed under ``prefix`` (unique in ``taken``).
    Returns (nodes, initializers, the names its outputs have now)."""
    mapping = dict(bindings)
    for name in _defined(graph) - set(bindings):
        new, k = prefix + name, 1
        while new in taken:
            new, k = f"{prefix}{name}_{k}", k + 1
        taken.add(new)
        mapping[name] = new
    graph = onnx.GraphProto.FromString(graph.SerializeToString())
    inits = []
    for t in graph.initializer:
        t.name = mapping[t.name]
        inits.append(t)
    nodes = []
    for inner in graph.node:
        inner.input[:] = [mapping.get(n, n) for n in inner.input]
        inner.output[:] = [mapping.get(n, n) if n else n for n in inner.output]
        inner.name = prefix + inner.name if inner.name else ""
        for attr in inner.attribute:
            for sub in [attr.g] if attr.HasField("g") else attr.graphs:
                _rename_reads(sub, mapping)
        nodes.append(inner)
    return nodes, inits, [mapping.get(o.name, o.name) for o in graph.output]


def _identity(src: str, dst: str, prefix: str) -> onnx.NodeProto:
    return helper.make_node("Identity", [src], [dst], name=f"{prefix}{dst}_out")


def _taken_names(graph: onnx.GraphProto) -> set[str]:
    taken = _defined(graph)
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else attr.graphs:
                taken |= _defined(sub)
    return taken


def inline_constant_ifs(model: onnx.ModelProto) -> int:
    """Replace every ``If`` of the main graph whose condition is a constant by its taken branch,
    in place; returns how many were replaced."""
    graph = model.graph
    taken = _taken_names(graph)
    nodes, replaced = [], 0
    for node in graph.node:
        cond = _constant_value(node.input[0], graph) if node.op_type == "If" and node.domain in ONNX_DOMAINS \
            else None
        if cond is None or cond.size != 1:
            nodes.append(node)
            continue
        branches = {a.name: a.g for a in node.attribute}
        chosen = "then_branch" if bool(cond.reshape(())) else "else_branch"
        prefix = (node.name or node.output[0]) + "/"
        new_nodes, inits, results = _inline_graph(prefix, branches[chosen], {}, taken)
        new_nodes += [_identity(src, dst, prefix) for src, dst in zip(results, node.output) if dst]
        log.info("If %s: condition is %s at compile time, inlined its %s (%d nodes)",
                 node.name or node.output[0], bool(cond.reshape(())), chosen, len(new_nodes))
        nodes.extend(new_nodes)
        graph.initializer.extend(inits)
        replaced += 1
    if replaced:
        del graph.node[:]
        graph.node.extend(nodes)
    return replaced


MAX_UNROLLED_NODES = 50_000  # a Loop/Scan is unrolled only while the graph stays below this


def _static_shapes(graph: onnx.GraphProto) -> dict[str, list[int]]:
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape") and all(
                d.HasField("dim_value") for d in dims):
            shapes[vi.name] = [d.dim_value for d in dims]
    return shapes


def _always_true(body: onnx.GraphProto) -> bool:
    """Whether a Loop body's condition output is its condition input passed on, or constant true."""
    cond_in, cond_out = body.input[1].name, body.output[0].name
    producer = next((node for node in body.node if cond_out in node.output), None)
    if cond_out == cond_in or (producer is not None and producer.op_type == "Identity"
                               and producer.input[0] == cond_in):
        return True
    value = _constant_value(cond_out, body)
    return value is not None and value.size == 1 and bool(value.reshape(()))


class _Emitter:
    """Nodes and initializers that replace one Loop/Scan node, with fresh names."""

    def __init__(self, prefix: str, taken: set[str]):
        self.prefix, self.taken = prefix, taken
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def name(self, hint: str) -> str:
        new, k = self.prefix + hint, 1
        while new in self.taken:
            new, k = f"{self.prefix}{hint}_{k}", k + 1
        self.taken.add(new)
        return new

    def const(self, value: np.ndarray, hint: str) -> str:
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], hint: str, **attrs) -> str:
        out = self.name(hint)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def body(self, graph: onnx.GraphProto, bindings: dict[str, str], step: int) -> list[str]:
        nodes, inits, outputs = _inline_graph(f"{self.prefix}{step}/", graph, bindings, self.taken)
        self.nodes += nodes
        self.inits += inits
        return outputs

    def stack(self, parts: list[str], axis: int, out: str) -> None:
        axes = self.const(np.array([axis], np.int64), "axes")
        expanded = [self.node("Unsqueeze", [p, axes], "step") for p in parts]
        self.nodes.append(helper.make_node("Concat", expanded, [out], axis=axis, name=f"{self.prefix}{out}_stack"))


def _unroll_loop(node: onnx.NodeProto, graph: onnx.GraphProto, emit: _Emitter) -> bool:
    body = next(a.g for a in node.attribute if a.name == "body")
    trips = _constant_value(node.input[0], graph) if node.input and node.input[0] else None
    cond = _constant_value(node.input[1], graph) if len(node.input) > 1 and node.input[1] else np.array(True)
    if trips is None or cond is None or not bool(cond.reshape(())) or not _always_true(body):
        return False
    steps = int(trips.reshape(()))
    carried = list(node.input[2:])
    finals, scan_outs = node.output[:len(carried)], node.output[len(carried):]
    if steps * max(len(body.node), 1) + len(graph.node) > MAX_UNROLLED_NODES:
        return False
    if steps == 0 and any(scan_outs):
        return False  # an empty scan output has no shape to build from here
    true = emit.const(np.array(True), "cond")
    scans: list[list[str]] = []
    for i in range(steps):
        bindings = {body.input[0].name: emit.const(np.array(i, np.int64), "iter"), body.input[1].name: true}
        bindings.update({formal.name: actual for formal, actual in zip(body.input[2:], carried)})
        outputs = emit.body(body, bindings, i)
        carried = outputs[1:1 + len(carried)]
        scans.append(outputs[1 + len(carried):])
    emit.nodes += [_identity(src, dst, emit.prefix) for src, dst in zip(carried, finals) if dst]
    for k, out in enumerate(scan_outs):
        if out:
            emit.stack([s[k] for s in scans], 0, out)
    return True


def _unroll_scan(node: onnx.NodeProto, graph: onnx.GraphProto, emit: _Emitter) -> bool:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    body, scan_count = attrs["body"], int(attrs["num_scan_inputs"])
    states, scan_inputs = list(node.input[:len(node.input) - scan_count]), list(node.input[-scan_count:])
    in_axes = list(attrs.get("scan_input_axes", [0] * scan_count))
    in_dirs = list(attrs.get("scan_input_directions", [0] * scan_count))
    shapes = _static_shapes(graph)
    if any(name not in shapes for name in scan_inputs):
        return False
    lengths = {shapes[name][axis] for name, axis in zip(scan_inputs, in_axes)}
    if len(lengths) != 1:
        return False
    steps = lengths.pop()
    scan_out_count = len(body.output) - len(states)
    out_axes = list(attrs.get("scan_output_axes", [0] * scan_out_count))
    out_dirs = list(attrs.get("scan_output_directions", [0] * scan_out_count))
    if steps == 0 or steps * max(len(body.node), 1) + len(graph.node) > MAX_UNROLLED_NODES:
        return False
    scans: list[list[str]] = []
    for t in range(steps):
        bindings = {formal.name: actual for formal, actual in zip(body.input, states)}
        for j, (name, axis, reverse) in enumerate(zip(scan_inputs, in_axes, in_dirs)):
            index = emit.const(np.array(steps - 1 - t if reverse else t, np.int64), "index")
            rank = len(shapes[name])
            sliced = emit.node("Gather", [name, index], "slice", axis=axis % rank)
            bindings[body.input[len(states) + j].name] = sliced
        outputs = emit.body(body, bindings, t)
        states = outputs[:len(states)]
        scans.append(outputs[len(states):])
    emit.nodes += [_identity(src, dst, emit.prefix) for src, dst in zip(states, node.output) if dst]
    for k, out in enumerate(node.output[len(states):]):
        if out:
            parts = [s[k] for s in scans]
            emit.stack(parts[::-1] if out_dirs[k] else parts, out_axes[k] if out_axes[k] >= 0 else out_axes[k] + 1 +
                       len(shapes.get(parts[0], [])), out)
    return True


UNROLLERS = {"Loop": _unroll_loop, "Scan": _unroll_scan}


def unroll_loops(model: onnx.ModelProto) -> int:
    """Unroll, in place, every ``Loop`` of the main graph whose trip count is a constant and that
    cannot exit early, and every ``Scan`` whose sequence length is static; returns how many."""
    graph = model.graph
    taken = _taken_names(graph)
    nodes, unrolled = [], 0
    for node in graph.node:
        unroll = UNROLLERS.get(node.op_type) if node.domain in ONNX_DOMAINS else None
        emit = _Emitter((node.name or node.output[0]) + "/", taken)
        if unroll is None or not unroll(node, graph, emit):
            nodes.append(node)
            continue
        log.info("%s %s: unrolled (%d nodes)", node.op_type, node.name or node.output[0], len(emit.nodes))
        nodes.extend(emit.nodes)
        graph.initializer.extend(emit.inits)
        unrolled += 1
    if unrolled:
        del graph.node[:]
        graph.node.extend(nodes)
    return unrolled
