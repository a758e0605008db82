"""TVM's Relax ONNX importer with kiln's own converters and errors that name the node.

``from_onnx`` behaves like ``tvm.relax.frontend.onnx.from_onnx`` with three differences:

* ops in ``compiler.converters.CONVERTERS`` (LSTM, GRU, RNN, …) convert with kiln's
  converters; every other op with TVM's;
* a converter that fails (TVM's raise ``AssertionError``, ``TVMError``, ``ValueError``…)
  raises ``NodeConversionError`` naming the ONNX node, its op type and the reason;
* ``supported_ops()`` is the union, for the frontend's unsupported-op check.
"""

from __future__ import annotations

import onnx
from tvm import relax
from tvm.relax.frontend.onnx.onnx_frontend import ONNXGraphImporter, _get_convert_map

from compiler.converters import CONTRIB_CONVERTERS, CONTRIB_DOMAIN, CONVERTERS

KILN_CONVERTERS = {**CONVERTERS, **CONTRIB_CONVERTERS}  # contrib op names do not clash with ONNX's


class NodeConversionError(Exception):
    """A converter failed on one ONNX node."""

    def __init__(self, node: str, op: str, reason: str):
        super().__init__(f"node '{node}' ({op}): {reason}")
        self.node, self.op, self.reason = node, op, reason


def supported_ops(domain: str = "") -> set[str]:
    """Op types of ``domain`` (ONNX's, "" or "ai.onnx", by default; or ``com.microsoft``) kiln can import."""
    if domain == CONTRIB_DOMAIN:
        return set(CONTRIB_CONVERTERS)
    return set(_get_convert_map()) | set(CONVERTERS) | {"If", "Constant"}


def _reason(err: Exception) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(err).__name__)[:300]


class KilnGraphImporter(ONNXGraphImporter):
    """TVM's graph importer, consulting ``CONVERTERS`` first (see the module docstring)."""

    in_function = False  # whether main's function scope was entered (see ``from_onnx``)

    def _construct_nodes(self, graph: onnx.GraphProto) -> None:
        self.in_function = True
        super()._construct_nodes(graph)

    def _check_for_unsupported_ops(self, graph: onnx.GraphProto) -> None:
        missing = sorted({n.op_type for n in graph.node} - supported_ops() - supported_ops(CONTRIB_DOMAIN))
        if missing:
            raise NotImplementedError(f"operators not supported: {', '.join(missing)}")

    def _convert_operator(self, op_name: str, inputs, attrs: dict, opset: int) -> relax.Expr:
        node = attrs.get("tvm_custom", {}).get("name", "") or "?"
        try:
            if op_name not in KILN_CONVERTERS:
                return super()._convert_operator(op_name, inputs, attrs, opset)
            sym = KILN_CONVERTERS[op_name].get_converter(opset)(self.bb, inputs, attrs, [self._nodes, self._params])
            return self.bb.normalize(sym) if isinstance(sym, relax.Expr) else sym
        except NodeConversionError:
            raise
        except Exception as err:  # TVM's converters raise many types; each becomes one named error
            raise NodeConversionError(node, op_name, _reason(err)) from err


def _model_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1


def from_onnx(model: onnx.ModelProto, shape_dict: dict[str, list], dtype_dict: dict[str, str]) -> object:
    """Import a checked ONNX model into a Relax IRModule (weights bound as constants)."""
    importer = KilnGraphImporter(shape_dict, dtype_dict, keep_params_in_input=False)
    try:
        return importer.from_onnx(model.graph, _model_opset(model))
    except Exception:
        if not importer.in_function:
            raise
        # A failed import leaves main's binding block and scope open in the C++ builder, which
        # then prints "BlockBuilder destroyed with remaining blocks!" to stderr when collected:
        # close both (the error itself goes on to the caller).
        importer.bb._end_block()
        importer.bb.end_scope()
        raise
