"""Hypothesis strategies for hostile ONNX models, and how importing one case ended.

``fuzz_cases()`` draws a ``FuzzCase``: a model (a random small graph of supported and
unsupported operators, or kiln's built-in ``tiny`` model), mutated at the graph level
(dropped initializers, duplicate names, unknown domains, huge or mismatched dims, wrong
attribute types, cycles, external data, odd opsets), then possibly at the byte level
(truncated, random bytes appended, inserted or flipped), plus optional ``--input-shape``
values. ``import_outcome`` imports it and says how that ended: ``imported``,
``kiln_error:<Type>``, or a bug (``bad_message:<Type>``, ``other_error:<Type>``).

Used by ``tests/test_fuzz_hypothesis.py`` (a bounded slice) and
``scripts/fuzz_hypothesis.py`` (thousands of cases in a crash-isolated worker). Needs
``hypothesis`` (kiln's ``test`` extra).
"""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper, numpy_helper

# -- building blocks ---------------------------------------------------------------------------

SMALL_DIM = st.integers(1, 4)
ODD_DIM = st.sampled_from([0, -1, -7, 2**31, 2**40, 2**63 - 1])
DIM = st.one_of(SMALL_DIM, SMALL_DIM, SMALL_DIM, ODD_DIM, st.sampled_from(["N", "batch", ""]))
SHAPE = st.one_of(st.lists(DIM, max_size=5), st.lists(DIM, max_size=5), st.none())  # None: no shape at all
ELEM_TYPE = st.one_of(st.just(TensorProto.FLOAT), st.just(TensorProto.FLOAT),
                      st.sampled_from([TensorProto.INT64, TensorProto.FLOAT16, TensorProto.BOOL, TensorProto.INT32,
                                       TensorProto.STRING, TensorProto.UNDEFINED, TensorProto.DOUBLE, 99]))
INT = st.one_of(st.integers(-3, 8), st.sampled_from([2**31, 2**40, 2**62, -(2**63), 2**63 - 1]))
FLOAT = st.floats(width=32, allow_nan=True, allow_infinity=True)
INTS = st.lists(INT, min_size=1, max_size=6)
SMALL_INTS = st.lists(st.integers(0, 3), min_size=1, max_size=4)
NASTY_TEXT = ("a\nb", "line\r\nbreak", "x\u2028y", "tab\tname", "nul\x00", "\x1b[31mred", " ", "", "é" * 30)
TEXT = st.one_of(st.text(max_size=12), st.sampled_from(NASTY_TEXT))  # any unicode, line breaks included
NAME_TEXT = st.one_of(st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True), TEXT)
DOMAIN = st.sampled_from(["com.microsoft", "com.example", "ai.onnx.ml", "ai.onnx.preview.training", "x" * 64])
CAST_TO = st.sampled_from([TensorProto.FLOAT, TensorProto.INT64, TensorProto.FLOAT16, TensorProto.BOOL,
                           TensorProto.STRING, TensorProto.UNDEFINED, 99, -1])


def _rarely(draw, percent: int) -> bool:
    """True about ``percent`` % of the time; hypothesis's bias and shrinking lean to False (the plain case)."""
    return draw(st.integers(0, 99)) >= 100 - percent


@st.composite
def small_arrays(draw, dtype=None) -> np.ndarray:
    """A small tensor; float values include NaN and infinities, ints include huge ones."""
    dtype = dtype or draw(st.sampled_from([np.float32, np.float32, np.int64, np.int32, np.float16, np.bool_]))
    shape = draw(st.lists(st.integers(0, 4), max_size=3))
    if np.dtype(dtype).kind == "f":
        elements = st.floats(width=16 if dtype == np.float16 else 32, allow_nan=True, allow_infinity=True)
    elif np.dtype(dtype).kind == "i":
        info = np.iinfo(dtype)
        elements = st.one_of(st.integers(-3, 8), st.sampled_from([int(info.max), int(info.min)]))
    else:
        elements = st.booleans()
    return draw(hnp.arrays(dtype, tuple(shape), elements=elements))


@st.composite
def tensors(draw, name: str = "t") -> TensorProto:
    return numpy_helper.from_array(draw(small_arrays()), name)


ANY_ATTR = st.one_of(INT, FLOAT, INTS, st.lists(FLOAT, min_size=1, max_size=4), TEXT.filter(bool), tensors())


# -- operators: supported ones with their usual arity and attributes, and unsupported ones ------

@dataclass(frozen=True)
class OpSpec:
    op: str
    inputs: tuple[int, int]  # min, max data inputs
    attrs: tuple[tuple[str, st.SearchStrategy], ...] = ()
    consts: tuple[int, ...] = ()  # input positions that are int64 initializers (shapes, axes, pads)


def _spec(op: str, lo: int = 1, hi: int | None = None, consts: tuple[int, ...] = (), **attrs) -> OpSpec:
    return OpSpec(op, (lo, hi if hi is not None else lo), tuple(attrs.items()), consts)


CONV_ATTRS = dict(kernel_shape=SMALL_INTS, strides=SMALL_INTS, pads=SMALL_INTS, dilations=SMALL_INTS,
                  group=INT, auto_pad=st.sampled_from(["NOTSET", "SAME_UPPER", "VALID", "BOGUS"]))
OPS: tuple[OpSpec, ...] = (
    *(_spec(op) for op in ("Relu", "Sigmoid", "Tanh", "Neg", "Abs", "Exp", "Sqrt", "Identity", "Floor",
                           "GlobalAveragePool", "GlobalMaxPool", "Not", "Shape", "Size", "NonZero")),
    *(_spec(op, 2) for op in ("Add", "Sub", "Mul", "Div", "Pow", "MatMul", "Equal", "Less", "PRelu")),
    _spec("Sum", 1, 4), _spec("Max", 1, 3), _spec("Mean", 1, 3), _spec("Where", 3),
    _spec("Gemm", 2, 3, alpha=FLOAT, beta=FLOAT, transA=INT, transB=INT),
    _spec("Conv", 2, 3, **CONV_ATTRS), _spec("ConvTranspose", 2, 3, **CONV_ATTRS),
    _spec("MaxPool", kernel_shape=SMALL_INTS, strides=SMALL_INTS, pads=SMALL_INTS, ceil_mode=INT),
    _spec("AveragePool", kernel_shape=SMALL_INTS, strides=SMALL_INTS, pads=SMALL_INTS, count_include_pad=INT),
    _spec("BatchNormalization", 5, epsilon=FLOAT, momentum=FLOAT),
    _spec("Concat", 1, 3, axis=INT), _spec("Softmax", axis=INT), _spec("LogSoftmax", axis=INT),
    _spec("Flatten", axis=INT), _spec("Transpose", perm=INTS), _spec("Cast", to=CAST_TO),
    _spec("LeakyRelu", alpha=FLOAT), _spec("Elu", alpha=FLOAT), _spec("Clip", 1, 3),
    _spec("Gather", 2, axis=INT), _spec("ReduceMean", axes=INTS, keepdims=INT),
    _spec("ReduceSum", 1, 2, consts=(1,), keepdims=INT), _spec("ArgMax", axis=INT, keepdims=INT),
    _spec("Reshape", 2, consts=(1,), allowzero=INT), _spec("Expand", 2, consts=(1,)),
    _spec("Tile", 2, consts=(1,)), _spec("Squeeze", 1, 2, consts=(1,)), _spec("Unsqueeze", 2, consts=(1,)),
    _spec("Slice", 3, 5, consts=(1, 2, 3, 4)), _spec("Pad", 2, 3, consts=(1,), mode=st.sampled_from(
        ["constant", "reflect", "edge", "wrap", "nonsense"])),
    _spec("Split", 1, 2, consts=(1,), axis=INT), _spec("TopK", 2, consts=(1,), axis=INT, largest=INT),
    _spec("ConstantOfShape", 1, consts=(0,), value=tensors()), _spec("Range", 3, consts=(0, 1, 2)),
    _spec("Constant", 0, value=tensors()), _spec("CumSum", 2, consts=(1,)), _spec("Trilu", 1, 2, consts=(1,)),
    _spec("OneHot", 3, consts=(1,), axis=INT), _spec("Resize", 1, 4, consts=(1, 2, 3),
                                                     mode=st.sampled_from(["nearest", "linear", "cubic", "x"])),
    _spec("DepthToSpace", blocksize=INT), _spec("LRN", size=INT, alpha=FLOAT),
    _spec("Einsum", 1, 3, equation=st.sampled_from(["ij,jk->ik", "ii->i", "...", "a,b->", ""])),
    # not in TVM's Relax importer (or not ONNX at all)
    *(_spec(op, 1, 3) for op in ("Loop", "If", "Scan", "LSTM", "GRU", "QLinearConv", "Det",
                                 "RandomNormal", "ReverseSequence", "DFT", "NoSuchOp", "")),
)


@st.composite
def const_input(draw, name: str) -> TensorProto:
    """An int64 initializer where an operator wants shapes/axes/pads: small, negative or huge values."""
    if _rarely(draw, 15):
        return numpy_helper.from_array(draw(small_arrays()), name)  # the wrong dtype or rank
    values = draw(st.lists(st.one_of(st.integers(-2, 5), st.integers(-2, 5), INT), max_size=6))
    array = np.array(values, dtype=np.int64)
    return numpy_helper.from_array(array.reshape(()) if len(values) == 1 and _rarely(draw, 40) else array, name)


# -- random graphs -----------------------------------------------------------------------------

@st.composite
def random_graphs(draw) -> onnx.ModelProto:
    """A small graph; mostly well-formed enough to reach TVM's importer, often not."""
    base_shape = draw(st.lists(SMALL_DIM, min_size=1, max_size=4))
    inputs, initializers, nodes = [], [], []
    values: list[str] = []
    for i in range(draw(st.integers(1, 3))):
        shape = draw(SHAPE) if _rarely(draw, 25) else base_shape
        elem = draw(ELEM_TYPE) if _rarely(draw, 15) else TensorProto.FLOAT
        inputs.append(helper.make_tensor_value_info(f"x{i}", elem, shape))
        values.append(f"x{i}")
    for i in range(draw(st.integers(0, 2))):  # float weights usable as data inputs
        initializers.append(numpy_helper.from_array(draw(small_arrays(np.float32)), f"w{i}"))
        values.append(f"w{i}")
    for n in range(draw(st.integers(1, 6))):
        spec = draw(st.sampled_from(OPS))
        node_inputs = []
        for k in range(draw(st.integers(*spec.inputs))):
            if k in spec.consts:
                const = draw(const_input(f"c{n}_{k}"))
                initializers.append(const)
                node_inputs.append(const.name)
            elif _rarely(draw, 5):
                node_inputs.append(draw(st.sampled_from(["", "dangling"])))  # omitted or never produced
            else:
                node_inputs.append(draw(st.sampled_from(values)))
        attrs = {}
        for attr_name, strategy in spec.attrs:
            if _rarely(draw, 70):
                attrs[attr_name] = draw(ANY_ATTR if _rarely(draw, 15) else strategy)
        if _rarely(draw, 8):
            attrs[draw(st.sampled_from(["bogus", "axis", "value", "to"]))] = draw(ANY_ATTR)
        n_outputs = 2 if spec.op in ("Split", "TopK") else 1
        outputs = [draw(st.sampled_from(values)) if _rarely(draw, 5) else f"v{n}_{j}" for j in range(n_outputs)]
        domain = draw(DOMAIN) if _rarely(draw, 7) else ""
        nodes.append(helper.make_node(spec.op, node_inputs, outputs, name=f"n{n}", domain=domain, **attrs))
        values.extend(outputs)
    graph_outputs = []
    for name in draw(st.lists(st.sampled_from(values[-3:] + ["nowhere"]), min_size=1, max_size=2)):
        odd = _rarely(draw, 30)  # else what most of these graphs compute: float, the inputs' shape
        graph_outputs.append(helper.make_tensor_value_info(
            name, draw(ELEM_TYPE) if odd else TensorProto.FLOAT, draw(SHAPE) if odd else base_shape))
    graph = helper.make_graph(nodes, "fuzz", inputs, graph_outputs, initializers)
    opsets = [helper.make_opsetid("", draw(st.sampled_from([17, 13, 18])))]
    for domain in sorted({node.domain for node in nodes} - {""}):
        if not _rarely(draw, 20):  # declared, so the checker lets the node through to kiln's own check
            opsets.append(helper.make_opsetid(domain, 1))
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model


@functools.lru_cache(maxsize=1)
def _tiny_bytes() -> bytes:
    from compiler.examples import example_model

    return example_model("tiny").SerializeToString()


# -- mutations ---------------------------------------------------------------------------------

def _all_value_infos(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    return [*graph.input, *graph.output, *graph.value_info]


@st.composite
def mutate_graph(draw, model: onnx.ModelProto) -> str:
    """Apply one graph-level mutation in place; returns its name."""
    graph = model.graph
    kind = draw(st.sampled_from(["drop_initializer", "duplicate_name", "unknown_domain", "opset", "ir_version",
                                 "cycle", "huge_dims", "attr_type", "mismatched_initializer", "external_data",
                                 "initializer_as_input", "names_text", "no_outputs"]))
    nodes = list(graph.node)
    if kind == "drop_initializer" and graph.initializer:
        del graph.initializer[draw(st.integers(0, len(graph.initializer) - 1))]
    elif kind == "duplicate_name" and nodes:
        node = draw(st.sampled_from(nodes))
        names = [i.name for i in graph.input] + [t.name for t in graph.initializer] + [o for n in nodes for o in n.output]
        target = draw(st.sampled_from(["output", "input", "initializer", "node_name"]))
        if target == "output":
            node.output[0] = draw(st.sampled_from(names))
        elif target == "input" and graph.input:
            graph.input.append(draw(st.sampled_from(list(graph.input))))
        elif target == "initializer" and graph.initializer:
            graph.initializer.append(draw(st.sampled_from(list(graph.initializer))))
        else:
            node.name = nodes[0].name
    elif kind == "unknown_domain" and nodes:
        draw(st.sampled_from(nodes)).domain = draw(st.one_of(DOMAIN, TEXT))
        if _rarely(draw, 50):
            model.opset_import.append(helper.make_opsetid(draw(DOMAIN), draw(st.integers(-1, 1000))))
    elif kind == "opset":
        version = draw(st.one_of(st.integers(1, 25), st.sampled_from([0, -1, 1000, 2**40])))
        choice = draw(st.sampled_from(["replace", "remove", "duplicate"]))
        if choice == "remove":
            del model.opset_import[:]
        else:
            if choice == "replace":
                del model.opset_import[:]
            model.opset_import.append(helper.make_opsetid("", version))
    elif kind == "ir_version":
        model.ir_version = draw(st.one_of(st.integers(0, 12), st.sampled_from([-1, 2**40])))
    elif kind == "cycle" and len(nodes) > 1 and nodes[0].input:
        nodes[0].input[0] = nodes[-1].output[0]
    elif kind == "huge_dims":
        infos = [vi for vi in _all_value_infos(graph) if vi.type.tensor_type.shape.dim]
        if infos:
            dims = draw(st.sampled_from(infos)).type.tensor_type.shape.dim
            dims[draw(st.integers(0, len(dims) - 1))].dim_value = draw(ODD_DIM)
    elif kind == "attr_type":
        with_attrs = [n for n in nodes if n.attribute]
        if with_attrs:
            attrs = draw(st.sampled_from(with_attrs)).attribute
            attrs[draw(st.integers(0, len(attrs) - 1))].type = draw(st.integers(0, 14))
    elif kind == "mismatched_initializer" and graph.initializer:
        tensor = draw(st.sampled_from(list(graph.initializer)))
        tensor.dims[:] = draw(st.lists(st.one_of(SMALL_DIM, ODD_DIM), max_size=4))
        if _rarely(draw, 30):
            tensor.data_type = draw(ELEM_TYPE)
    elif kind == "external_data" and graph.initializer:
        tensor = draw(st.sampled_from(list(graph.initializer)))
        tensor.data_location = TensorProto.EXTERNAL
        del tensor.external_data[:]
        location = draw(st.sampled_from(["weights.bin", "../../../../etc/passwd", "/etc/passwd", "/dev/zero", ""]))
        entry = tensor.external_data.add()
        entry.key, entry.value = "location", location
        if _rarely(draw, 50):
            entry = tensor.external_data.add()
            entry.key, entry.value = "length", str(draw(st.sampled_from([16, 2**40])))
    elif kind == "initializer_as_input" and graph.initializer:
        tensor = draw(st.sampled_from(list(graph.initializer)))
        graph.input.append(helper.make_tensor_value_info(tensor.name, draw(ELEM_TYPE), draw(SHAPE)))
    elif kind == "names_text" and nodes:  # names from the model end up in kiln's messages
        node = draw(st.sampled_from(nodes))
        node.name = draw(TEXT)
        what = draw(st.sampled_from(["op", "input", "output", "graph"]))
        if what == "op":
            node.op_type = draw(TEXT)
            if _rarely(draw, 70):  # a custom domain the checker lets through
                node.domain = "com.example"
                model.opset_import.append(helper.make_opsetid("com.example", 1))
        elif what in ("input", "output") and len(graph.input if what == "input" else graph.output):
            value = (graph.input if what == "input" else graph.output)[0]
            old, value.name = value.name, draw(NAME_TEXT)
            for other in nodes:
                other.input[:] = [value.name if n == old else n for n in other.input]
                other.output[:] = [value.name if n == old else n for n in other.output]
            if what == "input" and _rarely(draw, 50):
                value.type.tensor_type.shape.dim.add().dim_param = draw(TEXT)  # a dim for --input-shape
        else:
            graph.name = draw(TEXT)
    elif kind == "no_outputs":
        del graph.output[:]
    return kind


@st.composite
def mutate_bytes(draw, data: bytes) -> tuple[bytes, str]:
    kind = draw(st.sampled_from(["truncate", "append", "insert", "flip"]))
    if kind == "truncate":
        return data[: draw(st.integers(min(1, len(data)), max(len(data) - 1, 0)))], kind
    if kind == "append":
        return data + draw(st.binary(min_size=1, max_size=64)), kind
    at = draw(st.integers(0, max(len(data) - 1, 0)))
    if kind == "insert":
        return data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at:], kind
    flipped = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        if flipped:
            flipped[draw(st.integers(0, len(flipped) - 1))] ^= 1 << draw(st.integers(0, 7))
    return bytes(flipped), kind


# -- cases -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FuzzCase:
    data: bytes  # the model file's bytes
    input_shapes: dict[str, tuple[int, ...]] | None
    mutations: tuple[str, ...]
    as_proto: bool  # hand the parsed ModelProto to import_onnx instead of a file path

    def __repr__(self) -> str:  # what hypothesis prints for a failing case
        return (f"FuzzCase(mutations={self.mutations}, input_shapes={self.input_shapes}, "
                f"as_proto={self.as_proto}, data={self.data!r})")


@st.composite
def fuzz_cases(draw) -> FuzzCase:
    from_tiny = _rarely(draw, 25)
    model = onnx.load_model_from_string(_tiny_bytes()) if from_tiny else draw(random_graphs())
    mutations = ["tiny" if from_tiny else "graph"]
    for _ in range(draw(st.integers(0 if not from_tiny else 1, 3))):
        mutations.append(draw(mutate_graph(model)))
    data = model.SerializeToString()
    if _rarely(draw, 25):
        data, kind = draw(mutate_bytes(data))
        mutations.append(kind)
    shapes = None
    if _rarely(draw, 15):
        names = [i.name for i in model.graph.input] + ["not_an_input"]
        shapes = draw(st.dictionaries(st.sampled_from(names), st.lists(st.integers(1, 4), max_size=5).map(tuple),
                                      max_size=2))
    as_proto = mutations[-1] not in ("truncate", "append", "insert", "flip") and _rarely(draw, 30)
    return FuzzCase(data, shapes, tuple(mutations), as_proto)


def import_case(case: FuzzCase, work_dir: Path) -> None:
    """Import ``case`` the way a user would (from a file, or the ModelProto); raises what kiln raises."""
    from compiler.frontend import import_onnx

    if case.as_proto:
        import_onnx(onnx.load_model_from_string(case.data), case.input_shapes)
        return
    path = work_dir / "case.onnx"
    path.write_bytes(case.data)
    import_onnx(path, case.input_shapes)


def is_clear_message(text: str) -> bool:
    """One non-empty line (no line break of any kind): what the CLI prints on stderr."""
    return bool(text.strip()) and len(text.splitlines()) == 1


def import_outcome(case: FuzzCase, work_dir: Path | None = None) -> str:
    """``imported``, ``kiln_error:<Type>``, ``bad_message:<Type>`` or ``other_error:<Type>: message``."""
    from targets.errors import KilnError

    with tempfile.TemporaryDirectory(prefix="kiln-hfuzz-", dir=work_dir) as tmp:
        try:
            import_case(case, Path(tmp))
        except KilnError as err:
            kind = "kiln_error" if is_clear_message(str(err)) else "bad_message"
            return f"{kind}:{type(err).__name__}"
        except Exception as err:  # noqa: BLE001 — exactly what the fuzzer looks for
            return f"other_error:{type(err).__name__}: {str(err)[:200]}"
    return "imported"
