"""``SplitParallelBranches``: the model's independent branches as Relax functions that can run side by side.

The Relax VM runs a request's kernels one after another. Where the graph forks into
independent branches that meet again (an Inception module's four branches, a fire module's
two expands, a residual block's projection), those branches could run at the same time on
disjoint cores. This pass finds such regions in ``main`` and adds *stage functions* to the
module: per region, its branches dealt into ``GROUPS`` functions (longest first, each to the
group with least work, by kernel FLOPs), and between regions the sequential parts as one
function each. ``compiler.runtime.BranchRunner`` calls them in order, a region's group functions
on separate threads. ``main`` itself is not changed: a runtime that does not read the plan
(the C API) runs ``main`` as before.

How regions are found, on ``main``'s dataflow block with trivial rebindings removed
(``CanonicalizeBindings``):

- A *cut* is a point between two bindings where at most one value crosses (is defined
  before and used after). A region is what lies between two cuts.
- In a region, a binding that reads no value of the region is a *root*; every binding is
  labelled with the roots it depends on. Bindings with one label form that root's branch;
  bindings with several are the *join* (a concatenation, the add of a residual block), run
  after the branches with the sequential part that follows.
- Producers that write into one concatenation buffer (``WriteConcatInPlace``) form an SSA
  chain of versions; where every intermediate version is read only by the next writer, the
  writers are independent (their slices are disjoint), so they may land in different groups.
  Such a chain, when split between functions, gets its buffer allocated beforehand
  (``R.builtin.alloc_tensor`` in the stage before) and every writer, the first included,
  writes into it in place.

Expects the module after scheduling, before the dataflow lowering (``CallTIRRewrite``); only
static-shape functions with one dataflow block are split. Guarantees: ``main`` unchanged; the
stage functions compute exactly what ``main`` computes (the same kernels on the same
arguments); the plan is the module attribute ``kiln.inter_op_plan`` (JSON, ``StagePlan``).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict

import tvm
from tvm import relax
from tvm.relax import Call, Expr, Var

from compiler.relax_utils.fused_groups import is_op
from compiler.relax_utils.kernel_flops import kernel_flops
from targets.library_format import Stage, StagePlan

log = logging.getLogger(__name__)

PLAN_ATTR = "kiln.inter_op_plan"
STAGE_PREFIX = "kiln_stage"
GROUPS = 2  # groups per region; on more cores each group gets threads // GROUPS


def _reads(expr: Expr) -> list[Var]:
    return list(relax.analysis.free_vars(expr))


def _substituted(expr: Expr, values: dict) -> Expr:
    """``expr`` with its variables replaced by ``values`` (calls, tuples and leaves only)."""
    if isinstance(expr, Var):
        return values[expr]
    if isinstance(expr, relax.Tuple):
        return relax.Tuple([_substituted(f, values) for f in expr.fields])
    if isinstance(expr, relax.TupleGetItem):
        return relax.TupleGetItem(_substituted(expr.tuple_value, values), expr.index)
    if isinstance(expr, Call):
        return Call(expr.op, [_substituted(a, values) for a in expr.args], expr.attrs, expr.ty_args)
    return expr  # constants, shapes, global vars, prim values


def _splittable(binding) -> bool:
    """A binding of calls, tuples and leaves only (no branches, nested blocks or functions)."""

    def ok(expr) -> bool:
        if isinstance(expr, (relax.If, relax.SeqExpr, relax.Function)):
            return False
        if isinstance(expr, relax.Tuple):
            return all(ok(f) for f in expr.fields)
        if isinstance(expr, relax.TupleGetItem):
            return ok(expr.tuple_value)
        if isinstance(expr, Call):
            return all(ok(a) for a in expr.args)
        return True

    return isinstance(binding, relax.VarBinding) and ok(binding.value)


class _Graph:
    """The bindings of one dataflow block, their dependencies and their kernels' FLOPs."""

    def __init__(self, bindings: list, params: list[Var], flops: dict[str, float]):
        self.bindings = bindings
        self.params = params
        self.index = {b.var: i for i, b in enumerate(bindings)}
        n = len(bindings)
        self.deps = [{self.index[v] for v in _reads(b.value) if v in self.index} for b in bindings]
        self.users: dict[int, list[int]] = defaultdict(list)
        for i, deps in enumerate(self.deps):
            for j in deps:
                self.users[j].append(i)
        self.cost = [self._flops(b.value, flops) for b in bindings]
        self.chain = self._concat_chains()
        # the writers of each chain (the chain's id is its first writer)
        self.writers: dict[int, list[int]] = defaultdict(list)
        for i in range(n):
            self.writers[self.chain[i]].append(i)
        self.relaxed = [self._relaxed_deps(i) for i in range(n)]

    @staticmethod
    def _flops(value: Expr, flops: dict[str, float]) -> float:
        if is_op(value, "relax.call_tir") or is_op(value, "relax.call_tir_inplace"):
            return flops.get(value.args[0].name_hint, 0.0)
        return 0.0

    def inplace_source(self, i: int) -> int | None:
        """The binding that defines binding ``i``'s in-place argument, if it has one in this block."""
        value = self.bindings[i].value
        if not is_op(value, "relax.call_tir_inplace") or len(value.attrs.inplace_indices) != 1:
            return None
        return self.index.get(value.args[1].fields[int(value.attrs.inplace_indices[0])])

    def _concat_chains(self) -> list[int]:
        """Each binding's chain id: a writer whose buffer version is read by it alone joins the
        chain of that version's writer (disjoint slices of one buffer), when the chain starts
        with the writer that allocated the buffer (a plain ``call_tir``); every other binding is
        a chain of its own."""
        chain = list(range(len(self.bindings)))
        for i in range(len(self.bindings)):
            source = self.inplace_source(i)
            if (source is not None and self.users[source] == [i]
                    and is_op(self.bindings[chain[source]].value, "relax.call_tir")):
                chain[i] = chain[source]
        return chain

    def _relaxed_deps(self, i: int) -> set[int]:
        """What binding ``i`` must wait for: a writer not for the previous version of its own
        buffer; a reader of a chain's value for every writer of that chain before it."""
        deps = set()
        for j in self.deps[i]:
            if self.chain[j] == self.chain[i] and self.chain[i] != i:
                continue
            deps |= {w for w in self.writers[self.chain[j]] if w < i}
        return deps


def _deal(branches: list[list[int]], cost: list[float], groups: int) -> list[list[int]]:
    """Branches into ``groups`` groups: longest first, each to the group with the least work."""
    loads = [0.0] * groups
    dealt: list[list[int]] = [[] for _ in range(groups)]
    for branch in sorted(branches, key=lambda b: -sum(cost[i] for i in b)):
        g = loads.index(min(loads))
        dealt[g] += branch
        loads[g] += sum(cost[i] for i in branch)
    return [sorted(g) for g in dealt if g]


def _partition(graph: _Graph, groups: int) -> list[list[list[int]]]:
    """The block's bindings as stages: each a list of groups (one group: sequential)."""
    n = len(graph.bindings)
    # how many values cross each point: a value (a chain's buffer counts once) crosses the points
    # after its first binding up to its last use
    first: dict[int, int] = {}
    last_use: dict[int, int] = {}
    for i in range(n):
        first.setdefault(graph.chain[i], i)
        if graph.chain[i] != i:  # a buffer lives at least until its last writer
            last_use[graph.chain[i]] = max(last_use.get(graph.chain[i], -1), i)
        for j in graph.relaxed[i]:
            last_use[graph.chain[j]] = max(last_use.get(graph.chain[j], -1), i)
    change = [0] * (n + 2)
    for c, last in last_use.items():
        change[first[c] + 1] += 1
        change[last + 1] -= 1
    params = set(graph.params)
    param_last_use = {v: i for i, b in enumerate(graph.bindings) for v in _reads(b.value) if v in params}
    for last in param_last_use.values():  # an input crosses every point up to its last use
        change[1] += 1
        change[last + 1] -= 1
    cuts, crossing = [0], 0
    for p in range(1, n + 1):
        crossing += change[p]
        if crossing <= 1:
            cuts.append(p)
    stages: list[list[list[int]]] = []
    for start, end in zip(cuts, cuts[1:]):
        for stage in _split(graph, list(range(start, end)), groups):
            if len(stage) == 1 and stages and len(stages[-1]) == 1:
                stages[-1][0] += stage[0]  # sequential parts next to each other: one function
            else:
                stages.append(stage)
    return stages


def _split(graph: _Graph, members: list[int], groups: int) -> list[list[list[int]]]:
    """``members`` (a region) as stages: its independent branches dealt into groups, then its
    join split the same way (a residual block's two paths after a concatenation's writers)."""
    inside = set(members)
    roots: dict[int, frozenset] = {}
    for i in members:
        inner = [j for j in graph.relaxed[i] if j in inside]
        roots[i] = frozenset().union(*(roots[j] for j in inner)) if inner else frozenset([i])
    branches: dict[int, list[int]] = defaultdict(list)
    join = []
    for i in members:
        if len(roots[i]) == 1:
            branches[next(iter(roots[i]))].append(i)
        else:
            join.append(i)
    dealt = _deal(list(branches.values()), graph.cost, groups)
    if len(dealt) < 2:
        return [[members]]
    return [dealt, *(_split(graph, join, groups) if join else [])]


class _Emitter:
    """Builds the stage functions of a partition into the module."""

    def __init__(self, mod: tvm.IRModule, graph: _Graph, stages: list[list[list[int]]], outputs: list[Var]):
        self.mod = mod
        self.graph = graph
        self.stages = stages
        self.where: dict[int, tuple[int, int]] = {}  # binding -> (stage, group)
        for s, stage in enumerate(stages):
            for g, members in enumerate(stage):
                for i in members:
                    self.where[i] = (s, g)
        # chains whose writers are not all in one function write into a buffer allocated before
        self.split_chains = {c: ws for c, ws in graph.writers.items()
                             if len(ws) > 1 and len({self.where[w] for w in ws}) > 1}
        self.names = {p: p.name for p in graph.params}
        for i in range(len(graph.bindings)):
            self.names[graph.bindings[i].var] = f"v{i}"
        self.outputs = outputs
        self.types = {self.names[p]: p.ty for p in graph.params}  # by plan name
        for b in graph.bindings:
            self.types[self._value_of(b.var)] = b.var.ty

    def _value_of(self, var: Var) -> str:
        """The plan's name of ``var``; a split chain's versions are all its buffer."""
        i = self.graph.index.get(var)
        if i is not None and self.graph.chain[i] in self.split_chains:
            return f"buf{self.graph.chain[i]}"
        return self.names[var]

    def _in_split_chain(self, i: int | None) -> bool:
        return i is not None and self.graph.chain[i] in self.split_chains

    def _function_reads(self, members: list[int]) -> list[str]:
        """The values a function of ``members`` takes: what they read from outside, and the
        buffer of each split chain they write into."""
        inside = set(members)
        reads: list[str] = []
        for i in members:
            names = [self._value_of(v) for v in _reads(self.graph.bindings[i].value)
                     if not (self.graph.index.get(v) in inside and not self._in_split_chain(self.graph.index.get(v)))]
            if self._in_split_chain(i):
                names.append(f"buf{self.graph.chain[i]}")
            reads += [n for n in dict.fromkeys(names) if n not in reads]
        return reads

    def build(self) -> tuple[tvm.IRModule, list[Stage]]:
        reads_of: dict[tuple[int, int], list[str]] = {}
        for s, stage in enumerate(self.stages):
            for g, members in enumerate(stage):
                reads_of[(s, g)] = self._function_reads(members)
        final = [self._value_of(v) for v in self.outputs]
        # each split chain's buffer is allocated by the stage before its first writer's
        allocs: dict[int, list[int]] = defaultdict(list)
        for c, writers in self.split_chains.items():
            allocs[min(self.where[w][0] for w in writers) - 1].append(c)
        if -1 in allocs:  # a chain split in the very first stage: give it a stage of its own
            self.stages.insert(0, [[]])
            self.where = {i: (s + 1, g) for i, (s, g) in self.where.items()}
            reads_of = {(s + 1, g): r for (s, g), r in reads_of.items()}
            reads_of[(0, 0)] = []
            allocs = {s + 1: cs for s, cs in allocs.items()}
        stages = []
        bb = relax.BlockBuilder(self.mod)
        for s, stage in enumerate(self.stages):
            later = {name for (t, _), names in reads_of.items() if t > s for name in names} | set(final)
            functions, inputs, outputs, flops = [], [], [], []
            for g, members in enumerate(stage):
                name = f"{STAGE_PREFIX}{s}" if len(stage) == 1 else f"{STAGE_PREFIX}{s}_{g}"
                # a split chain's writers return nothing: their buffer is passed from its allocation
                produced = [self._value_of(self.graph.bindings[i].var) for i in members if not self._in_split_chain(i)]
                produced += [f"buf{c}" for c in allocs.get(s, [])] if g == 0 else []
                outs = list(dict.fromkeys(p for p in produced if p in later))
                self._emit(bb, name, members, reads_of[(s, g)], outs, allocs.get(s, []) if g == 0 else [])
                functions.append(name)
                inputs.append(reads_of[(s, g)])
                outputs.append(outs)
                flops.append(sum(self.graph.cost[i] for i in members))
            stages.append(Stage(functions, inputs, outputs, flops))
        return bb.get(), stages

    def _emit(self, bb: relax.BlockBuilder, name: str, members: list[int], reads: list[str], outs: list[str],
              allocs: list[int]) -> None:
        graph = self.graph
        params = [Var(r, self.types[r]) for r in reads]
        values: dict[str, Expr] = dict(zip(reads, params))
        with bb.function(name, params, private=False):
            with bb.dataflow():
                for c in allocs:
                    ty = graph.bindings[c].var.ty
                    values[f"buf{c}"] = bb.emit(relax.op.builtin.alloc_tensor(
                        relax.ShapeExpr(ty.shape.values), str(ty.dtype), 0), name_hint=f"buf{c}")
                for i in members:
                    value = graph.bindings[i].value
                    by_var = {v: values[self._value_of(v)] for v in _reads(value)}
                    chain = graph.chain[i]
                    if chain in self.split_chains:
                        if i == chain:  # the first writer allocated the buffer: now it writes into it
                            value = relax.op.call_tir_inplace(value.args[0], relax.Tuple(
                                [*value.args[1].fields, graph.bindings[i].var]), [len(value.args[1].fields)],
                                value.ty)
                            by_var[graph.bindings[i].var] = values[f"buf{chain}"]
                        bb.emit(_substituted(value, by_var), name_hint=f"v{i}")
                        continue
                    values[self._value_of(graph.bindings[i].var)] = bb.emit(_substituted(value, by_var),
                                                                            name_hint=f"v{i}")
                out = bb.emit_output(relax.Tuple([values[o] for o in outs]))
            bb.emit_func_output(out)


def plan_stages(mod: tvm.IRModule, flops: dict[str, float], groups: int = 2) -> tuple[tvm.IRModule, StagePlan | None]:
    """``mod`` with stage functions for ``main``'s independent branches, and their plan; ``mod``
    unchanged and ``None`` where ``main`` has no region of two or more independent branches (or
    is not one static dataflow block)."""
    main = mod["main"]
    canonical = relax.transform.CanonicalizeBindings()(tvm.IRModule({"main": main}))["main"]
    body = canonical.body
    if (not isinstance(body, relax.SeqExpr) or len(body.blocks) != 1
            or not isinstance(body.blocks[0], relax.DataflowBlock)):
        return mod, None
    bindings = list(body.blocks[0].bindings)
    params = list(canonical.params)
    if not all(_splittable(b) for b in bindings) or not all(isinstance(p.ty, relax.TensorType) for p in params):
        return mod, None
    if not all(isinstance(getattr(b.var, "ty", None), (relax.TensorType, relax.TupleType)) for b in bindings):
        return mod, None
    result = body.body
    tuples = {b.var: b.value for b in bindings if isinstance(b.value, relax.Tuple)}
    result = tuples.get(result, result)  # main's results bound as one tuple: its fields
    outputs = list(result.fields) if isinstance(result, relax.Tuple) else [result]
    if not all(isinstance(o, Var) for o in outputs):
        return mod, None
    graph = _Graph(bindings, params, flops)
    stages = _partition(graph, groups)
    if not any(len(stage) > 1 for stage in stages):
        return mod, None
    emitter = _Emitter(mod, graph, stages, outputs)
    mod, built = emitter.build()
    region = 0
    for stage in built:
        if len(stage.functions) > 1:
            stage.region = region
            region += 1
    plan = StagePlan(groups, [p.name for p in params], [emitter._value_of(o) for o in outputs], built)
    log.info("inter-op: %d parallel regions in %d stages", region, len(built))
    return mod, plan


@tvm.transform.module_pass(opt_level=0, name="SplitParallelBranches")
def split_parallel_branches(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """``plan_stages`` with TVM's FLOP estimate of each kernel, ``GROUPS`` groups per region; the
    plan goes to the module attribute ``kiln.inter_op_plan``."""
    split, plan = plan_stages(mod, kernel_flops(mod), GROUPS)
    return split if plan is None else split.with_attr(PLAN_ATTR, json.dumps(plan.to_dict()))
