"""``QuantizedLookup``: a quantize that is a function of one 8-bit tensor becomes a 256-entry table.

ONNX Runtime's QDQ models put a quantize/dequantize pair around every elementwise op of an
activation: HardSwish ``x * relu6(x + 3) / 6`` from a uint8 ``q`` is ``DQ(q) -> +3 -> Q -> DQ
-> * -> Q -> DQ -> /6 -> Q``, four quantizes per element in the conv's epilogue (the PP-OCR
classifier's QDQ model). Everything after ``q`` depends on ``q`` alone, and ``q`` takes 256
values: the result is ``take(table, q)``, the table computed once at compile time — what
ONNX Runtime does for such chains (its lookup-table QLinear ops).

A chain qualifies when its root is a ``quantize`` to an 8-bit type, and walking its inputs
through elementwise ops (``CHAIN_OPS``) with scalar constants reaches exactly one 8-bit
tensor (the leaf) of the root's shape; an 8-bit tensor that is itself such a chain is walked
through. The tables are computed by TVM itself (one small module for all chains, built for
the host), with the same operator definitions as the kernels. Expects Relax after
``LowerQDQ``/``HoistQuantize``; a module without such chains is returned unchanged. The
values equal the chain's up to float contraction (an FMA in one build and not the other may
move a value sitting exactly on a rounding boundary by one step).
"""

from __future__ import annotations

import logging

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import Constant, GenericConst

from compiler.quantization.layers import dtype_of, emit_like, op_name

log = logging.getLogger(__name__)

CHAIN_OPS = {"relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum", "relax.minimum",
             "relax.clip", "relax.nn.relu", "relax.sigmoid", "relax.tanh", "relax.round", "relax.astype",
             "relax.quantize", "relax.dequantize"}
EIGHT_BIT = ("uint8", "int8")



def _scalar(arg: relax.Expr) -> bool:
    if isinstance(arg, GenericConst):
        return arg.value.numpy().size == 1
    return isinstance(arg, Constant)  # a PrimValue (clip's bounds)


class _Chains:
    """Finds each qualifying root's leaf (see the module doc)."""

    def __init__(self, bindings: dict) -> None:
        self.bindings = bindings

    def leaves(self, var: relax.Var, root: bool = False) -> set | None:
        """The non-constant 8-bit tensors ``var`` is a function of, walking through chain ops."""
        value = self.bindings.get(var)
        walkable = op_name(value) in CHAIN_OPS and all(
            isinstance(a, relax.Var) or _scalar(a) for a in value.args)
        if walkable:
            found: set = set()
            for arg in value.args:
                if isinstance(arg, relax.Var):
                    inner = self.leaves(arg)
                    if inner is None:
                        return None if root or dtype_of(var) not in EIGHT_BIT else {var}
                    found |= inner
            if found:
                return found
        return None if root or dtype_of(var) not in EIGHT_BIT else {var}

    def leaf(self, root: relax.Var) -> relax.Var | None:
        value = self.bindings.get(root)
        if op_name(value) != "relax.quantize" or dtype_of(root) not in EIGHT_BIT:
            return None
        found = self.leaves(root, root=True)
        if not found or len(found) != 1:
            return None
        (leaf,) = found
        same_shape = [int(d) for d in leaf.ty.shape.values] == [int(d) for d in root.ty.shape.values]
        return leaf if same_shape and leaf is not root else None


def _replay(bindings: dict, root: relax.Var, leaf: relax.Var, table_input: relax.Var, builder) -> relax.Expr:
    """Emit the chain from ``leaf`` to ``root`` again, on ``table_input`` (all 256 leaf values)."""
    done: dict = {leaf: table_input}

    def emit(var):
        if var in done:
            return done[var]
        call = bindings[var]
        args = [emit(a) if isinstance(a, relax.Var) else a for a in call.args]
        if op_name(call) in ("relax.quantize", "relax.dequantize"):  # 1-D now: the axis is 0
            op = relax.op.quantize if op_name(call) == "relax.quantize" else relax.op.dequantize
            out = builder.emit(op(args[0], args[1], args[2], axis=0, out_dtype=str(call.attrs.out_dtype)))
        else:
            out = builder.emit(relax.Call(call.op, args, call.attrs))
        done[var] = out
        return out

    return emit(root)


def _tables(bindings: dict, chains: list[tuple[relax.Var, relax.Var]]) -> list[np.ndarray]:
    """Each chain evaluated on all 256 values of its leaf's type, by TVM on the host."""
    builder = relax.BlockBuilder()
    inputs = {dtype: relax.Var(f"all_{dtype}", relax.TensorType([256], dtype)) for dtype in EIGHT_BIT}
    with builder.function("main", list(inputs.values())):
        with builder.dataflow():
            outs = [_replay(bindings, root, leaf, inputs[dtype_of(leaf)], builder) for root, leaf in chains]
            result = builder.emit_output(relax.Tuple(outs))
        builder.emit_func_output(result)
    mod = builder.get()
    with tvm.transform.PassContext(opt_level=3):
        executable = tvm.compile(mod, "llvm")
    vm = relax.VirtualMachine(executable, tvm.cpu())
    values = [np.arange(256).astype(np.uint8), (np.arange(256) - 128).astype(np.int8)]
    outputs = vm["main"](*[tvm.runtime.tensor(v) for v in values])
    return [np.asarray(o.numpy()) for o in outputs]


def _index_of(leaf_dtype: str):
    """The table index of a leaf value: uint8 as it is, int8 shifted by 128 (the table starts at -128)."""
    return (lambda q: relax.op.astype(q, "int32")) if leaf_dtype == "uint8" else \
        (lambda q: relax.op.add(relax.op.astype(q, "int32"), relax.const(128, "int32")))


@tvm.transform.module_pass(opt_level=0, name="QuantizedLookup")
def quantized_lookup(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Replace every qualifying quantize chain by a table lookup (see the module doc)."""
    if "main" not in [gv.name_hint for gv in mod.get_global_vars()]:
        return mod
    func = mod["main"]
    bindings = {b.var: b.value for block in func.body.blocks for b in block.bindings
                if isinstance(b, relax.VarBinding)}
    finder = _Chains(bindings)
    chains = [(var, leaf) for var in bindings
              if (leaf := finder.leaf(var)) is not None and _has_work(bindings, var, leaf)]
    if not chains:
        return mod
    tables = dict(zip([root for root, _ in chains], _tables(bindings, chains)))
    leaves = dict(chains)

    @relax.expr_functor.mutator
    class _Lookup(relax.PyExprMutator):
        def visit_var_binding_(self, binding):
            if binding.var not in tables:
                return super().visit_var_binding_(binding)
            leaf = self.visit_expr(leaves[binding.var])
            index = self.builder_.emit(_index_of(dtype_of(leaves[binding.var]))(leaf))
            lookup = relax.op.take(relax.const(tables[binding.var]), index, axis=0, mode="clip")  # always in range
            self.set_var_remap(binding.var, emit_like(self.builder_, lookup, binding.var))

    out = tvm.IRModule(dict(mod.functions_items()))
    out["main"] = _Lookup(mod).visit_expr(func)
    log.info("%d quantize chains became 256-entry lookup tables", len(chains))
    return relax.transform.DeadCodeElimination()(relax.transform.Normalize()(out))


def _has_work(bindings: dict, root: relax.Var, leaf: relax.Var) -> bool:
    """More than a lone requantize: a table pays off once the chain holds an op between quantizes."""
    ops, stack, seen = 0, [root], set()
    while stack:
        var = stack.pop()
        if var is leaf or var in seen or var not in bindings:
            continue
        seen.add(var)
        ops += op_name(bindings[var]) not in ("relax.quantize", "relax.dequantize")
        stack += [a for a in bindings[var].args if isinstance(a, relax.Var)]
    return ops > 0
