"""ONNX ``LSTM``, ``GRU`` and ``RNN`` → Relax: one matmul for every step's input projection,
then one recurrence kernel (``schedules.recurrent``) that loops over time.

Expects static ``X`` shapes (sequence length, batch, input size). Covers every attribute of
the ONNX spec: forward / reverse / bidirectional, ``layout`` 0 and 1, ``clip``,
``input_forget``, peepholes, ``linear_before_reset``, ``sequence_lens``,
``initial_h``/``initial_c`` and all activation functions the spec lists, with their
``activation_alpha``/``activation_beta`` consumed in order as ONNX Runtime does.
"""

from __future__ import annotations

from tvm import relax
from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter
from tvm.target import Target

from schedules.recurrent import (ACTIVATION_DEFAULTS, ACTIVATIONS, DEFAULT_ACTIVATIONS, GATES, Activation,
                                 RecurrenceSpec, block_for, pack_recurrent_weights, recurrence_kernel)
from schedules.vector_spec import vector_spec

# How many of activation_alpha / activation_beta each function takes (ONNX Runtime's reading).
_TAKES = {"Affine": (1, 1), "LeakyRelu": (1, 0), "ThresholdedRelu": (1, 0), "ScaledTanh": (1, 1),
          "HardSigmoid": (1, 1), "Elu": (1, 0)}
_CANONICAL = {name.lower(): name for name in ACTIVATIONS}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_activations(cell: str, attr: dict, directions: int) -> tuple[tuple[Activation, ...], ...]:
    """The activation functions per direction, with their alpha/beta."""
    per_dir = len(DEFAULT_ACTIVATIONS[cell])
    names = [_text(a) for a in attr.get("activations", ())] or list(DEFAULT_ACTIVATIONS[cell]) * directions
    if len(names) != per_dir * directions:
        raise ValueError(f"{cell} with {directions} direction(s) needs {per_dir * directions} activations, "
                         f"the node lists {len(names)}")
    alphas, betas = list(attr.get("activation_alpha", ())), list(attr.get("activation_beta", ()))
    acts = []
    for name in names:
        canonical = _CANONICAL.get(name.lower())
        if canonical is None:
            raise ValueError(f"activation '{name}' is not one ONNX allows in {cell} "
                             f"(allowed: {', '.join(ACTIVATIONS)})")
        alpha, beta = ACTIVATION_DEFAULTS.get(canonical, (0.0, 0.0))
        takes_alpha, takes_beta = _TAKES.get(canonical, (0, 0))
        if takes_alpha and alphas:
            alpha = float(alphas.pop(0))
        if takes_beta and betas:
            beta = float(betas.pop(0))
        acts.append(Activation(canonical, alpha, beta))
    return tuple(tuple(acts[d * per_dir:(d + 1) * per_dir]) for d in range(directions))


def _static_shape(expr: relax.Expr, what: str, symbolic_first: bool = False) -> list:
    """The dimensions of ``expr`` as ints; with ``symbolic_first`` the first may be a TIR expression
    (a sequence length known at run time)."""
    shape = getattr(expr.ty, "shape", None)
    values = getattr(shape, "values", None)
    if values is None or not all(hasattr(v, "value") for v in values[1 if symbolic_first else 0:]):
        raise ValueError(f"{what} needs a static shape{' apart from its sequence length' if symbolic_first else ''} "
                         "(fix the input sizes with --input-shape)")
    return [int(v.value) if hasattr(v, "value") else v for v in values]


def _zeros(shape, dtype: str = "float32") -> relax.Expr:
    return relax.op.zeros(relax.ShapeExpr(list(shape)), dtype)


def convert_recurrent(cell: str, bb: relax.BlockBuilder, inputs, attr: dict,
                      int8_r: tuple[relax.Expr, relax.Expr] | None = None) -> relax.Expr:
    """The Relax expression of one ONNX recurrent node (a tuple of its outputs).

    ``int8_r``: the recurrent weights as (int8 [D, G·H, H], float32 scale per row [D, G·H]);
    the kernel then reads int8 weights (``RecurrenceSpec.weight_dtype``), ``inputs[2]`` unused."""
    gates = GATES[cell]
    target = Target.current(allow_none=True)
    if target is not None and target.kind.name != "llvm":
        raise ValueError(f"{cell} layers compile for CPU targets only (the recurrence kernel has no "
                         f"{target.kind.name} schedule yet)")
    x, w, r = inputs[0], inputs[1], inputs[2]
    bias = inputs[3] if len(inputs) > 3 else None
    lens = inputs[4] if len(inputs) > 4 else None
    h0 = inputs[5] if len(inputs) > 5 else None
    c0 = inputs[6] if cell == "LSTM" and len(inputs) > 6 else None
    peep = inputs[7] if cell == "LSTM" and len(inputs) > 7 else None
    if _text(getattr(x.ty, "dtype", "float32")) != "float32":
        raise ValueError(f"{cell} is supported in float32 (X is {x.ty.dtype})")
    direction = _text(attr.get("direction", b"forward"))
    reverse = {"forward": (False,), "reverse": (True,), "bidirectional": (False, True)}.get(direction)
    if reverse is None:
        raise ValueError(f"direction '{direction}' is not forward, reverse or bidirectional")
    dirs = len(reverse)
    layout = int(attr.get("layout", 0))
    if layout == 1:  # X [B, T, I] → [T, B, I]; initial states [B, D, H] → [D, B, H]
        x = bb.normalize(relax.op.permute_dims(x, (1, 0, 2)))
        h0 = relax.op.permute_dims(h0, (1, 0, 2)) if h0 is not None else None
        c0 = relax.op.permute_dims(c0, (1, 0, 2)) if c0 is not None else None
    steps, batch, in_size = _static_shape(x, f"{cell} input X", symbolic_first=True)
    w_dirs, gh, w_in = _static_shape(w, f"{cell} weights W")
    hidden = int(attr.get("hidden_size", gh // gates))
    if (w_dirs, gh, w_in) != (dirs, gates * hidden, in_size):
        raise ValueError(f"{cell} W has shape {[w_dirs, gh, w_in]}, expected {[dirs, gates * hidden, in_size]}")
    lbr = cell == "GRU" and bool(attr.get("linear_before_reset", 0))
    clip = float(attr["clip"]) if "clip" in attr else None
    spec = RecurrenceSpec(
        cell=cell, steps=steps, batch=batch, hidden=hidden, reverse=reverse,
        activations=parse_activations(cell, attr, dirs), clip=clip,
        input_forget=cell == "LSTM" and bool(attr.get("input_forget", 0)), peepholes=peep is not None,
        linear_before_reset=lbr, has_lens=lens is not None, weight_dtype="int8" if int8_r else "float32",
        block=block_for(hidden, gates, vector_spec(target) if target is not None else None))

    # Every step's input projection: [T·B, I] · [I, D·G·H] + the biases that add to it.
    w_all = relax.op.reshape(relax.op.permute_dims(w, (2, 0, 1)), (in_size, dirs * gates * hidden))
    xw = relax.op.matmul(relax.op.reshape(x, (steps * batch, in_size)), w_all)
    rbh = _zeros((1,))
    if bias is not None:
        w_bias = relax.op.strided_slice(bias, axes=[1], begin=[0], end=[gates * hidden])
        r_bias = relax.op.strided_slice(bias, axes=[1], begin=[gates * hidden], end=[2 * gates * hidden])
        if lbr:  # the candidate gate's recurrent bias is added after the reset gate multiplies
            rbh = relax.op.strided_slice(r_bias, axes=[1], begin=[2 * hidden], end=[3 * hidden])
            r_bias = relax.op.concat(
                [relax.op.strided_slice(r_bias, axes=[1], begin=[0], end=[2 * hidden]), _zeros((dirs, hidden))],
                axis=1)
        xw = relax.op.add(xw, relax.op.reshape(relax.op.add(w_bias, r_bias), (dirs * gates * hidden,)))
    elif lbr:
        rbh = _zeros((dirs, hidden))
    xw = relax.op.reshape(xw, (steps, batch, dirs, gates * hidden))

    cell_shape = (dirs, batch, hidden) if cell == "LSTM" else (1,)
    rscale = _zeros((1,))
    if int8_r is not None:
        r, scale = int8_r
        blocks = hidden // spec.block  # scale per row of R → [D, H/block, G, block], as the kernel reads it
        rscale = relax.op.permute_dims(relax.op.reshape(scale, (dirs, gates, blocks, spec.block)), (0, 2, 1, 3))
    args = [
        xw,
        pack_recurrent_weights(r, cell, spec.block),
        relax.op.reshape(peep, (dirs, 3, hidden)) if peep is not None else _zeros((1,)),
        rbh,
        h0 if h0 is not None else _zeros((dirs, batch, hidden)),
        c0 if c0 is not None else _zeros(cell_shape),
        relax.op.astype(lens, "int32") if lens is not None else _zeros((batch,), "int32"),
        rscale,
    ]
    kernel = bb.add_func(recurrence_kernel(spec), f"{cell.lower()}_recurrence")
    out = bb.emit(relax.call_tir(kernel, [bb.normalize(a) for a in args], [
        relax.TensorType((steps, dirs, batch, hidden), "float32"),
        relax.TensorType((dirs, batch, hidden), "float32"),
        relax.TensorType(cell_shape, "float32")]))
    y, yh, yc = (relax.TupleGetItem(out, i) for i in range(3))
    if layout == 1:  # Y [B, T, D, H], Y_h / Y_c [B, D, H]
        y = relax.op.permute_dims(y, (2, 0, 1, 3))
        yh = relax.op.permute_dims(yh, (1, 0, 2))
        yc = relax.op.permute_dims(yc, (1, 0, 2)) if cell == "LSTM" else yc
    outputs = [y, yh, yc] if cell == "LSTM" else [y, yh]
    return relax.Tuple([bb.normalize(o) for o in outputs])


class LSTM(OnnxOpConverter):
    @classmethod
    def _impl_v7(cls, bb, inputs, attr, params):
        return convert_recurrent("LSTM", bb, inputs, attr)


class GRU(OnnxOpConverter):
    @classmethod
    def _impl_v7(cls, bb, inputs, attr, params):
        return convert_recurrent("GRU", bb, inputs, attr)


class RNN(OnnxOpConverter):
    @classmethod
    def _impl_v7(cls, bb, inputs, attr, params):
        return convert_recurrent("RNN", bb, inputs, attr)
