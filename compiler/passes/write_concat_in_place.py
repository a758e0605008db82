"""``WriteConcatInPlace``: the kernels that produce a concatenation's inputs write into its buffer.

A concatenation kernel copies every input into one new tensor: a full read and write of the
result, and one launch. Inception and SqueezeNet concatenate the outputs of conv kernels;
DenseNet concatenates every layer's features onto the growing block tensor (each
``concat(c[k-1], f[k])`` copies all features so far). Here the producers write their results
straight into their slice of one shared buffer instead, and the concatenation is gone:

- the first writer allocates the buffer (``call_tir``) and fills its slice; every later writer
  fills its slice in place (``call_tir_inplace`` on the latest version of the buffer), so the
  writes are one SSA chain in binding order and the last version *is* the concatenation;
- a concatenation that only feeds another one along the same axis (DenseNet's chain) is
  absorbed: it is a slice of the outer buffer, and so is every producer that feeds it;
- other kernels that read a value now living in a slice (DenseNet's batch-norms read every
  intermediate concatenation) read it from the buffer: a copy from the slice is prepended to
  their group and ``FuseTIR`` merges it, so the schedule rules inline it into the first load;
- an input that no kernel of this block produces (a function parameter, a constant, a tensor
  used elsewhere in ways this pass does not redirect) is copied into its slice by a small kernel.

Expects the module right after ``FuseOps`` (static shapes; kernels as ``call_tir`` or
``Primitive`` groups). Guarantees the same values: every slice is written exactly once, before
any kernel reads it, and slices never overlap, so a reader of one slice is unaffected by writes
to the others. A concatenation is rewritten only when the kernels it saves are at least the
copies it adds (it always moves fewer bytes). The groups it replaces are left unreferenced for
``FuseTIR`` and ``DeadCodeElimination`` to drop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import tvm
import tvm_ffi
from tvm import relax, te, tirx, topi
from tvm.relax import Call, DataflowVar, Expr, PyExprMutator, Var, expr_functor

from compiler.relax_utils.fused_groups import (
    Uses,
    build_group,
    emit_kernel,
    group_function,
    is_kernel_call,
    is_op,
    kernel_args,
    static_shape,
)

log = logging.getLogger(__name__)


def concat_axis(mod: tvm.IRModule, value: Expr) -> int | None:
    """The axis when ``value`` calls a kernel that is exactly a concatenation of its tensor arguments.

    Checks the kernel against the concatenation TVM's legalization builds for these shapes
    (structurally, names and attributes aside): a kernel is never taken for a concat by name.
    """
    if not is_op(value, "relax.call_tir") or len(value.args) != 2 or not isinstance(value.args[1], relax.Tuple):
        return None
    prim = mod[value.args[0]]
    args = list(value.args[1].fields)
    shapes = [static_shape(a) for a in args]
    out = static_shape(value)
    if not isinstance(prim, tirx.PrimFunc) or out is None or len(args) < 2 or any(s is None for s in shapes):
        return None
    dtypes = {str(a.ty.dtype) for a in args} | {str(value.ty.dtype)}
    if len(dtypes) != 1 or any(len(s) != len(out) for s in shapes):
        return None
    dtype = dtypes.pop()
    for axis in range(len(out)):
        if sum(s[axis] for s in shapes) != out[axis]:
            continue
        if any(s[d] != out[d] for s in shapes for d in range(len(out)) if d != axis):
            continue
        inputs = [te.placeholder([tirx.IntImm("int64", d) for d in s], dtype) for s in shapes]
        expected = te.create_prim_func([*inputs, topi.concatenate(inputs, axis)])
        got = prim
        for key in ("op_pattern", "global_symbol"):
            got = got.without_attr(key)
        if tvm_ffi.structural_equal(got, expected.without_attr("global_symbol")):
            return axis
    return None


def slice_copy(small: tuple[int, ...], big: tuple[int, ...], axis: int, offset: int, dtype: str,
               write: bool) -> tirx.PrimFunc:
    """A kernel copying a ``small`` tensor into (``write``) or out of the slice of ``big`` at ``offset`` along ``axis``."""
    n = len(small)
    vs = [f"v{i}" for i in range(n)]
    loops = ", ".join(f"i{i}" for i in range(n))
    inner = ", ".join(vs)
    outer = ", ".join(f"{v} + T.int64({offset})" if i == axis and offset else v for i, v in enumerate(vs))
    dims = {name: ", ".join(f"T.int64({d})" for d in shape) for name, shape in (("small", small), ("big", big))}
    params = [f'{name}: T.Buffer(({dims[name]},), "{dtype}")' for name in (("small", "big") if write else ("big", "small"))]
    dst, src, dst_idx, src_idx = ("big", "small", outer, inner) if write else ("small", "big", inner, outer)
    source = f'''
@T.prim_func(private=True, s_tir=True)
def func({", ".join(params)}):
    T.func_attr({{"tirx.noalias": True}})
    for {loops} in T.grid({dims["small"]}):
        with T.sblock("{"write" if write else "read"}_slice"):
            {inner}{"," if n == 1 else ""} = T.axis.remap("{"S" * n}", [{loops}])
            T.reads({src}[{src_idx}])
            T.writes({dst}[{dst_idx}])
            {dst}[{dst_idx}] = {src}[{src_idx}]
'''
    return tvm.script.from_source(source)


@dataclass
class _Buffer:
    """One shared buffer: the root concatenation, the concatenations it absorbs, what lives in it."""

    root: Var
    axis: int
    ty: relax.TensorType
    offset: dict[Var, int] = field(default_factory=dict)  # absorbed concats and placed values
    concats: list[Var] = field(default_factory=list)  # root first
    placed: set[Var] = field(default_factory=set)  # values whose producer writes its slice
    copies: dict[Var, list[tuple[Expr, int]]] = field(default_factory=dict)  # concat -> (input, offset) to copy

    def members(self) -> set[Var]:
        return set(self.offset) | {self.root}


class _Planner:
    """Decides, for one dataflow block, which concatenations become shared buffers."""

    def __init__(self, mod: tvm.IRModule, block: relax.DataflowBlock):
        self.mod = mod
        self.bindings = {b.var: (i, b.value) for i, b in enumerate(block.bindings) if isinstance(b, relax.VarBinding)}
        self.uses = Uses.of_block(mod, block)
        self.axes = {var: axis for var, (_, value) in self.bindings.items()
                     if (axis := concat_axis(mod, value)) is not None}
        self.taken: set[Var] = set()

    def _readers_ok(self, var: Var, consumer: Var, times: int = 1) -> bool:
        """``var`` is used ``times`` times by ``consumer`` and otherwise only as a kernel argument."""
        if not isinstance(var, DataflowVar):
            return False
        at = self.bindings[consumer][0]
        by_consumer = [u for u in self.uses.of(var) if u[0] == at]
        others = [u for u in self.uses.of(var) if u[0] != at]
        return len(by_consumer) == times and all(pos >= 0 for _, pos in others)

    def _placeable(self, var: Expr, consumer: Var) -> bool:
        return (isinstance(var, Var) and var in self.bindings and var not in self.taken
                and is_kernel_call(self.mod, self.bindings[var][1]) and self._readers_ok(var, consumer))

    def _fill(self, buf: _Buffer, concat: Var, base: int) -> None:
        _, value = self.bindings[concat]
        offset = base
        for arg in value.args[1].fields:
            size = static_shape(arg)[buf.axis]
            if (isinstance(arg, Var) and self.axes.get(arg) == buf.axis and arg not in self.taken
                    and self._readers_ok(arg, concat)):
                self.taken.add(arg)
                buf.offset[arg] = offset
                buf.concats.append(arg)
                self._fill(buf, arg, offset)
            elif self._placeable(arg, concat):
                self.taken.add(arg)
                buf.offset[arg] = offset
                buf.placed.add(arg)
            else:
                buf.copies.setdefault(concat, []).append((arg, offset))
            offset += size

    def _demote_self_readers(self, buf: _Buffer) -> None:
        """A producer that also reads this buffer would read and write it in one kernel: copy its value instead."""
        members = buf.members()
        for var in sorted(buf.placed, key=lambda v: self.bindings[v][0]):
            if any(isinstance(a, Var) and a in members for a in kernel_args(self.bindings[var][1])):
                buf.placed.discard(var)
                owner = next(c for c in buf.concats if any(a.same_as(var) for a in self.bindings[c][1].args[1].fields))
                buf.copies.setdefault(owner, []).append((var, buf.offset.pop(var)))
                self.taken.discard(var)

    def plan(self) -> list[_Buffer]:
        buffers = []
        for root in sorted(self.axes, key=lambda v: -self.bindings[v][0]):  # outermost first
            if root in self.taken:
                continue
            self.taken.add(root)
            buf = _Buffer(root, self.axes[root], self.bindings[root][1].ty, concats=[root])
            self._fill(buf, root, 0)
            self._demote_self_readers(buf)
            copies = sum(len(c) for c in buf.copies.values())
            if buf.placed and copies <= len(buf.concats):
                buffers.append(buf)
            else:
                self.taken -= buf.members()
        return buffers


@expr_functor.mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, buffers: list[_Buffer]):
        super().__init__(mod)
        self.mod = mod
        self.buffers = buffers
        self.owner: dict[Var, _Buffer] = {}
        for buf in buffers:
            for var in buf.members():
                self.owner[var] = buf
        self.latest: dict[int, Var] = {}  # id(buffer) -> its latest version
        self.kernels: dict[tuple, tvm.ir.GlobalVar] = {}

    # -- helpers ---------------------------------------------------------------------------
    def _slice_kernel(self, small: relax.TensorType, buf: _Buffer, offset: int, write: bool) -> tvm.ir.GlobalVar:
        key = (static_shape(small), static_shape(buf.ty), buf.axis, offset, str(small.dtype), write)
        if key not in self.kernels:
            func = slice_copy(key[0], key[1], buf.axis, offset, key[4], write)
            self.kernels[key] = self.builder_.add_func(func, "write_slice" if write else "read_slice")
        return self.kernels[key]

    def _resolve(self, args: list[Expr]) -> tuple[list[Expr], dict[int, tuple[_Buffer, Var]]]:
        """New arguments: a value living in a buffer slice becomes that buffer (to be sliced in the group)."""
        new, sliced = [], {}
        for i, arg in enumerate(args):
            buf = self.owner.get(arg) if isinstance(arg, Var) else None
            if buf is not None and not arg.same_as(buf.root):
                sliced[i] = (buf, arg)
                new.append(self.latest[id(buf)])
            else:
                new.append(self.visit_expr(arg))
        return new, sliced

    def _emit(self, name: str, value: Call | None, args: list[Expr], write: tuple[_Buffer, Var, int] | None) -> Var:
        """Emit one group computing ``value`` (or just passing ``args[0]`` on) with slice reads and a slice write."""
        new_args, sliced = self._resolve(args)
        small = {i: orig.ty for i, (_, orig) in sliced.items()}
        reads = {i: self._slice_kernel(small[i], buf, buf.offset[orig], False) for i, (buf, orig) in sliced.items()}
        inplace = write is not None and id(write[0]) in self.latest
        if write is not None:
            buf, _, offset = write
            result_ty = value.ty if value is not None else args[0].ty
            writer = self._slice_kernel(result_ty, buf, offset, True)
            if inplace:
                new_args.append(self.latest[id(buf)])
        types = [a.ty for a in new_args]

        def body(bb: relax.BlockBuilder, params: list[Var]) -> Expr:
            ins = [bb.emit(relax.op.call_tir(reads[i], relax.Tuple([p]), small[i])) if i in reads else p
                   for i, p in enumerate(params[: len(args)])]
            out = emit_kernel(bb, self.mod, value, ins) if value is not None else ins[0]
            if write is None:
                return out
            if inplace:
                return bb.emit(relax.op.call_tir_inplace(writer, relax.Tuple([out, params[-1]]), [1], write[0].ty))
            return bb.emit(relax.op.call_tir(writer, relax.Tuple([out]), write[0].ty))

        gv = self.builder_.add_func(build_group(name, types, body), name)
        var = self.builder_.emit(Call(gv, new_args), name)
        if write is not None:
            self.latest[id(write[0])] = var
        return var

    @staticmethod
    def _name(mod: tvm.IRModule, value: Call) -> str:
        return value.op.name_hint if group_function(mod, value) is not None else value.args[0].name_hint

    # -- bindings --------------------------------------------------------------------------
    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        var, value = binding.var, binding.value
        buf = self.owner.get(var)
        if buf is not None and var in buf.placed:
            self._emit(f"{self._name(self.mod, value)}_into_concat", value, kernel_args(value),
                       (buf, var, buf.offset[var]))
            return
        if buf is not None:  # a concatenation of this buffer: copy what no producer wrote
            for arg, offset in buf.copies.get(var, []):
                self._emit("copy_into_concat", None, [arg], (buf, var, offset))
            if var.same_as(buf.root):
                latest = self.latest[id(buf)]
                if isinstance(var, DataflowVar):
                    self.set_var_remap(var, latest)
                else:
                    self.set_var_remap(var, self.builder_.emit_output(latest, var.name))
            return
        if is_kernel_call(self.mod, value) and any(
                isinstance(a, Var) and a in self.owner and not a.same_as(self.owner[a].root) for a in kernel_args(value)):
            self.set_var_remap(var, self._emit(f"{self._name(self.mod, value)}_from_concat", value,
                                               kernel_args(value), None))
            return
        super().visit_var_binding_(binding)


@tvm.transform.module_pass(opt_level=0, name="WriteConcatInPlace")
def write_concat_in_place(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Make the producers of each concatenation write into its buffer (see the module docstring)."""
    for gv, func in list(mod.functions_items()):
        if not isinstance(func, relax.Function) or (func.attrs is not None and "Primitive" in func.attrs):
            continue
        if not isinstance(func.body, relax.SeqExpr):
            continue
        buffers = []
        for block in func.body.blocks:
            if isinstance(block, relax.DataflowBlock):
                buffers += _Planner(mod, block).plan()
        if not buffers:
            continue
        rewriter = _Rewriter(mod, buffers)
        new = rewriter.visit_expr(func)
        rewriter.builder_.update_func(gv, new)
        mod = rewriter.builder_.get()
        log.debug("%s: %d concatenations written in place", gv.name_hint, sum(len(b.concats) for b in buffers))
    return mod
