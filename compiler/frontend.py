"""ONNX → Relax: load, validate, fix shapes and import a model.

Expects a path to an ONNX file or an ``onnx.ModelProto``. Guarantees either an
``ImportedModel`` (a Relax IRModule with static input shapes and the weights bound as
constants, plus the input/output specs) or one ``ModelError`` / ``InputError`` whose
message says what is wrong and what to do. Validation happens before TVM sees the
model, so malformed input never reaches TVM's importer.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from compiler.control_flow import fix_input_values
from targets.errors import InputError, ModelError, UnsupportedOperatorError
from targets.library_format import TensorSpec, sha256_bytes
from compiler.shape_folding import fold_shape_arithmetic

log = logging.getLogger(__name__)

# Unrolled at compile time where their trip count is known (compiler.control_flow); checked after folding.
UNROLLED = ("Loop", "Scan")
# The Relax importer's oldest well-covered opset; older models are upgraded first.
MIN_OPSET = 13
ONNX_DOMAINS = ("", "ai.onnx")
# A 200-byte model can declare a ConstantOfShape of 2**31 values. Tensors over 4 GiB are
# refused, and, since TVM's importer materialises what is computed from constants (np.full,
# np.arange, several copies each), so is more than 1 GiB of such constants.
MAX_TENSOR_BYTES = 2**32
MAX_FOLDED_BYTES = 2**30
# ONNX's shape-data propagation keeps ~150 bytes per value of every 1-D tensor it follows
# (9 GB for a 2**26-long one). Shape tensors are short; past this total it is switched off.
MAX_PROPAGATED_VALUES = 2**20


@dataclass
class ImportedModel:
    """A Relax module ready for kiln's pass pipeline, with its interface."""

    mod: object  # tvm.IRModule
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    opset: int
    sha256: str
    name: str
    onnx_model: onnx.ModelProto  # the validated, shape-fixed model (for reference runs)


def printable(text: str | bytes) -> str:
    """``text`` safe inside a one-line message: line breaks and other control characters escaped.

    Names come from the model file (tensor, node, operator, graph names) and may hold anything,
    even bytes that are not UTF-8 (protobuf then hands back ``bytes``).
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


# One dimension of --input-shape: a size, "?" (any size) or a range "32..2048" (a symbolic axis).
_DIM = r"(\d+|\?|\d+\.\.\d+)"
Dim = int | tuple[int, int]  # a size, or a symbolic axis as (low, high); high -1: unbounded


def parse_input_shapes(specs: list[str] | None) -> dict[str, tuple[Dim, ...]]:
    """``["data:1x3x224x224", "x:1x3x48x32..2048", "b:?x8"]`` → ``{"data": (1, 3, 224, 224),
    "x": (1, 3, 48, (32, 2048)), "b": ((1, -1), 8)}``."""
    shapes: dict[str, tuple[Dim, ...]] = {}
    for spec in specs or []:
        name, sep, dims = spec.rpartition(":")
        if not sep or not name or not re.fullmatch(rf"{_DIM}(x{_DIM})*", dims):
            raise InputError(f"--input-shape '{spec}' is not NAME:DxDxD with sizes, ? or LOW..HIGH "
                             "(e.g. data:1x3x224x224, x:1x3x48x32..2048, x:?x3x224x224)")
        parsed: list[Dim] = []
        for d in dims.split("x"):
            if d == "?":
                parsed.append((1, -1))
            elif ".." in d:
                low, high = (int(v) for v in d.split(".."))
                if not 1 <= low <= high:
                    raise InputError(f"--input-shape '{spec}': range {d} must have 1 <= LOW <= HIGH")
                parsed.append((low, high))
            else:
                parsed.append(int(d))
        shapes[name] = tuple(parsed)
    return shapes


def read_model(model: str | Path | onnx.ModelProto) -> tuple[onnx.ModelProto, bytes, str]:
    """Parse an ONNX file (or take a ModelProto); returns the model, its bytes and a name."""
    if isinstance(model, onnx.ModelProto):
        return model, model.SerializeToString(), printable(model.graph.name) or "model"
    path = Path(model)
    shown = printable(str(path))
    if not path.is_file():
        raise ModelError(f"{shown}: no such file")
    data = path.read_bytes()
    if not data:
        raise ModelError(f"{shown}: the file is empty")
    try:
        proto = onnx.load_model_from_string(data)
    except (DecodeError, RuntimeError, ValueError) as err:
        raise ModelError(f"{shown}: not a readable ONNX model (truncated or not protobuf: {err})") from None
    return proto, data, printable(path.stem)


def _opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ONNX_DOMAINS:
            return int(imp.version)
    return 0


def _check_structure(model: onnx.ModelProto, where: str) -> None:
    graph = model.graph
    if not graph.node:
        raise ModelError(f"{where}: the graph is empty (no nodes)")
    if not graph.output:
        raise ModelError(f"{where}: the graph has no outputs")
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"{where}: invalid ONNX model: {first}") from None


def find_unsupported_ops(model: onnx.ModelProto) -> list[tuple[str, int, list[str]]]:
    """(op type, count, first node names) for every op kiln's importer lacks."""
    from compiler.converters import CONTRIB_DOMAIN
    from compiler.importer import supported_ops

    supported = {domain: supported_ops(domain)
                 for domain in {n.domain for n in model.graph.node} if domain in (*ONNX_DOMAINS, CONTRIB_DOMAIN)}
    counts: Counter[str] = Counter()
    names: dict[str, list[str]] = defaultdict(list)
    for i, node in enumerate(model.graph.node):
        key = node.op_type if node.domain in ONNX_DOMAINS else f"{node.domain}.{node.op_type}"
        if node.op_type in supported.get(node.domain, ()) or (node.domain in ONNX_DOMAINS and node.op_type in UNROLLED):
            continue
        key = printable(key)
        counts[key] += 1
        if len(names[key]) < 3:
            names[key].append(printable(node.name) or f"#{i}")
    return [(op, n, names[op]) for op, n in counts.most_common()]


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    t = value_info.type.tensor_type
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]


def _static_size(vi: onnx.ValueInfoProto) -> tuple[list[int], int] | None:
    """(dims, bytes) of a tensor whose shape is fully known; None otherwise."""
    dims = _dims(vi)
    if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
        return None
    if not all(isinstance(d, int) and d >= 0 for d in dims):
        return None
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)).itemsize
    except (KeyError, TypeError):
        itemsize = 1
    return dims, math.prod(dims) * itemsize


def _check_sizes(model: onnx.ModelProto, where: str) -> None:
    """Refuse a tensor over MAX_TENSOR_BYTES, or over MAX_FOLDED_BYTES computed from constants at import."""
    graph = model.graph
    constant = {t.name for t in graph.initializer} | {""}
    folded, folded_bytes = [], 0
    for node in graph.node:
        if all(name in constant for name in node.input):
            constant.update(node.output)
            folded.extend(node.output)
    sizes = {vi.name: _static_size(vi) for vi in [*graph.input, *graph.value_info, *graph.output]}
    for name, size in sizes.items():
        if size is not None and size[1] > MAX_TENSOR_BYTES:
            raise ModelError(f"{where}: tensor '{printable(name)}' has shape {size[0]} ({size[1] / 2**30:.1f} GiB); "
                             f"kiln refuses tensors over {MAX_TENSOR_BYTES // 2**30} GiB")
    for name in folded:
        folded_bytes += sizes[name][1] if sizes.get(name) else 0
    if folded_bytes > MAX_FOLDED_BYTES:
        raise ModelError(f"{where}: the model computes {folded_bytes / 2**30:.1f} GiB of constants at import "
                         f"(ConstantOfShape, Range, Expand ... of constants); kiln refuses over "
                         f"{MAX_FOLDED_BYTES // 2**30} GiB")


def _propagation_is_bounded(model: onnx.ModelProto) -> bool:
    """Whether ONNX's data propagation may run: the 1-D tensors are short enough in total."""
    graph = model.graph
    lengths = [size[0][0] for vi in [*graph.input, *graph.value_info, *graph.output]
               if (size := _static_size(vi)) is not None and len(size[0]) == 1]
    lengths += [t.dims[0] for t in graph.initializer if len(t.dims) == 1]
    return sum(lengths) <= MAX_PROPAGATED_VALUES


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def resolve_input_specs(
    model: onnx.ModelProto, shapes: dict[str, tuple], where: str
) -> list[TensorSpec]:
    """Specs for the graph inputs; ``shapes`` fixes dynamic (or any) dims, or makes them
    symbolic with a range (``parse_input_shapes``)."""
    inputs = _graph_inputs(model)
    known = [i.name for i in inputs]
    for name in shapes:
        if name not in known:
            raise InputError(f"--input-shape names '{printable(name)}', but the model's inputs are: "
                             f"{', '.join(map(printable, known))}")
    specs = []
    for vi in inputs:
        shown = printable(vi.name)
        if not vi.type.HasField("tensor_type"):
            raise ModelError(f"{where}: input '{shown}' is not a tensor (sequences and maps are not supported)")
        elem = vi.type.tensor_type.elem_type
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)).name
        except (KeyError, TypeError):
            raise ModelError(f"{where}: input '{shown}' has an unknown element type {elem}") from None
        dims = _dims(vi)
        if vi.name in shapes:
            fixed = shapes[vi.name]
            if dims and len(fixed) != len(dims):
                raise InputError(
                    f"--input-shape {shown}: gives rank {len(fixed)}, the model's input has rank {len(dims)} "
                    f"({printable('x'.join(map(str, dims)))})"
                )
            dims = list(fixed)
        ranges = tuple((axis, d[0], d[1]) for axis, d in enumerate(dims) if isinstance(d, tuple))
        dims = [-1 if isinstance(d, tuple) else d for d in dims]
        dynamic = [d for axis, d in enumerate(dims) if (not isinstance(d, int) or d <= 0)
                   and axis not in {r[0] for r in ranges}]
        if dynamic:
            example = "x".join(str(d) if isinstance(d, int) and d > 0 else "N" for d in dims)
            raise InputError(
                f"input '{shown}' has dynamic dimensions {dims}; fix them with "
                f"--input-shape {shown}:{example.replace('N', '1')} (replace the 1s with your sizes)"
            )
        specs.append(TensorSpec(vi.name, tuple(int(d) for d in dims), dtype, ranges))
    return specs


def symbol_names(model: onnx.ModelProto, specs: list[TensorSpec]) -> dict[tuple[str, int], str]:
    """The name of each symbolic axis: the model's own dim_param there (so inputs sharing a
    ``batch`` axis share one symbol), else ``<input>_<axis>``."""
    by_name = {vi.name: vi for vi in model.graph.input}
    names = {}
    for spec in specs:
        dims = by_name[spec.name].type.tensor_type.shape.dim
        for axis, _, _ in spec.ranges:
            param = dims[axis].dim_param if axis < len(dims) and dims[axis].dim_param else ""
            names[(spec.name, axis)] = re.sub(r"\W", "_", param or f"{spec.name}_{axis}")
    return names


def _declared_shape(vi: onnx.ValueInfoProto) -> tuple[int, ...]:
    """An input's declared shape, -1 for each dimension that is not a fixed size."""
    return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim)


def _fix_input_shapes(model: onnx.ModelProto, specs: list[TensorSpec]) -> None:
    """Write the static input shapes into ``model``; dimensions of -1 elsewhere (Paddle2ONNX's
    way of saying "unknown", which ONNX's strict shape inference takes as a size) become unknown.
    When an input's size differs from the size the model declares, the shapes the model declares
    for intermediate values and outputs were computed for the old size: they are dropped and
    inferred again (a batch-1 model compiled for ``?x3x224x224``)."""
    by_name = {s.name: s for s in specs}
    resized = any(_declared_shape(vi) != by_name[vi.name].shape for vi in model.graph.input if vi.name in by_name)
    if resized:
        del model.graph.value_info[:]
    for vi in [*model.graph.value_info, *model.graph.output]:
        for dim in vi.type.tensor_type.shape.dim:
            if resized or (dim.HasField("dim_value") and dim.dim_value < 0):
                dim.Clear()
    symbols = symbol_names(model, specs)
    for vi in model.graph.input:
        spec = by_name.get(vi.name)
        if spec is None:
            continue
        shape = vi.type.tensor_type.shape
        del shape.dim[:]
        for axis, d in enumerate(spec.shape):
            if (spec.name, axis) in symbols:
                shape.dim.add().dim_param = symbols[(spec.name, axis)]
            else:
                shape.dim.add().dim_value = d


def prepare_onnx(
    model: str | Path | onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None,
    input_values: dict[str, np.ndarray] | None = None,
) -> tuple[onnx.ModelProto, list[TensorSpec], str, str]:
    """Validate, upgrade and shape-fix an ONNX model without touching TVM.

    ``input_values`` fixes inputs to constants (they are no longer inputs; ``If`` nodes they
    decide fold to their branch: ``compiler.control_flow``). Returns the prepared model, its
    input specs, the sha256 of the source bytes and a name.
    """
    proto, data, name = read_model(model)
    where = name if isinstance(model, onnx.ModelProto) else printable(str(model))
    _check_structure(proto, where)
    unsupported = find_unsupported_ops(proto)
    unknown_domains = sorted({op.rpartition(".")[0] for op, _, _ in unsupported if "." in op})
    if unsupported:
        listing = "; ".join(f"{op} ×{n} (e.g. {', '.join(names)})" for op, n, names in unsupported)
        hint = f" Custom domains {unknown_domains} are not supported." if unknown_domains else ""
        raise UnsupportedOperatorError(
            f"{where}: {sum(n for _, n, _ in unsupported)} nodes use operators kiln cannot import "
            f"yet: {listing}.{hint} Replace them (e.g. re-export with other ops) and retry."
        )
    proto = fix_input_values(proto, input_values or {})
    specs = resolve_input_specs(proto, input_shapes or {}, where)
    # (Loop and Scan pass the check above when unrollable; whether they are is known after folding.)
    proto = onnx.ModelProto.FromString(proto.SerializeToString())  # never mutate the caller's model
    _fix_input_shapes(proto, specs)
    opset = _opset(proto)
    if 0 < opset < MIN_OPSET:
        log.info("upgrading %s from opset %d to %d", where, opset, MIN_OPSET)
        try:
            proto = onnx.version_converter.convert_version(proto, MIN_OPSET)
        except Exception as err:  # the converter raises bare RuntimeErrors from C++
            log.warning("could not upgrade opset %d → %d (%s); importing as is", opset, MIN_OPSET, err)
    if proto.ir_version < 4:  # initializers listed as inputs would become runtime inputs
        proto.ir_version = 4
    try:  # sizes first, with the plain inference (bounded memory), then the full one
        plain = onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=False)
    except (onnx.shape_inference.InferenceError, RuntimeError, ValueError, MemoryError):
        plain = proto  # the strict inference below says what is wrong
    _check_sizes(plain, where)
    try:
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True, data_prop=_propagation_is_bounded(plain))
    except (onnx.shape_inference.InferenceError, RuntimeError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ModelError(f"{where}: shape inference failed (shapes in the model do not fit together): {first}") from None
    except MemoryError:
        raise ModelError(f"{where}: ONNX shape inference ran out of memory (the model's tensors are too large)") from None
    _check_sizes(proto, where)
    proto = fold_shape_arithmetic(proto)  # only when the graph reads shapes or branches
    left = [n for n in proto.graph.node if n.op_type in UNROLLED and n.domain in ONNX_DOMAINS]
    if left:
        names = ", ".join(f"{n.op_type} '{printable(n.name or n.output[0])}'" for n in left[:3])
        raise UnsupportedOperatorError(
            f"{where}: {len(left)} loops cannot be unrolled ({names}): kiln compiles a Loop whose trip count is "
            "known at compile time and that cannot end early, and a Scan over a static length; fix the sizes "
            "with --input-shape / --input-value, or re-export with the loop unrolled")
    return proto, specs, sha256_bytes(data), name


def _output_specs(mod, names: list[str]) -> list[TensorSpec]:
    from tvm import relax

    ret = mod["main"].ret_ty  # TVM 0.27 calls struct info "types": TensorType, TupleType
    fields = ret.fields if isinstance(ret, relax.TupleType) else [ret]
    specs = []
    for name, f in zip(names, fields):
        if not isinstance(f, relax.TensorType) or f.shape is None:
            raise ModelError(f"output '{printable(name)}' is not a tensor with a known shape; "
                             "kiln supports tensor outputs")
        # -1 marks a dimension only known at run time (e.g. the number of detected boxes).
        shape = tuple(int(d.value) if hasattr(d, "value") else -1 for d in f.shape.values)
        specs.append(TensorSpec(name, shape, str(f.dtype)))
    return specs


def sanitize_value_names(model: onnx.ModelProto) -> None:
    """Rename every tensor to a C identifier, in place.

    Value names become TIR/CUDA kernel argument names; ``gpu_0/data_0`` breaks nvcc.
    Callers keep the original input/output names in the ``TensorSpec``s.
    """
    graph = model.graph
    names = {i.name for i in graph.input} | {o.name for o in graph.output} | {t.name for t in graph.initializer}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
    used: set[str] = {n for n in names if re.fullmatch(r"[A-Za-z_]\w*", n)}
    mapping: dict[str, str] = {}
    for name in sorted(names - used - {""}):
        base = re.sub(r"\W", "_", name)
        base = base if re.match(r"[A-Za-z_]", base) else f"v_{base}"
        candidate, k = base, 1
        while candidate in used:
            candidate, k = f"{base}_{k}", k + 1
        used.add(candidate)
        mapping[name] = candidate
    if not mapping:
        return
    for vi in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]:
        vi.name = mapping.get(vi.name, vi.name)
    for node in graph.node:
        node.input[:] = [mapping.get(n, n) for n in node.input]
        node.output[:] = [mapping.get(n, n) for n in node.output]


def import_onnx(
    model: str | Path | onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None,
    target=None, input_values: dict[str, np.ndarray] | None = None,
) -> ImportedModel:
    """Validate and import an ONNX model into Relax (weights bound as constants).

    ``target`` (a ``tvm.target.Target``), when given, is current during the import: kiln's own
    converters size their kernels for it (``compiler.converters``)."""
    from compiler.importer import NodeConversionError, from_onnx

    proto, specs, digest, name = prepare_onnx(model, input_shapes, input_values)
    output_names = [o.name for o in proto.graph.output]
    renamed = onnx.ModelProto.FromString(proto.SerializeToString())
    sanitize_value_names(renamed)
    relax_inputs = _graph_inputs(renamed)  # same order as specs
    shape_dict, bounds = _relax_shapes(proto, specs, relax_inputs)
    importer_output = io.StringIO()  # TVM's importer prints its failures; they become our error message
    try:
        with contextlib.redirect_stdout(importer_output), target or contextlib.nullcontext():
            mod = from_onnx(
                renamed,
                shape_dict=shape_dict,
                dtype_dict={vi.name: s.dtype for vi, s in zip(relax_inputs, specs)},
            )
    except NodeConversionError as err:
        raise ModelError(f"{name}: cannot import {printable(str(err))}") from err
    except Exception as err:  # TVM's importer raises many types; report them as one user error
        first = (str(err).strip().splitlines() or [type(err).__name__])[-1]
        where = importer_output.getvalue().strip().splitlines()
        detail = f" ({where[0][:200]})" if where else ""
        raise ModelError(f"{name}: TVM's ONNX importer failed: {first}{detail}") from err
    if bounds:  # lets memory planning size buffers for the largest input (TVM's attribute)
        mod["main"] = mod["main"].with_attr("tir_var_upper_bound", bounds)
    return ImportedModel(mod, specs, _output_specs(mod, output_names), _opset(proto), digest, name, proto)


def _relax_shapes(model: onnx.ModelProto, specs: list[TensorSpec], relax_inputs) -> tuple[dict, dict]:
    """Input shapes for TVM's importer (a TIR variable per symbolic axis, shared by name) and the
    upper bounds of the bounded ones."""
    from tvm import tirx

    symbols = symbol_names(model, specs)
    variables: dict[str, object] = {}
    bounds: dict[str, int] = {}
    shape_dict = {}
    for vi, spec in zip(relax_inputs, specs):
        highs = {axis: high for axis, _, high in spec.ranges}
        dims = []
        for axis, d in enumerate(spec.shape):
            name = symbols.get((spec.name, axis))
            if name is None:
                dims.append(d)
                continue
            dims.append(variables.setdefault(name, tirx.Var(name, "int64")))
            if highs[axis] >= 0:
                bounds[name] = max(bounds.get(name, 0), highs[axis])
        shape_dict[vi.name] = dims
    return shape_dict, bounds
