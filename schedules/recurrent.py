"""The recurrence of an LSTM, GRU or RNN layer as one hand-scheduled CPU kernel.

ONNX's recurrent layers split into a part without a time dependence (every step's input
projection ``X·Wᵀ + bias``: one matmul, left to the ordinary pipeline) and the recurrence,
which this module builds. ``recurrence_kernel`` returns one TIR function that loops over
time inside the kernel: per step, the hidden-state matrix-vector product and the gate math
run fused, per block of ``block`` hidden units. A bidirectional layer runs its two directions
on two threads, each through all steps; a one-directional layer spreads each step's blocks
over the threads (one parallel region per step; a GRU without ``linear_before_reset`` needs
two, since its candidate gate reads ``r ⊙ h`` of every unit).
No allocation happens per step: the hidden state ping-pongs between two buffers and the
cell state is updated in place.

Inputs, in order (all float32 but ``lens``):

* ``xw`` [T, B, D, G·H]: the input projection of every step with the biases folded in
  (GRU with ``linear_before_reset``: without the candidate gate's recurrent bias);
* ``rp`` [D, H/block, H, G, block]: the recurrent weights ``R`` packed so that one block's
  gates for one hidden input are contiguous (``pack_recurrent_weights``);
* ``peep`` [D, 3, H] (LSTM peepholes), ``rbh`` [D, H] (GRU candidate recurrent bias),
  ``h0`` [D, B, H], ``c0`` [D, B, H] (LSTM), ``lens`` [B] int32, ``rscale`` [D, H/block, G,
  block] (the scale of each column of int8 ``rp``: ``weight_dtype="int8"``). An input the
  layer does not use is a 1-element placeholder.

Outputs ``y`` [T, D, B, H], ``yh`` [D, B, H], ``yc`` [D, B, H] (a 1-element placeholder
unless LSTM), as ONNX defines them: steps past a sequence's length give zeros in ``y`` and
leave the state alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import tirx
from tvm.script import tirx as T

from schedules.vector_spec import AVX2, VectorSpec

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}  # gate order in W/R/B: LSTM i,o,f,c; GRU z,r,h
DEFAULT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",)}
# ONNX's default alpha/beta where an activation takes them.
ACTIVATION_DEFAULTS = {"Affine": (1.0, 0.0), "LeakyRelu": (0.01, 0.0), "ThresholdedRelu": (1.0, 0.0),
                       "ScaledTanh": (1.0, 1.0), "HardSigmoid": (0.2, 0.5), "Elu": (1.0, 0.0)}
ACTIVATIONS = ("Sigmoid", "Tanh", "Relu", "Softsign", "Softplus", *ACTIVATION_DEFAULTS)


@dataclass(frozen=True)
class Activation:
    name: str  # one of ACTIVATIONS
    alpha: float = 0.0
    beta: float = 0.0


@dataclass(frozen=True)
class RecurrenceSpec:
    """Everything that shapes one recurrence kernel."""

    cell: str  # "LSTM", "GRU" or "RNN"
    steps: int | tirx.PrimExpr  # a TIR variable when the sequence length is known at run time
    batch: int
    hidden: int
    reverse: tuple[bool, ...]  # per direction: runs from the last step to the first
    activations: tuple[tuple[Activation, ...], ...]  # per direction, in ONNX's order (f, g[, h])
    clip: float | None = None
    input_forget: bool = False  # LSTM: f = 1 - i
    peepholes: bool = False  # LSTM
    linear_before_reset: bool = False  # GRU
    has_lens: bool = False
    block: int = 16  # hidden units per task (the vectorized axis)
    # "int8": ``rp`` holds int8 weights and ``rscale`` their per-column float scale; each step
    # reads a quarter of the bytes (a layer's R fits in L2), the sums run in float32
    weight_dtype: str = "float32"

    @property
    def gates(self) -> int:
        return GATES[self.cell]

    @property
    def directions(self) -> int:
        return len(self.reverse)


def block_for(hidden: int, gates: int, vectors: VectorSpec | None = None) -> int:
    """Hidden units per task: as many float32 vectors per gate as keep every gate's
    accumulators in half the registers (AVX-512: 4 × 16 lanes for an LSTM; AVX2 and NEON:
    2 vectors; measured on the 2-layer LSTM benchmark, AVX-512: 64 units 2.6 ms per layer, 32:
    2.9, 16: 3.2), halved until it divides ``hidden``."""
    vectors = vectors or AVX2
    per_gate = max(1, vectors.registers // (2 * gates))
    block = vectors.lanes() * (1 << (per_gate.bit_length() - 1))
    while hidden % block:
        block //= 2
    return block


def pack_recurrent_weights(r, cell: str, block: int):
    """Relax expression: R [D, G·H, H] → [D, H/block, H, G, block] (``rp`` of the kernel)."""
    from tvm import relax

    d, gh, h = (int(v) for v in r.ty.shape.values)
    g = GATES[cell]
    blocked = relax.op.reshape(r, (d, g, h // block, block, h))
    return relax.op.permute_dims(blocked, (0, 2, 4, 1, 3))


def fast_exp(x):
    """exp(x) in float32 by range reduction and a degree-7 polynomial (TOPI's ``fast_exp``,
    written as an expression so it vectorizes inside a hand-written kernel)."""
    f32 = "float32"
    x = tirx.max(tirx.min(x, tirx.const(88.3762626647950, f32)), tirx.const(-88.3762626647949, f32))
    n = tirx.floor(x * tirx.const(1.44269504088896341, f32) + tirx.const(0.5, f32))
    f = x - n * tirx.const(0.6931471805599453, f32)
    p = tirx.const(1.9875691500e-4, f32)
    for c in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        p = p * f + tirx.const(c, f32)
    y = p * f * f + f + tirx.const(1.0, f32)
    two_n = tirx.reinterpret(f32, tirx.shift_left(tirx.Cast("int32", n) + 127, 23))
    return two_n * y


def apply_activation(act: Activation, x):
    """ONNX's recurrent activation functions as TIR expressions."""
    f32 = "float32"
    one = tirx.const(1.0, f32)
    zero = tirx.const(0.0, f32)
    alpha, beta = tirx.const(act.alpha, f32), tirx.const(act.beta, f32)
    if act.name == "Sigmoid":
        return one / (one + fast_exp(-x))
    if act.name == "Tanh":
        return one - tirx.const(2.0, f32) / (fast_exp(x * tirx.const(2.0, f32)) + one)
    if act.name == "Relu":
        return tirx.max(x, zero)
    if act.name == "Affine":
        return alpha * x + beta
    if act.name == "LeakyRelu":
        return tirx.Select(x >= zero, x, alpha * x)
    if act.name == "ThresholdedRelu":
        return tirx.Select(x > alpha, x, zero)
    if act.name == "ScaledTanh":
        return alpha * (one - tirx.const(2.0, f32) / (fast_exp(beta * x * tirx.const(2.0, f32)) + one))
    if act.name == "HardSigmoid":
        return tirx.max(zero, tirx.min(one, alpha * x + beta))
    if act.name == "Elu":
        return tirx.Select(x >= zero, x, alpha * (fast_exp(x) - one))
    if act.name == "Softsign":
        return x / (one + tirx.abs(x))
    if act.name == "Softplus":  # log(1 + e^x), overflow-free
        return tirx.max(x, zero) + tirx.log(one + fast_exp(-tirx.abs(x)))
    raise ValueError(f"unknown recurrent activation {act.name}")


def recurrence_kernel(spec: RecurrenceSpec) -> tirx.PrimFunc:
    """The TIR function computing ``spec``'s recurrence (see the module docstring)."""
    steps, batch, hidden, dirs, gates, block = (spec.steps, spec.batch, spec.hidden, spec.directions,
                                                spec.gates, spec.block)
    if not isinstance(steps, int):  # the kernel's own variable, bound from its input's shape at the call: a
        steps = tirx.Var("steps", "int64")  # length computed from other sizes (an OCR width) cannot be bound
    if hidden % block:
        raise ValueError(f"block {block} does not divide hidden size {hidden}")
    quantized = spec.weight_dtype == "int8"
    blocks = hidden // block
    lstm, gru = spec.cell == "LSTM", spec.cell == "GRU"
    two_phase = gru and not spec.linear_before_reset
    if quantized and two_phase:
        raise ValueError("int8 recurrent weights are supported for LSTM, RNN and GRU with linear_before_reset")
    rscale_shape = (dirs, hidden // block, gates, block) if quantized else (1,)
    peep_shape = (dirs, 3, hidden) if spec.peepholes else (1,)
    rbh_shape = (dirs, hidden) if gru and spec.linear_before_reset else (1,)
    cell_shape = (dirs, batch, hidden) if lstm else (1,)
    gru_shape = (dirs, batch, 2, hidden) if two_phase else (1,)
    # gates whose accumulator starts from xw (a GRU's candidate gate starts from 0 or runs apart)
    from_xw = 2 if gru else gates
    f32 = "float32"

    def reverse(d):
        """Whether direction ``d`` (a TIR expression) runs backwards."""
        if all(spec.reverse) or not any(spec.reverse):
            return tirx.const(spec.reverse[0], "bool")
        return d == spec.reverse.index(True)

    def act(d, index: int, x, clip: bool = True):
        """Activation ``index`` of direction ``d`` on ``x`` (clipped first when ``clip``: gate
        inputs are, an LSTM's cell state before ``h`` is not); directions with different
        functions select."""
        if clip and spec.clip is not None:
            x = tirx.max(tirx.min(x, tirx.const(spec.clip, f32)), tirx.const(-spec.clip, f32))
        per_dir = [apply_activation(a[index], x) for a in spec.activations]
        if all(a[index] == spec.activations[0][index] for a in spec.activations):
            return per_dir[0]
        return tirx.Select(d == 0, per_dir[0], per_dir[1])

    def peephole(peep, d, gate: int, u, c):
        """The peephole term P[gate] ⊙ c (nothing without peepholes)."""
        return peep[d, gate, u] * c if spec.peepholes else tirx.const(0.0, f32)

    def forget(d, i_gate, pre):
        """The forget gate: f(pre), or 1 - i with coupled input and forget gates."""
        return tirx.const(1.0, f32) - i_gate if spec.input_forget else act(d, 0, pre)

    def length(lens, b):
        if isinstance(steps, int):
            return lens[b] if spec.has_lens else tirx.const(steps, "int32")
        # a sequence length known at run time: int64, as Relax's shape variables are
        return tirx.Cast("int64", lens[b]) if spec.has_lens else steps

    # Bidirectional: one thread per direction runs the whole time loop (the directions never
    # meet, so no step needs a barrier); otherwise each step's blocks are spread over the threads
    # (one parallel region per step, about 1.5 µs each). Bidirectional LSTM layer of the speech
    # benchmark (hidden 256, 200 steps, AVX-512, 2 threads): 2.68 ms per step-parallel, 2.29 ms so.
    by_direction = dirs > 1
    outer, inner = (T.parallel, T.serial) if by_direction else (T.serial, T.parallel)

    def unit(task, j):
        return task % blocks * block + j

    # No scalar bindings inside the vectorized loops (TVM's vectorizer keeps them scalar):
    # each gate's value is stored back into its accumulator row instead.
    @T.prim_func(private=True, s_tir=True)
    def recurrence(xw: T.Buffer((steps, batch, dirs, gates * hidden), f32),
                   rp: T.Buffer((dirs, blocks, hidden, gates, block), spec.weight_dtype),
                   peep: T.Buffer(peep_shape, f32), rbh: T.Buffer(rbh_shape, f32),
                   h0: T.Buffer((dirs, batch, hidden), f32), c0: T.Buffer(cell_shape, f32),
                   lens: T.Buffer((batch,), "int32"), rscale: T.Buffer(rscale_shape, f32),
                   y: T.Buffer((steps, dirs, batch, hidden), f32), yh: T.Buffer((dirs, batch, hidden), f32),
                   yc: T.Buffer(cell_shape, f32)):
        T.func_attr({"tirx.noalias": True})
        # a root block holding one opaque block: what TVM's layout-rewrite passes expect of a kernel
        with T.sblock("root"):
            with T.sblock("recurrence"):
                T.reads()  # opaque: nothing schedules this block further
                T.writes()
                hbuf = T.alloc_buffer((2, dirs, batch, hidden), f32)
                zr = T.alloc_buffer(gru_shape, f32)  # GRU without linear_before_reset: z and r ⊙ h
                for d, b, u in T.grid(dirs, batch, hidden):
                    hbuf[0, d, b, u] = h0[d, b, u]
                    if lstm:
                        yc[d, b, u] = c0[d, b, u]
                for part in outer(dirs if by_direction else 1):
                    for t in range(steps):
                        for task_in in inner(blocks if by_direction else dirs * blocks):
                            task = part * blocks + task_in
                            acc = T.alloc_buffer((gates, block), f32, scope="local")
                            for b in range(batch):
                                n = length(lens, b)
                                tt = T.Select(reverse(task // blocks), n - 1 - t, t)
                                cur = t % 2
                                if t < n:
                                    if quantized:  # the int8 products are summed first, then scaled
                                        for g in T.unroll(gates):
                                            for j in T.vectorized(block):
                                                acc[g, j] = T.float32(0)
                                    else:
                                        for g in T.unroll(from_xw):
                                            for j in T.vectorized(block):
                                                acc[g, j] = xw[tt, b, task // blocks, g * hidden + unit(task, j)]
                                        if gru and spec.linear_before_reset:
                                            for j in T.vectorized(block):
                                                acc[2, j] = T.float32(0)
                                    for k in range(hidden):
                                        for g in T.unroll(2 if two_phase else gates):
                                            for j in T.vectorized(block):
                                                acc[g, j] = acc[g, j] + hbuf[cur, task // blocks, b, k] * T.Cast(
                                                    f32, rp[task // blocks, task % blocks, k, g, j])
                                    if quantized:
                                        for g in T.unroll(from_xw):
                                            for j in T.vectorized(block):
                                                acc[g, j] = rscale[task // blocks, task % blocks, g, j] * acc[g, j] + xw[
                                                    tt, b, task // blocks, g * hidden + unit(task, j)]
                                        if gru:  # the candidate gate's recurrent part stays apart
                                            for j in T.vectorized(block):
                                                acc[2, j] = rscale[task // blocks, task % blocks, 2, j] * acc[2, j]
                                    if lstm:  # rows: i, o, f, c
                                        for j in T.vectorized(block):
                                            acc[0, j] = act(task // blocks, 0, acc[0, j] + peephole(
                                                peep, task // blocks, 0, unit(task, j), yc[task // blocks, b, unit(task, j)]))
                                        for j in T.vectorized(block):
                                            acc[2, j] = forget(task // blocks, acc[0, j], acc[2, j] + peephole(
                                                peep, task // blocks, 2, unit(task, j), yc[task // blocks, b, unit(task, j)]))
                                        for j in T.vectorized(block):
                                            yc[task // blocks, b, unit(task, j)] = (
                                                acc[2, j] * yc[task // blocks, b, unit(task, j)]
                                                + acc[0, j] * act(task // blocks, 1, acc[3, j]))
                                        for j in T.vectorized(block):
                                            acc[1, j] = act(task // blocks, 0, acc[1, j] + peephole(
                                                peep, task // blocks, 1, unit(task, j), yc[task // blocks, b, unit(task, j)]))
                                        for j in T.vectorized(block):
                                            hbuf[1 - cur, task // blocks, b, unit(task, j)] = acc[1, j] * act(
                                                task // blocks, 2, yc[task // blocks, b, unit(task, j)], clip=False)
                                    elif gru:  # rows: z, r, h
                                        for g in T.unroll(2):
                                            for j in T.vectorized(block):
                                                acc[g, j] = act(task // blocks, 0, acc[g, j])
                                        if two_phase:
                                            for j in T.vectorized(block):
                                                zr[task // blocks, b, 0, unit(task, j)] = acc[0, j]
                                                zr[task // blocks, b, 1, unit(task, j)] = acc[1, j] * hbuf[
                                                    cur, task // blocks, b, unit(task, j)]
                                        else:
                                            for j in T.vectorized(block):
                                                acc[2, j] = act(task // blocks, 1, xw[
                                                    tt, b, task // blocks, 2 * hidden + unit(task, j)] + acc[1, j] * (
                                                    acc[2, j] + rbh[task // blocks, unit(task, j)]))
                                            for j in T.vectorized(block):
                                                hbuf[1 - cur, task // blocks, b, unit(task, j)] = (
                                                    (T.float32(1) - acc[0, j]) * acc[2, j]
                                                    + acc[0, j] * hbuf[cur, task // blocks, b, unit(task, j)])
                                    else:
                                        for j in T.vectorized(block):
                                            hbuf[1 - cur, task // blocks, b, unit(task, j)] = act(
                                                task // blocks, 0, acc[0, j])
                                    if not two_phase:
                                        for j in T.vectorized(block):
                                            y[tt, task // blocks, b, unit(task, j)] = hbuf[
                                                1 - cur, task // blocks, b, unit(task, j)]
                                else:  # past this sequence's end: zeros out, state kept
                                    for j in T.vectorized(block):
                                        hbuf[1 - cur, task // blocks, b, unit(task, j)] = hbuf[
                                            cur, task // blocks, b, unit(task, j)]
                                        y[t, task // blocks, b, unit(task, j)] = T.float32(0)
                        if two_phase:  # the candidate gate: (r ⊙ h)·R_h, once every unit's r is known
                            for task_in in inner(blocks if by_direction else dirs * blocks):
                                task = part * blocks + task_in
                                acc_h = T.alloc_buffer((block,), f32, scope="local")
                                for b in range(batch):
                                    n = length(lens, b)
                                    tt = T.Select(reverse(task // blocks), n - 1 - t, t)
                                    cur = t % 2
                                    if t < n:
                                        for j in T.vectorized(block):
                                            acc_h[j] = xw[tt, b, task // blocks, 2 * hidden + unit(task, j)]
                                        for k in range(hidden):
                                            for j in T.vectorized(block):
                                                acc_h[j] = acc_h[j] + zr[task // blocks, b, 1, k] * rp[
                                                    task // blocks, task % blocks, k, 2, j]
                                        for j in T.vectorized(block):
                                            acc_h[j] = act(task // blocks, 1, acc_h[j])
                                        for j in T.vectorized(block):
                                            hbuf[1 - cur, task // blocks, b, unit(task, j)] = (
                                                (T.float32(1) - zr[task // blocks, b, 0, unit(task, j)]) * acc_h[j]
                                                + zr[task // blocks, b, 0, unit(task, j)]
                                                * hbuf[cur, task // blocks, b, unit(task, j)])
                                        for j in T.vectorized(block):
                                            y[tt, task // blocks, b, unit(task, j)] = hbuf[
                                                1 - cur, task // blocks, b, unit(task, j)]
                for d, b, u in T.grid(dirs, batch, hidden):
                    yh[d, b, u] = hbuf[steps % 2, d, b, u]

    return recurrence.with_attr("op_pattern", 8).with_attr("tirx.is_scheduled", True).with_attr(
        "kiln.default_schedule", f"{spec.cell}Recurrence")
