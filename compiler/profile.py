"""``kiln profile``: where a compiled library spends its time, kernel by kernel.

One run of the library goes through the Relax VM with an instrument hook. Before each kernel
call the hook times that kernel alone, on the very arguments the VM is about to pass (real
shapes, real data, the library's thread count), with TVM's ``time_evaluator``: the median of
``repeat`` timings, each at least ``min_repeat_ms`` long. Then each kernel is timed again as it
runs in sequence, inside ordinary runs of the whole library: its inputs come from the kernel
before it and its weights from wherever the last run left them, so the difference to the time
alone is what running in the network costs it (``cache_ms``). The VM's own calls (allocation,
shape checks, reshapes as views) are not kernels; what the kernels in sequence do not account
for of those runs (slower than plain ones: the hook runs Python around every VM call) is
``vm_ms``.

With an ONNX model as reference, ONNX Runtime's per-node profile of the same model, same
thread count, sits beside it, both grouped by operator class (convolution, matmul, pooling,
…), so a class where kiln loses shows up as one line.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from targets.errors import InputError
from compiler.runtime import CompiledModel, time_calls

# Operator classes of kiln kernels, tried in order: the first whose keyword a kernel name
# contains wins ("fused_conv2d_add_relu" is a conv). A kernel is "data movement" only when
# every op in its name moves data ("fused_squeeze_multiply_add_power_divide", an LRN, is not).
KERNEL_CLASSES = [
    ("recurrent", ("recurrence", "lstm", "gru", "rnn")),
    ("conv", ("conv",)),
    ("matmul", ("matmul", "dense", "gemm")),
    ("pool", ("pool",)),
    ("softmax", ("softmax",)),
    ("normalization", ("norm", "power", "sqrt", "mean", "variance")),  # sqrt: LRN after PowerAsRoots
]
DATA_MOVEMENT_OPS = {"concatenate", "concat", "split", "transpose", "reshape", "layout", "transform", "pad", "take",
                     "gather", "strided", "slice", "squeeze", "expand", "dims", "flatten", "copy", "resize", "image",
                     "broadcast", "to", "tile", "repeat", "into", "prepacked", "fused", "cast"}
ORT_CLASSES = {
    "recurrent": {"LSTM", "GRU", "RNN", "DynamicQuantizeLSTM"},
    "conv": {"Conv", "FusedConv", "QLinearConv", "ConvInteger", "NhwcFusedConv", "ConvTranspose"},
    "matmul": {"MatMul", "Gemm", "FusedMatMul", "FusedGemm", "MatMulInteger", "QLinearMatMul",
               "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QGemm"},
    "pool": {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "QLinearAveragePool",
             "QLinearGlobalAveragePool", "ReduceMean"},
    "softmax": {"Softmax", "LogSoftmax"},
    "normalization": {"BatchNormalization", "LayerNormalization", "InstanceNormalization", "LRN",
                      "SimplifiedLayerNormalization", "SkipLayerNormalization"},
    "data movement": {"Concat", "Split", "Transpose", "Reshape", "Flatten", "Pad", "Gather", "Slice", "Squeeze",
                      "Unsqueeze", "ReorderInput", "ReorderOutput", "Resize", "Expand", "Tile", "Identity",
                      "DepthToSpace", "SpaceToDepth"},
}
OTHER = "elementwise and other"


def kernel_class(kernel_name: str) -> str:
    """The operator class of a kiln kernel, from its name."""
    name = kernel_name.lower()
    for cls, keywords in KERNEL_CLASSES:
        if any(k in name for k in keywords):
            return cls
    ops = {part.rstrip("0123456789") for part in name.split("_")} - {""}
    return "data movement" if ops and ops <= DATA_MOVEMENT_OPS else OTHER


def ort_class(op_type: str) -> str:
    """The operator class of an ONNX Runtime node, from its op type."""
    for cls, ops in ORT_CLASSES.items():
        if op_type in ops:
            return cls
    return OTHER


@dataclass
class KernelTime:
    """One kernel of the library: its time per call alone, and over all its calls in one run."""

    name: str
    op_class: str
    calls: int
    ms_per_call: float
    total_ms: float
    share: float  # of the end-to-end median
    schedule: str  # "default:<rule>", "tuned", "tuned:<rule>", "naive", or "" when the library does not say
    flops: float | None  # per call, TVM's estimate on the scheduled kernel; None when unknown
    arguments: list[str] = field(default_factory=list)  # "float32[1x64x56x56]" per argument
    in_sequence_ms: float | None = None  # all its calls of one run, each timed inside whole runs

    @property
    def sequence_over_alone(self) -> float | None:
        """In-sequence time over time alone: above 1 when the network's cold caches slow it down."""
        return self.in_sequence_ms / self.total_ms if self.in_sequence_ms is not None and self.total_ms > 0 else None

    @property
    def gflops_per_s(self) -> float | None:
        return self.flops / self.ms_per_call / 1e6 if self.flops and self.ms_per_call > 0 else None


@dataclass
class ClassTime:
    """One operator class: kiln's kernels and ONNX Runtime's nodes of that class."""

    op_class: str
    kiln_ms: float
    kiln_kernels: int
    ort_ms: float | None = None
    ort_nodes: int | None = None

    @property
    def ratio(self) -> float | None:
        return self.kiln_ms / self.ort_ms if self.ort_ms and self.kiln_kernels else None


@dataclass
class OrtProfile:
    """ONNX Runtime's own per-node profile: median over runs of each node's kernel time."""

    end_to_end_ms: float  # median of its "model_run" events (profiling on)
    end_to_end_unprofiled_ms: float  # p50 of a session without profiling, same inputs and threads
    nodes: list[dict]  # {"name", "op_type", "op_class", "ms"}, slowest first

    @property
    def node_sum_ms(self) -> float:
        return sum(n["ms"] for n in self.nodes)


@dataclass
class Profile:
    """Where a library spends its time (see the module docstring)."""

    library: str
    threads: int
    end_to_end_ms: float
    kernels: list[KernelTime]  # slowest first
    repeat: int
    rounds: int = 1
    machine: dict = field(default_factory=dict)  # compiler.benchmark.Machine.to_json()
    reference: OrtProfile | None = None
    instrumented_ms: float | None = None  # end-to-end median of the runs that timed kernels in sequence

    @property
    def kernel_sum_ms(self) -> float:
        return sum(k.total_ms for k in self.kernels)

    @property
    def other_ms(self) -> float:
        """End-to-end time the kernels timed alone do not account for: what running in sequence
        costs them and the VM's calls (``cache_ms`` and ``vm_ms``, which come from the slower runs
        that timed the kernels in sequence, so they add up to ``instrumented_ms``, not to this)."""
        return self.end_to_end_ms - self.kernel_sum_ms

    @property
    def in_sequence_sum_ms(self) -> float | None:
        times = [k.in_sequence_ms for k in self.kernels]
        return None if any(t is None for t in times) else sum(times)

    @property
    def cache_ms(self) -> float | None:
        """What running in sequence costs the kernels: their in-sequence sum minus their sum alone
        (inputs and weights no longer in the caches; negative when they run faster in sequence)."""
        seq = self.in_sequence_sum_ms
        return None if seq is None else seq - self.kernel_sum_ms

    @property
    def vm_ms(self) -> float | None:
        """Time outside the kernels in the runs that timed them in sequence: the VM's own calls
        (allocation, shape checks, views) and the timing hook's."""
        seq = self.in_sequence_sum_ms
        return None if seq is None or self.instrumented_ms is None else self.instrumented_ms - seq

    def classes(self) -> list[ClassTime]:
        """kiln's kernels and (with a reference) ONNX Runtime's nodes per operator class, slowest first."""
        rows: dict[str, ClassTime] = {}
        for k in self.kernels:
            row = rows.setdefault(k.op_class, ClassTime(k.op_class, 0.0, 0))
            row.kiln_ms += k.total_ms
            row.kiln_kernels += k.calls
        if self.reference is not None:
            for node in self.reference.nodes:
                row = rows.setdefault(node["op_class"], ClassTime(node["op_class"], 0.0, 0))
                row.ort_ms = (row.ort_ms or 0.0) + node["ms"]
                row.ort_nodes = (row.ort_nodes or 0) + 1
        return sorted(rows.values(), key=lambda r: -max(r.kiln_ms, r.ort_ms or 0.0))

    def to_json(self) -> dict:
        data = {
            "library": self.library, "threads": self.threads, "machine": self.machine, "repeat": self.repeat,
            "rounds": self.rounds,
            "end_to_end_ms": self.end_to_end_ms, "kernel_sum_ms": self.kernel_sum_ms, "other_ms": self.other_ms,
            "in_sequence_sum_ms": self.in_sequence_sum_ms, "cache_ms": self.cache_ms, "vm_ms": self.vm_ms,
            "instrumented_ms": self.instrumented_ms,
            "kernels": [dict(asdict(k), gflops_per_s=k.gflops_per_s, sequence_over_alone=k.sequence_over_alone)
                        for k in self.kernels],
            "classes": [dict(asdict(c), ratio=c.ratio) for c in self.classes()],
        }
        if self.reference is not None:
            data["onnxruntime"] = {"end_to_end_ms": self.reference.end_to_end_ms,
                                   "end_to_end_unprofiled_ms": self.reference.end_to_end_unprofiled_ms,
                                   "node_sum_ms": self.reference.node_sum_ms, "nodes": self.reference.nodes}
        return data


def _describe_argument(value) -> str:
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"{value.dtype}[{'x'.join(str(int(d)) for d in value.shape)}]"
    return type(value).__name__


def time_kernels(model: CompiledModel, inputs: dict[str, np.ndarray], repeat: int = 5,
                 min_repeat_ms: int = 5) -> dict[str, tuple[list[float], list[str]]]:
    """Each kernel call of one run, timed alone: name → (ms of each call, argument descriptions).

    Runs the library once through the VM with an instrument hook; before each call of a kernel
    (any function of the library's kernel module, not a ``vm.builtin``) the hook times it on
    the arguments the VM is about to pass."""
    kernels = model._executable.imports[0]
    evaluators: dict[str, object] = {}
    timed: dict[str, tuple[list[float], list[str]]] = {}

    def instrument(_func, symbol, before_run, _ret, *args):
        if before_run and kernels.implements_function(symbol):
            if symbol not in evaluators:
                evaluators[symbol] = kernels.time_evaluator(symbol, model.device, number=1, repeat=repeat,
                                                            min_repeat_ms=min_repeat_ms)
            seconds = evaluators[symbol](*args).results
            entry = timed.setdefault(symbol, ([], [_describe_argument(a) for a in args]))
            entry[0].append(float(np.median(seconds)) * 1e3)
        return 0  # VMInstrumentReturnKind.NO_OP: run the call as usual

    tensors = model._to_device(model._ordered_arrays(inputs))
    with model._lock:
        model._vm.set_instrument(instrument)
        try:
            model._main(*tensors)
        finally:
            model._vm.set_instrument(None)
    return timed


def time_in_sequence(model: CompiledModel, inputs: dict[str, np.ndarray], runs: int = 10,
                     warmup: int = 2) -> tuple[dict[str, list[float]], float]:
    """Each kernel call timed as it runs inside whole runs of the library: (name → ms of each of
    its calls in one run, the median over ``runs`` runs after ``warmup`` untimed ones; the median
    time of those runs).

    An instrument hook reads the clock just before and just after each kernel call, so a time
    includes the call's own overhead (microseconds) but none of the VM's work between kernels.
    The hook runs Python around every VM call: those runs are slower than plain ones, and their
    time minus the kernels' is the VM's work plus the hook's."""
    kernels = model._executable.imports[0]
    samples: dict[str, list[float]] = defaultdict(list)
    started = [0.0]

    def instrument(_func, symbol, before_run, _ret, *args):
        if kernels.implements_function(symbol):
            if before_run:
                started[0] = time.perf_counter()
            else:
                samples[symbol].append((time.perf_counter() - started[0]) * 1e3)
        return 0  # VMInstrumentReturnKind.NO_OP: run the call as usual

    runs = max(runs, 1)
    tensors = model._to_device(model._ordered_arrays(inputs))
    with model._lock:
        for _ in range(warmup):
            model._main(*tensors)
        run_ms = []
        model._vm.set_instrument(instrument)
        try:
            for _ in range(runs):
                start = time.perf_counter()
                model._main(*tensors)
                run_ms.append((time.perf_counter() - start) * 1e3)
        finally:
            model._vm.set_instrument(None)
    per_call = {name: [float(x) for x in np.median(np.asarray(t).reshape(runs, len(t) // runs), axis=0)]
                for name, t in samples.items()}
    return per_call, float(np.median(run_ms))


def profile_library(model: CompiledModel, inputs: dict[str, np.ndarray] | None = None, repeat: int = 5,
                    runs: int = 30, reference: str | Path | None = None, rounds: int = 3) -> Profile:
    """Profile ``model`` (see the module docstring); ``reference``: the ONNX model to profile
    with ONNX Runtime beside it.

    ``rounds`` rounds each time the whole library (``runs`` calls) and then every kernel call;
    the end-to-end time is the median of the rounds' p50s and each kernel call's time the median
    over the rounds, so a slow moment of a shared machine spoils one round, not the profile."""
    from compiler.benchmark import describe_machine

    inputs = inputs if inputs is not None else model.random_inputs(seed=0)
    call = model.timed_call(inputs)
    block_p50s, per_round, in_sequence, instrumented = [], [], [], []
    for _ in range(max(rounds, 1)):
        block_p50s.append(time_calls(call, runs).p50_ms)
        per_call, run_ms = time_in_sequence(model, inputs, runs)
        in_sequence.append(per_call)
        instrumented.append(run_ms)
        per_round.append(time_kernels(model, inputs, repeat))
    end_to_end = float(np.median(block_p50s))
    timed = {name: ([float(np.median(samples)) for samples in zip(*(r[name][0] for r in per_round))], arguments)
             for name, (_, arguments) in per_round[0].items()}
    sequence_ms = {name: float(np.median([sum(r[name]) for r in in_sequence])) for name in in_sequence[0]}
    schedules = model.metadata.extra.get("kernel_schedules", {})
    flops = model.metadata.extra.get("kernel_flops", {})
    kernels = []
    for name, (times, arguments) in timed.items():
        total = float(sum(times))
        kernels.append(KernelTime(name=name, op_class=kernel_class(name), calls=len(times),
                                  ms_per_call=total / len(times), total_ms=total, share=total / end_to_end,
                                  schedule=schedules.get(name, ""), flops=flops.get(name), arguments=arguments,
                                  in_sequence_ms=sequence_ms.get(name)))
    kernels.sort(key=lambda k: -k.total_ms)
    ort = None
    if reference is not None:
        ort = profile_onnxruntime(reference, inputs, model.threads, runs,
                                  fixed=model.metadata.extra.get("input_values"))
    return Profile(library=str(model.path), threads=model.threads, end_to_end_ms=end_to_end, kernels=kernels,
                   repeat=repeat, rounds=max(rounds, 1), machine=describe_machine().to_json(), reference=ort,
                   instrumented_ms=float(np.median(instrumented)))


def profile_onnxruntime(model, inputs: dict[str, np.ndarray], threads: int, runs: int,
                        fixed: dict | None = None, warmup: int = 3) -> OrtProfile:
    """ONNX Runtime's per-node profile (``SessionOptions.enable_profiling``) of ``model`` (a path
    or a ModelProto) over ``runs`` runs after ``warmup`` untimed ones: each node's median kernel time, and the median ``model_run``."""
    import onnxruntime as ort

    from compiler.reference import OnnxRuntimeReference

    plain = OnnxRuntimeReference(model, threads, fixed)  # the same model without profiling, for its end-to-end time
    feed = {**plain.fixed, **inputs}
    with tempfile.TemporaryDirectory(prefix="kiln-ort-profile-") as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        data = model.SerializeToString() if hasattr(model, "SerializeToString") else Path(model).read_bytes()
        session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        try:
            for _ in range(warmup + runs):
                session.run(None, feed)
        except Exception as err:  # onnxruntime's own error types: a model that does not accept these inputs
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise InputError(f"ONNX Runtime could not run the reference model on these inputs: {first}") from None
        events = json.loads(Path(session.end_profiling()).read_text())
    return parse_ort_trace(events, skip_runs=warmup, unprofiled_ms=plain.benchmark(inputs, runs, warmup).p50_ms)


def parse_ort_trace(events: list[dict], skip_runs: int, unprofiled_ms: float) -> OrtProfile:
    """An ``OrtProfile`` from ONNX Runtime's trace events, leaving out the first ``skip_runs`` runs."""
    run_events = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                        key=lambda e: e["ts"])
    if len(run_events) <= skip_runs:
        raise ValueError(f"the ONNX Runtime trace has {len(run_events)} runs; expected more than {skip_runs}")
    measured = run_events[skip_runs:]
    start = measured[0]["ts"]
    per_node: dict[str, list[float]] = defaultdict(list)
    op_types: dict[str, str] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < start:
            continue
        node = e["name"][: -len("_kernel_time")]
        per_node[node].append(e["dur"] / 1e3)
        op_types[node] = e.get("args", {}).get("op_name", "")
    nodes = [{"name": n, "op_type": op_types[n], "op_class": ort_class(op_types[n]),
              # a node that ran k times per model run (inside a loop) counts k times
              "ms": float(np.median(t)) * len(t) / len(measured)}
             for n, t in per_node.items()]
    nodes.sort(key=lambda n: -n["ms"])
    return OrtProfile(end_to_end_ms=float(np.median([e["dur"] for e in measured])) / 1e3,
                      end_to_end_unprofiled_ms=unprofiled_ms, nodes=nodes)


def format_profile(profile: Profile, top: int | None = None) -> str:
    """The profile as text: kernels slowest first, then the operator classes (beside ONNX Runtime's)."""
    lines = [f"{profile.library}: {profile.threads} threads, end-to-end p50 {profile.end_to_end_ms:.3f} ms; "
             f"each kernel timed alone (median of {profile.repeat}, then of {profile.rounds} rounds) "
             f"and in sequence, inside whole runs",
             "",
             f"{'kernel':<48} {'calls':>5} {'ms/call':>9} {'total ms':>9} {'share':>6} {'GFLOP/s':>8} "
             f"{'in seq':>9} {'seq/alone':>9}  schedule"]

    def in_sequence(ms: float | None, alone: float) -> str:
        return f"{ms:>9.3f} {ms / alone:>8.2f}x" if ms is not None and alone > 0 else f"{'-':>9} {'-':>9}"

    shown = profile.kernels if top is None else profile.kernels[:top]
    for k in shown:
        rate = f"{k.gflops_per_s:8.1f}" if k.gflops_per_s is not None else f"{'-':>8}"
        lines.append(f"{k.name[:48]:<48} {k.calls:>5} {k.ms_per_call:>9.3f} {k.total_ms:>9.3f} "
                     f"{k.share:>6.1%} {rate} {in_sequence(k.in_sequence_ms, k.total_ms)}  {k.schedule or '-'}")
    hidden = profile.kernels[len(shown):]
    if hidden:
        ms = sum(k.total_ms for k in hidden)
        seq = None if any(k.in_sequence_ms is None for k in hidden) else sum(k.in_sequence_ms for k in hidden)
        lines.append(f"{f'({len(hidden)} more kernels)':<48} {sum(k.calls for k in hidden):>5} {'':>9} {ms:>9.3f} "
                     f"{ms / profile.end_to_end_ms:>6.1%} {'':>8} {in_sequence(seq, ms)}")
    e2e = profile.end_to_end_ms
    lines.append(f"{'kernels, sum':<48} {sum(k.calls for k in profile.kernels):>5} {'':>9} "
                 f"{profile.kernel_sum_ms:>9.3f} {profile.kernel_sum_ms / e2e:>6.1%} {'':>8} "
                 f"{in_sequence(profile.in_sequence_sum_ms, profile.kernel_sum_ms)}")
    if profile.vm_ms is not None:
        lines += [f"{'in sequence, not alone (inputs, weights not cached)':<48} {'':>5} {'':>9} "
                  f"{profile.cache_ms:>9.3f} {profile.cache_ms / e2e:>6.1%}",
                  f"{'VM calls between kernels, timing hook':<48} {'':>5} {'':>9} {profile.vm_ms:>9.3f} "
                  f"{profile.vm_ms / e2e:>6.1%}",
                  f"(the runs that timed kernels in sequence took {profile.instrumented_ms:.3f} ms, "
                  f"plain runs {e2e:.3f} ms)"]
    else:
        lines.append(f"{'other (VM calls between kernels, cache effects)':<48} {'':>5} {'':>9} "
                     f"{profile.other_ms:>9.3f} {profile.other_ms / e2e:>6.1%}")
    lines.append("")
    ort = profile.reference
    header = f"{'operator class':<24} {'kiln ms':>9} {'kernels':>7}"
    if ort is not None:
        header += f" {'ORT ms':>9} {'nodes':>6} {'kiln/ORT':>8}"
    lines.append(header)
    for c in profile.classes():
        line = f"{c.op_class:<24} {c.kiln_ms:>9.3f} {c.kiln_kernels:>7}"
        if ort is not None:
            line += (f" {c.ort_ms:>9.3f} {c.ort_nodes:>6}" if c.ort_ms is not None else f" {'-':>9} {'-':>6}")
            line += f" {c.ratio:>7.2f}x" if c.ratio is not None else f" {'-':>8}"
        lines.append(line)
    if ort is not None:
        lines += [f"{'all kernels / nodes':<24} {profile.kernel_sum_ms:>9.3f} {sum(k.calls for k in profile.kernels):>7}"
                  f" {ort.node_sum_ms:>9.3f} {len(ort.nodes):>6} {profile.kernel_sum_ms / ort.node_sum_ms:>7.2f}x",
                  f"{'end to end':<24} {profile.end_to_end_ms:>9.3f} {'':>7} {ort.end_to_end_unprofiled_ms:>9.3f} "
                  f"{'':>6} {profile.end_to_end_ms / ort.end_to_end_unprofiled_ms:>7.2f}x",
                  f"(ONNX Runtime's node times come from its profiler, which adds its own overhead: "
                  f"{ort.end_to_end_ms:.3f} ms per run with profiling on, {ort.end_to_end_unprofiled_ms:.3f} ms off)"]
        if any(n["op_class"] == "recurrent" for n in ort.nodes):
            lines.append("(an ONNX LSTM/GRU/RNN node includes its input projection, which kiln runs as a separate "
                         "matmul kernel: compare recurrent + matmul together)")
    return "\n".join(lines)
