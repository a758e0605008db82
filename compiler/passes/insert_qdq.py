"""``InsertQDQ``: fake-quantize every planned layer, the first half of INT8 lowering.

Expects a module after kiln's simplification steps and a ``QuantizationPlan`` from
calibration (``compiler.quantization``). For every quantizable layer
(``compiler.quantization.layers``) not kept in FP32 it quantizes the data input per tensor
(uint8; zero point 0 when calibration never saw a negative value) — per channel for depthwise
convs calibrated so (one zero point, each channel its own scale: channel c only meets weight c,
so int32 accumulation stays exact) — and the constant weight per output channel (symmetric
int8, ``weight_bits`` wide; rounded to nearest, or as the plan's ``rounded_weights`` say: GPTQ,
``compiler.quantization.gptq``), and feeds the layer dequantized copies: the same QDQ form ONNX
Runtime's QDQ models import to, which ``LowerQDQ`` turns into int8 math.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from compiler.quantization.layers import (const, conv_attrs_without_padding, conv_pad_width, emit_like, find_layers,
                                          sole_bias_adds)
from compiler.quantization.plan import PROBE_PARAM, QuantizationPlan, activation_zero_points, probed_layers
from compiler.quantization.weights import quantize_weight, weight_rounding_shift


def insert_qdq(plan: QuantizationPlan, probe: bool = False) -> tvm.transform.Pass:
    """Fake-quantize every planned layer (see module doc).

    ``probe=True`` builds a sensitivity probe instead: every planned layer computes both its
    quantized and its FP32 result, and ``main`` takes one more input, ``kiln_keep_fp32``
    (bool, one entry per layer in ``probed_layers`` order), that picks the FP32 result where
    set (after the layer's bias add, so the quantized bias still folds into int32). One build
    then answers "what if these layers stayed FP32" for any set as a build with those layers in
    ``keep_fp32`` would (same int8 kernels, same FP32 convs; kernels fused differently can
    round a requantized value the other way: relative output differences ~1e-5).
    """

    @tvm.transform.module_pass(opt_level=0, name="InsertQDQ")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        found = find_layers(mod, plan.onnx_model)
        layers = {layer.output: layer for layer in found}
        switch = {name: i for i, name in enumerate(probed_layers(plan, found))}
        mask = relax.Var(PROBE_PARAM, relax.TensorType([len(switch)], "bool")) if probe else None
        # The probe switches after a layer's bias add, which LowerQDQ folds into the int32 accumulator.
        bias_adds = sole_bias_adds(mod["main"], set(layers)) if probe or plan.bias_correction else {}
        absorbed = {binding.var for binding in bias_adds.values()} if probe else set()

        @relax.expr_functor.mutator
        class _Insert(relax.PyExprMutator):
            def __init__(self, module):
                super().__init__(module)
                self.quantized_inputs: dict = {}  # original data var -> per-tensor dequantized var (shared)
                self.corrected_biases: dict = {}  # bias add var -> its bias minus the weight-rounding shift

            def visit_var_binding_(self, binding):
                if binding.var in absorbed:
                    return None  # emitted with its layer (probe)
                if binding.var in self.corrected_biases:
                    value = relax.op.add(self.visit_expr(binding.value.args[0]), self.corrected_biases[binding.var])
                    self.set_var_remap(binding.var, emit_like(self.builder_, value, binding.var))
                    return None
                layer = layers.get(binding.var)
                if layer is None or layer.name not in switch:
                    return super().visit_var_binding_(binding)
                call = binding.value
                rng = plan.ranges[layer.name]
                source = data = self.visit_expr(call.args[0])
                per_channel = rng.channels is not None and layer.depthwise
                attrs = call.attrs
                if per_channel and any(int(p) for p in attrs.padding):
                    # Each channel has its own zero point: pad in float (0.0 quantizes to each
                    # channel's zero point), so the int8 conv needs no padding value of its own.
                    data = self.builder_.emit(relax.op.nn.pad(data, conv_pad_width(attrs, layer.data_layout)))
                    attrs = conv_attrs_without_padding(attrs)
                # A per-channel (possibly pre-padded) input is its depthwise layer's own: not shared.
                dq = None if per_channel else self.quantized_inputs.get(call.args[0])
                if dq is None:
                    dtype, zeros = activation_zero_points(rng, plan.signed_activations, per_channel)
                    if per_channel:  # depthwise: channel c only meets weights of channel c
                        scale, zero, axis = const(rng.channel_scales()), const(zeros), layer.channel_axis
                    else:
                        scale, zero, axis = const(rng.scale, "float32"), const(zeros), -1
                    q = self.builder_.emit(relax.op.quantize(data, scale, zero, axis=axis, out_dtype=dtype))
                    dq = self.builder_.emit(relax.op.dequantize(q, scale, zero, axis=axis, out_dtype="float32"))
                    if not per_channel:
                        self.quantized_inputs[call.args[0]] = dq
                weight = layer.weight.value.numpy()
                axis = layer.weight_axis
                rounded = plan.rounded_weights.get(layer.name)
                if rounded is None:
                    wq, wscale = quantize_weight(weight, axis, plan.weight_bits)
                else:
                    wq, wscale = rounded
                    if layer.op == "conv2d":  # OIHW -> this conv's kernel layout
                        wq = np.ascontiguousarray(wq.transpose(["OIHW".index(c) for c in layer.kernel_layout]))
                wdq = self.builder_.emit(relax.op.dequantize(
                    const(wq), const(wscale), const(np.zeros(len(wscale), np.int8)), axis=axis,
                    out_dtype="float32"))
                new_value = relax.Call(call.op, [dq, wdq], attrs, call.ty_args)
                add = bias_adds.get(binding.var)
                corrected_bias = None
                if plan.bias_correction and add is not None and layer.name in plan.input_means:
                    shape = [1] * weight.ndim
                    shape[axis] = -1
                    shift = weight_rounding_shift(layer, weight, wq * wscale.reshape(shape),
                                                  plan.input_means[layer.name], call.attrs)
                    bias = add.value.args[1].value.numpy()
                    if bias.size == shift.size:
                        corrected_bias = const((bias - shift.reshape(bias.shape)).astype(bias.dtype))
                        if mask is None:
                            self.corrected_biases[add.var] = corrected_bias
                if mask is None:
                    self.set_var_remap(binding.var, emit_like(self.builder_, new_value, binding.var))
                    return None
                quantized = self.builder_.emit(new_value)
                fp32 = self.builder_.emit(relax.Call(call.op, [source, self.visit_expr(call.args[1])],
                                                     call.attrs, call.ty_args))
                replaced = binding.var
                if add is not None:
                    bias = self.visit_expr(add.value.args[1])
                    quantized_bias = bias if corrected_bias is None else corrected_bias
                    quantized = self.builder_.emit(relax.op.add(quantized, quantized_bias))
                    fp32 = self.builder_.emit(relax.op.add(fp32, bias))
                    replaced = add.var
                keep = relax.op.take(mask, const(switch[layer.name], "int64"), axis=0, mode="clip")
                self.set_var_remap(replaced, emit_like(self.builder_, relax.op.where(keep, fp32, quantized),
                                                        replaced))

        mutator = _Insert(mod)
        out = tvm.IRModule(dict(mod.functions_items()))
        main = mutator.visit_expr(mod["main"])
        if mask is not None:
            main = relax.Function([*main.params, mask], main.body, main.ret_ty, is_pure=True,
                                  attrs=main.attrs)
        out["main"] = main
        return relax.transform.Normalize()(out)

    return _pass
