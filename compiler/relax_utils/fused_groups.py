"""Reading and rebuilding the kernel groups that ``relax.transform.FuseOps`` leaves for ``FuseTIR``.

After ``FuseOps`` every kernel of a Relax function is bound either as ``R.call_tir(prim, args)``
(a kernel alone) or as a call to a private Relax function marked ``Primitive`` whose body is a
chain of ``call_tir`` (a group, merged into one TIR kernel by ``FuseTIR``). kiln's fusion passes
change what goes into a kernel by rebuilding such groups: extra ``call_tir`` bindings before
(read) or after (write) the original body, or the bodies of two groups one after the other.
``FuseTIR`` then merges whatever a group holds, as it does for ``FuseOps``' own groups.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import tvm
from tvm import relax
from tvm.relax import Call, Expr, Var

PRIMITIVE = "Primitive"  # the attribute FuseOps puts on the groups FuseTIR merges


def is_op(expr: Expr, name: str) -> bool:
    return isinstance(expr, Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == name


def group_function(mod: tvm.IRModule, value: Expr) -> relax.Function | None:
    """The Primitive Relax function ``value`` calls, when ``value`` is a call to a FuseOps group."""
    if not (isinstance(value, Call) and isinstance(value.op, tvm.ir.GlobalVar)):
        return None
    func = mod[value.op] if value.op in mod.get_global_vars() else None
    if isinstance(func, relax.Function) and func.attrs is not None and PRIMITIVE in func.attrs:
        return func
    return None


def is_kernel_call(mod: tvm.IRModule, value: Expr) -> bool:
    """A group call or a plain ``call_tir`` (not in place) with one tensor result."""
    if not isinstance(getattr(value, "ty", None), relax.TensorType):
        return False
    if is_op(value, "relax.call_tir"):
        return len(value.args) == 2 and isinstance(value.args[1], relax.Tuple)
    return group_function(mod, value) is not None


def kernel_args(value: Call) -> list[Expr]:
    """The tensor arguments of a kernel call (``is_kernel_call``)."""
    return list(value.args[1].fields) if is_op(value, "relax.call_tir") else list(value.args)


def static_shape(expr_or_ty) -> tuple[int, ...] | None:
    ty = expr_or_ty if isinstance(expr_or_ty, relax.TensorType) else getattr(expr_or_ty, "ty", None)
    if not isinstance(ty, relax.TensorType) or not isinstance(ty.shape, relax.ShapeExpr):
        return None
    dims = []
    for d in ty.shape.values:
        if not isinstance(d, tvm.tirx.IntImm):
            return None
        dims.append(int(d.value))
    return tuple(dims)


@dataclass
class Uses:
    """Where each variable of one dataflow block is used: (binding index, argument position) per use.

    A use that is not a direct argument of a kernel call (inside a tuple, a non-kernel
    expression, the block's outputs) is recorded with position ``-1``.
    """

    at: dict[Var, list[tuple[int, int]]]

    @classmethod
    def of_block(cls, mod: tvm.IRModule, block: relax.BindingBlock) -> "Uses":
        at: dict[Var, list[tuple[int, int]]] = defaultdict(list)
        for i, binding in enumerate(block.bindings):
            value = binding.value
            if isinstance(binding, relax.VarBinding) and is_kernel_call(mod, value):
                for pos, arg in enumerate(kernel_args(value)):
                    if isinstance(arg, Var):
                        at[arg].append((i, pos))
                    else:
                        for v in relax.analysis.free_vars(arg):
                            at[v].append((i, -1))
                continue
            for v in relax.analysis.free_vars(value):
                at[v].append((i, -1))
        return cls(at)

    def of(self, var: Var) -> list[tuple[int, int]]:
        return self.at.get(var, [])


def _body_into(bb: relax.BlockBuilder, func: relax.Function, args: list[Expr]) -> Expr:
    """Emit ``func``'s bindings (a group body) into ``bb``'s current dataflow block, params bound to ``args``."""
    copy = relax.utils.copy_with_new_vars(func)
    bound = copy.bind_params(dict(zip(copy.params, args)))
    body = bound.body
    for block in body.blocks:
        for binding in block.bindings:
            bb.emit_normalized(binding)
    return body.body


def emit_kernel(bb: relax.BlockBuilder, mod: tvm.IRModule, value: Call, args: list[Expr]) -> Expr:
    """Emit the computation of kernel call ``value`` on ``args`` (group body inlined, or its call_tir)."""
    func = group_function(mod, value)
    if func is not None:
        return _body_into(bb, func, args)
    return bb.emit(relax.op.call_tir(value.args[0], relax.Tuple(args), value.ty))


def build_group(name: str, param_types: list[relax.TensorType], body: Callable[[relax.BlockBuilder, list[Var]], Expr]
                ) -> relax.Function:
    """A new Primitive group: ``body(bb, params)`` emits its bindings and returns its result."""
    bb = relax.BlockBuilder()
    params = [Var(f"p{i}", ty) for i, ty in enumerate(param_types)]
    with bb.function(name, params, attrs={PRIMITIVE: True}, private=True):
        with bb.dataflow():
            out = bb.emit_output(body(bb, params))
        gv = bb.emit_func_output(out)
    return bb.get()[gv]

