"""``ConvertConvLayout``: float conv2d computed in the layout the target's kernels want.

TVM's ONNX importer gives NCHW convolutions. A target preset names its preferred
activation layout (``TargetPreset.conv_layout``): NCHW keeps the graph as it is; NHWC runs
TVM's ``ConvertLayout`` so every float conv2d (weights OHWI) and the layout-agnostic ops
between them (bias, activations, pooling, concat, residual adds) work in NHWC, with one
transpose at the graph's input and one at its output instead of one per conv; constant
weights and biases are transposed at compile time.

Expects a Relax module after kiln's simplification steps (batch-norm folded), before INT8
quantization: kiln quantizes the converted graph, so its int8 convolutions are NHWC too (4
consecutive channels contiguous, which the int8 dot-product kernels read in place).
``NCHWc`` (blocked channels, ``compiler.relax_utils.blocked_conv``): each float conv2d whose
input and output channels are multiples of the target's vector width ``b`` computes in
``NCHW{b}c`` with weights ``OIHW{b}i{b}o``; the others (an RGB first layer, depthwise)
stay NCHW, with a layout transform where the two meet.

Guarantees the same values. Leaves a module that already has int8 convolutions (a
pre-quantized QDQ model, lowered during simplification) unchanged: ``Int8ConvLayout``
(``compiler.passes.int8_conv_layout``) converts those.
"""

from __future__ import annotations

import tvm
from tvm import relax

from compiler.relax_utils.blocked_conv import blocked_layouts, can_block
from targets.registry import CONV_LAYOUTS

_KERNEL_LAYOUT = {"NHWC": "OHWI"}


def _has_int8_conv(mod: tvm.IRModule) -> bool:
    found = False

    def visit(expr) -> None:
        nonlocal found
        if (isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == "relax.nn.conv2d"
                and "int" in str(expr.args[0].ty.dtype)):
            found = True

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return found


def _blocked_where_possible(block: int):
    """``ConvertLayout``'s per-call callback: blocked layouts for the convs that can take them."""

    def layouts(call: relax.Call) -> dict:
        if call.op.name != "relax.nn.conv2d":
            return {}
        return {"relax.nn.conv2d": blocked_layouts(block) if can_block(call, block) else ["NCHW", "OIHW"]}

    return layouts


def convert_conv_layout(layout: str, block: int = 8) -> tvm.transform.Pass:
    """A pass computing float conv2d in ``layout`` (``CONV_LAYOUTS``); see the module doc.
    ``block``: the channel block of ``NCHWc`` (the target's float32 vector width)."""
    if layout not in CONV_LAYOUTS:
        raise ValueError(f"conv layout must be one of {', '.join(CONV_LAYOUTS)}, not {layout!r}")

    @tvm.transform.module_pass(opt_level=0, name="ConvertConvLayout")
    def _convert(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        if layout == "NCHW" or _has_int8_conv(mod):
            return mod
        if layout == "NCHWc":
            converted = relax.transform.ConvertLayout({}, _blocked_where_possible(block))(mod)
        else:
            converted = relax.transform.ConvertLayout({"relax.nn.conv2d": [layout, _KERNEL_LAYOUT[layout]]})(mod)
        # ConvertLayout transposes a tensor once per consumer (SqueezeNet's input feeds a conv and a
        # concat): one transpose is enough. Constant weights and biases are transposed right here.
        converted = relax.transform.EliminateCommonSubexpr()(relax.transform.Normalize()(converted))
        return relax.transform.FoldConstant()(converted)

    return _convert
