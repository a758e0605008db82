"""``Int8ConvLayout``: a pre-quantized model's int8 convolutions, and the ops between them, in NHWC.

A QDQ model is lowered to int8 convolutions during simplification (``LowerQDQ``), in the
importer's NCHW. kiln's x86 int8 kernels want NHWC (4 consecutive channels contiguous, read
in place by the dot-product intrinsic); in NCHW each conv packs its input first (SqueezeNet
QDQ: 7.2 ms against 4.5 ms for kiln's own NHWC INT8 build). ``ConvertConvLayout`` cannot do
it: TVM 0.27's ConvertLayout has no layout rule for ``relax.quantize``/``dequantize`` (and
none can be registered from Python: ``InferLayoutOutput`` has no Python constructor), so it
would put two transposes around every quantize. This pass converts the int8 graph itself:

- an ``nn.conv2d`` with integer data, ``NCHW``/``OIHW`` and a constant weight becomes
  ``NHWC``/``OHWI`` (weight transposed here, at compile time);
- an op reading a converted tensor stays in NHWC when it is layout-agnostic: elementwise ops
  (bias add, requantize multiply, ``astype``, quantize/dequantize with per-tensor or
  channel-axis parameters, activations; constant operands are transposed), ``concat`` on
  channels, max/avg pooling, ``nn.pad``, a ``mean`` over H and W (global average pooling);
- any other reader (reshape, matmul, the function's output) gets the tensor back in NCHW
  by one transpose, made once per tensor.

Expects Relax after ``LowerQDQ`` (4-D NCHW tensors); a module without integer
convolutions (every float model, and kiln's own INT8 path, which quantizes after
``ConvertConvLayout``) is returned unchanged. Guarantees the same values. The pipeline runs
it where the target's int8 layout is NHWC (x86) and no explicit ``--layout`` says otherwise.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import Constant, GenericConst  # GenericConst: a tensor; Constant also covers IntImm

from compiler.quantization.layers import dtype_of, emit_like, op_name

TO_NHWC, TO_NCHW = [0, 2, 3, 1], [0, 3, 1, 2]
ELEMENTWISE = {"relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum",
               "relax.minimum", "relax.astype", "relax.clip", "relax.nn.relu", "relax.round",
               "relax.sigmoid", "relax.tanh", "relax.quantize", "relax.dequantize"}
POOLS = {"relax.nn.max_pool2d": relax.op.nn.max_pool2d, "relax.nn.avg_pool2d": relax.op.nn.avg_pool2d}


def _ndim(expr: relax.Expr) -> int:
    return int(getattr(expr.ty, "ndim", -1))



def _is_int8_nchw_conv(call: relax.Expr) -> bool:
    if op_name(call) != "relax.nn.conv2d":
        return False
    attrs = call.attrs
    return (str(attrs.data_layout) == "NCHW" and str(attrs.kernel_layout) == "OIHW"
            and str(attrs.out_layout) == "NCHW" and dtype_of(call.args[0]).startswith(("int", "uint"))
            and isinstance(call.args[1], GenericConst))


def _constant_nhwc(value: np.ndarray) -> np.ndarray | None:
    """A constant operand broadcast against a 4-D NCHW tensor, as it broadcasts against NHWC."""
    if value.size == 1 or value.ndim == 0:
        return value
    if value.ndim > 4:
        return None
    return value.reshape((1,) * (4 - value.ndim) + value.shape).transpose(TO_NHWC)


class _Converter:
    """The NHWC form of one binding's value, given how to get an argument in NHWC."""

    def __init__(self, nhwc_arg) -> None:
        self.nhwc_arg = nhwc_arg  # (expr) -> expr in NHWC, or None when it cannot be

    def conv2d(self, call: relax.Call) -> relax.Expr:
        attrs = call.attrs
        weight = call.args[1].value.numpy().transpose(TO_NHWC)  # OIHW -> OHWI
        return relax.op.nn.conv2d(self.nhwc_arg(call.args[0]), relax.const(weight), strides=attrs.strides,
                                  padding=attrs.padding, dilation=attrs.dilation, groups=attrs.groups,
                                  data_layout="NHWC", kernel_layout="OHWI", out_layout="NHWC",
                                  out_dtype=str(attrs.out_dtype))

    def elementwise(self, call: relax.Call) -> relax.Expr | None:
        name = op_name(call)
        if name in ("relax.quantize", "relax.dequantize"):
            axis = int(call.attrs.axis) % 4
            params = [x.value.numpy() for x in call.args[1:] if isinstance(x, GenericConst)]
            if len(params) != 2 or not (axis == 1 or all(p.size == 1 for p in params)):
                return None
            op = relax.op.quantize if name == "relax.quantize" else relax.op.dequantize
            return op(self.nhwc_arg(call.args[0]), call.args[1], call.args[2], axis=3,
                      out_dtype=str(call.attrs.out_dtype))
        args = []
        for arg in call.args:
            if isinstance(arg, Constant) and not isinstance(arg, GenericConst):  # a scalar (clip's bounds)
                args.append(arg)
            elif isinstance(arg, GenericConst):
                value = _constant_nhwc(arg.value.numpy())
                if value is None:
                    return None
                args.append(relax.const(value, str(arg.value.dtype)))
            elif isinstance(arg, relax.Var) and _ndim(arg) == 4:
                args.append(self.nhwc_arg(arg))
            else:
                return None
        return relax.Call(call.op, args, call.attrs)

    def concat(self, call: relax.Call) -> relax.Expr | None:
        items = call.args[0]
        if not isinstance(items, relax.Tuple) or int(call.attrs.axis) % 4 != 1:
            return None
        return relax.op.concat([self.nhwc_arg(x) for x in items.fields], axis=3)

    def pool(self, call: relax.Call) -> relax.Expr | None:
        attrs = call.attrs
        if str(attrs.layout) != "NCHW" or str(attrs.out_layout) != "NCHW":
            return None
        return POOLS[op_name(call)](self.nhwc_arg(call.args[0]), attrs.pool_size, attrs.strides, attrs.padding,
                                    attrs.dilation, bool(attrs.ceil_mode), bool(attrs.count_include_pad),
                                    layout="NHWC", out_layout="NHWC")

    def pad(self, call: relax.Call) -> relax.Expr | None:
        widths = [int(w) for w in call.attrs.pad_width]
        if len(widths) != 8:
            return None
        pairs = [widths[2 * i: 2 * i + 2] for i in range(4)]
        nhwc = [w for axis in TO_NHWC for w in pairs[axis]]
        return relax.op.nn.pad(self.nhwc_arg(call.args[0]), nhwc, str(call.attrs.pad_mode),
                               float(call.attrs.pad_value))

    def spatial_mean(self, call: relax.Call) -> relax.Expr | None:
        """Global average pooling as the importer writes it: ``mean`` over H and W, dims kept."""
        axes = sorted(int(a) % 4 for a in call.attrs.axis) if call.attrs.axis is not None else None
        if axes != [2, 3] or not bool(call.attrs.keepdims):
            return None
        return relax.op.mean(self.nhwc_arg(call.args[0]), axis=[1, 2], keepdims=True)

    def convert(self, call: relax.Expr, reads_nhwc: bool) -> relax.Expr | None:
        """``call`` in NHWC, or None to keep it as it is."""
        name = op_name(call)
        if _is_int8_nchw_conv(call):
            return self.conv2d(call)
        if not reads_nhwc or _ndim(call) != 4:
            return None
        if name in ELEMENTWISE:
            return self.elementwise(call)
        if name == "relax.concat":
            return self.concat(call)
        if name in POOLS:
            return self.pool(call)
        if name == "relax.nn.pad":
            return self.pad(call)
        if name == "relax.mean":
            return self.spatial_mean(call)
        return None


def _has_int8_conv(func: relax.Function) -> bool:
    found = []
    relax.analysis.post_order_visit(func, lambda e: found.append(e) if _is_int8_nchw_conv(e) else None)
    return bool(found)


@tvm.transform.module_pass(opt_level=0, name="Int8ConvLayout")
def int8_conv_layout(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Integer NCHW convolutions and the layout-agnostic ops they feed, in NHWC (see module doc)."""
    if "main" not in [gv.name_hint for gv in mod.get_global_vars()] or not _has_int8_conv(mod["main"]):
        return mod

    @relax.expr_functor.mutator
    class _ToNHWC(relax.PyExprMutator):
        def __init__(self, module):
            super().__init__(module)
            self.nhwc: dict = {}  # original var -> var holding it in NHWC
            self.only_nhwc: set = set()  # original vars whose NCHW binding was not emitted
            self.converter = _Converter(self.nhwc_arg)

        def nhwc_arg(self, arg: relax.Expr) -> relax.Expr:
            if arg in self.nhwc:
                return self.nhwc[arg]
            var = self.builder_.emit(relax.op.permute_dims(self.visit_expr(arg), TO_NHWC))
            self.nhwc[arg] = var
            return var

        def visit_var_binding_(self, binding):
            value = binding.value
            reads_nhwc = any(v in self.nhwc for v in relax.analysis.free_vars(value))
            converted = self.converter.convert(value, reads_nhwc) if isinstance(value, relax.Call) else None
            if converted is not None:
                self.nhwc[binding.var] = self.builder_.emit(converted, binding.var.name + "_nhwc")
                self.only_nhwc.add(binding.var)
                if not isinstance(binding.var, relax.DataflowVar):  # a block output: wanted in NCHW
                    self._to_nchw(binding.var)
                return
            self._materialize(value)
            super().visit_var_binding_(binding)

        def visit_match_cast_(self, binding):
            self._materialize(binding.value)
            super().visit_match_cast_(binding)

        def _materialize(self, value: relax.Expr) -> None:
            """The NCHW tensors ``value`` reads, for those only their NHWC copy has been emitted."""
            for var in relax.analysis.free_vars(value):
                if var in self.only_nhwc:
                    self._to_nchw(var)

        def _to_nchw(self, var: relax.Var) -> None:
            back = relax.op.permute_dims(self.nhwc[var], TO_NCHW)
            self.set_var_remap(var, emit_like(self.builder_, back, var))
            self.only_nhwc.discard(var)

    out = tvm.IRModule(dict(mod.functions_items()))
    out["main"] = _ToNHWC(mod).visit_expr(mod["main"])
    return relax.transform.DeadCodeElimination()(relax.transform.Normalize()(out))
