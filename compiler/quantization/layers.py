"""Which bindings of a Relax module are quantizable layers, what to call them, and the small
Relax helpers the quantization passes share.

A quantizable layer is a float32 ``nn.conv2d`` or a ``matmul`` whose weight (second
argument) is a constant, in ``main``'s dataflow block, after kiln's simplification steps
(batch-norm folded, weights constant). Layers get the names of their ONNX nodes
(``Conv``/``Gemm``/``MatMul`` in graph order, which is the order the importer emits them);
when the counts do not line up (an operator the importer expands differently) they are
called ``conv2d_3``, ``matmul_0``… instead, which is what ``kiln quantize-report`` shows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
import tvm
from tvm import relax
from tvm.ir.expr import Constant

log = logging.getLogger(__name__)

LAYER_OPS = ("relax.nn.conv2d", "relax.matmul")
ONNX_LAYER_OPS = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class Layer:
    """One quantizable layer: its binding var (output), data input, constant weight and kind."""

    name: str
    op: str  # "conv2d" or "matmul"
    output: relax.Var
    data: relax.Expr
    weight: Constant
    index: int  # position among quantizable layers, in dataflow order
    groups: int = 1  # conv2d groups
    data_layout: str = "NCHW"  # conv2d: its data and kernel layouts (ConvertConvLayout may change them)
    kernel_layout: str = "OIHW"

    @property
    def depthwise(self) -> bool:
        """One input channel per output channel: each output reads only its own channel."""
        if self.op != "conv2d" or self.groups == 1:
            return False
        shape = self.weight.value.shape
        layout = self.kernel_layout
        return int(shape[layout.index("I")]) == 1 and int(shape[layout.index("O")]) == self.groups

    @property
    def weight_axis(self) -> int:
        """The weight's output-channel axis: conv2d's O, matmul ``[K, N]``'s N."""
        return self.kernel_layout.index("O") if self.op == "conv2d" else 1

    @property
    def channel_axis(self) -> int:
        """The data input's channel axis (conv2d's C; matmul's last)."""
        return self.data_layout.index("C") if self.op == "conv2d" else -1


def op_name(expr: relax.Expr) -> str | None:
    """The operator name of a call to a Relax operator (``relax.nn.conv2d``), else None."""
    return expr.op.name if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) else None


def emit_like(builder, value, var: relax.Var) -> relax.Var:
    """Emit ``value`` for a binding that replaces ``var``: a block output stays an output."""
    if isinstance(var, relax.DataflowVar):
        return builder.emit(value, var.name)
    return builder.emit_output(value, var.name)


def _is_layer(call: relax.Expr) -> bool:
    if op_name(call) not in LAYER_OPS:
        return False
    data, weight = call.args[0], call.args[1]
    return (isinstance(weight, Constant) and not isinstance(data, Constant)
            and str(weight.value.dtype) == "float32" and dtype_of(data) == "float32")


def dtype_of(expr: relax.Expr) -> str:
    sinfo = expr.ty
    return str(getattr(sinfo, "dtype", ""))


def onnx_layer_names(model: onnx.ModelProto | None) -> list[str]:
    """Names of the ONNX nodes that become conv2d/matmul calls, in graph order."""
    if model is None:
        return []
    return [node.name or f"{node.op_type}_{i}" for i, node in enumerate(model.graph.node)
            if node.op_type in ONNX_LAYER_OPS]


def main_bindings(mod) -> list[relax.VarBinding]:
    """The bindings of ``main``'s body, in order (all blocks)."""
    body = mod["main"].body
    return [b for block in body.blocks for b in block.bindings]


def find_layers(mod, onnx_model: onnx.ModelProto | None = None) -> list[Layer]:
    """The quantizable layers of ``mod['main']`` in dataflow order, named after ``onnx_model``."""
    bindings = main_bindings(mod)
    calls = [b for b in bindings if op_name(b.value) in LAYER_OPS]
    names = onnx_layer_names(onnx_model)
    if len(names) != len(calls):
        if onnx_model is not None:
            log.info("layer names: %d ONNX Conv/Gemm/MatMul nodes but %d conv2d/matmul calls; "
                     "using positional names", len(names), len(calls))
        counts: dict[str, int] = {}
        names = []
        for b in calls:
            op = op_name(b.value).split(".")[-1]
            names.append(f"{op}_{counts.get(op, 0)}")
            counts[op] = counts.get(op, 0) + 1
    layers = []
    for name, binding in zip(names, calls):
        if _is_layer(binding.value):
            op = op_name(binding.value).split(".")[-1]
            extra = {}
            if op == "conv2d":
                attrs = binding.value.attrs
                extra = dict(groups=int(attrs.groups), data_layout=str(attrs.data_layout),
                             kernel_layout=str(attrs.kernel_layout))
            layers.append(Layer(name, op, binding.var, binding.value.args[0], binding.value.args[1], len(layers),
                                **extra))
    return layers


def use_counts(func: relax.Function) -> dict:
    """How many times each var is read by ``func``'s bindings and its result (a binding reading a
    var twice counts once)."""
    uses: dict = {}
    for block in func.body.blocks:
        for binding in block.bindings:
            for var in set(relax.analysis.all_vars(binding.value)):
                uses[var] = uses.get(var, 0) + 1
    for var in set(relax.analysis.all_vars(func.body.body)):
        uses[var] = uses.get(var, 0) + 1
    return uses


def const(value, dtype: str | None = None) -> Constant:
    array = np.asarray(value)
    if dtype is not None:
        array = array.astype(dtype)
    return relax.const(array, str(array.dtype))


def conv_pad_width(attrs, layout: str, channels: tuple[int, int] = (0, 0)) -> list[int]:
    """``nn.pad`` widths (before, after per axis of ``layout``) for a conv2d's own spatial padding,
    plus ``channels`` (before, after) on its channel axis."""
    top, left, bottom, right = [int(p) for p in attrs.padding]
    per_axis = {"H": (top, bottom), "W": (left, right), "C": channels}
    return [w for axis in layout for w in per_axis.get(axis, (0, 0))]


def sole_bias_adds(func: relax.Function, outputs: set) -> dict:
    """Layer output var -> the binding ``add(output, constant)`` that is its only use."""
    uses = use_counts(func)
    bindings = [b for block in func.body.blocks for b in block.bindings]
    adds = {}
    for b in bindings:
        if op_name(b.value) == "relax.add" and b.value.args[0] in outputs and uses.get(b.value.args[0]) == 1 \
                and isinstance(b.value.args[1], Constant):
            adds[b.value.args[0]] = b
    return adds


def conv_attrs_without_padding(attrs):
    """The attributes of a conv2d call with its padding set to 0 (the input was padded already)."""
    return tvm.ir.make_node("relax.attrs.Conv2DAttrs", strides=attrs.strides, padding=[0, 0, 0, 0],
                            dilation=attrs.dilation, groups=attrs.groups, data_layout=attrs.data_layout,
                            kernel_layout=attrs.kernel_layout, out_layout=attrs.out_layout,
                            out_dtype=attrs.out_dtype)
