"""kiln profile: every kernel of a library timed alone, beside ONNX Runtime's per-node profile."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler.build import compile_model
from targets.library_format import read_metadata
from compiler.profile import kernel_class, ort_class, parse_ort_trace, profile_library, time_in_sequence
from compiler.runtime import load


def test_every_kernel_call_of_a_run_is_timed_with_its_schedule_and_flops(tiny_lib):
    profile = profile_library(load(tiny_lib, threads=2), repeat=3, runs=5)
    schedules = read_metadata(tiny_lib).extra["kernel_schedules"]
    names = {k.name for k in profile.kernels}
    # reshape1 is compiled but the VM runs it as a view (vm.builtin.reshape): no kernel call
    assert names == set(schedules) - {"reshape1"}
    assert sum(k.calls for k in profile.kernels) == 6
    for k in profile.kernels:
        assert k.ms_per_call > 0 and k.schedule == schedules[k.name] and k.arguments
        assert k.share == pytest.approx(k.total_ms / profile.end_to_end_ms)
    convs = [k for k in profile.kernels if k.op_class == "conv"]
    assert len(convs) == 2 and all(k.flops and k.gflops_per_s > 0 for k in convs)
    # the first conv: 16 output channels, 3x3 over 3 channels, 32x32 outputs: 2*16*27*1024 multiply-adds, plus epilogue
    first = next(k for k in convs if "float32[1x3x32x32]" in k.arguments)
    assert 2 * 16 * 27 * 1024 <= first.flops < 1.2 * 2 * 16 * 27 * 1024
    assert [k.total_ms for k in profile.kernels] == sorted((k.total_ms for k in profile.kernels), reverse=True)
    # the same kernels timed inside whole runs: the in-sequence sum and the VM's time make up those runs
    assert all(k.in_sequence_ms > 0 and k.sequence_over_alone > 0 for k in profile.kernels)
    assert profile.in_sequence_sum_ms == pytest.approx(sum(k.in_sequence_ms for k in profile.kernels))
    assert profile.kernel_sum_ms + profile.cache_ms == pytest.approx(profile.in_sequence_sum_ms)
    assert profile.in_sequence_sum_ms + profile.vm_ms == pytest.approx(profile.instrumented_ms)


def _twice_the_same_block() -> onnx.ModelProto:
    """x → (Conv 8→8 3x3, Relu) twice with different weights: one kernel, called twice."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32), f"w{i}") for i in (1, 2)]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Conv", ["b", "w2"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "twice", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_kernel_called_twice_counts_both_calls(tmp_path):
    compile_model(_twice_the_same_block(), tmp_path / "m.so", target="host")
    profile = profile_library(load(tmp_path / "m.so", threads=1), repeat=2, runs=3, rounds=2)
    convs = [k for k in profile.kernels if k.op_class == "conv"]
    assert len(convs) == 1 and convs[0].calls == 2
    assert convs[0].total_ms == pytest.approx(2 * convs[0].ms_per_call)
    per_call, run_ms = time_in_sequence(load(tmp_path / "m.so", threads=1), {"x": np.ones((1, 8, 16, 16), np.float32)},
                                        runs=3)
    assert len(per_call[convs[0].name]) == 2 and run_ms > sum(sum(t) for t in per_call.values()) > 0


def test_cli_profile_writes_json_with_the_onnxruntime_side(tiny_lib, tiny_onnx, tmp_path):
    out = tmp_path / "profile.json"
    done = subprocess.run([sys.executable, "-m", "compiler", "profile", str(tiny_lib), "--reference", str(tiny_onnx),
                           "--threads", "2", "--runs", "5", "--repeat", "2", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "VM calls between kernels" in done.stdout and "seq/alone" in done.stdout and "kiln/ORT" in done.stdout
    data = json.loads(out.read_text())
    assert data["threads"] == 2 and data["machine"]
    assert data["kernel_sum_ms"] + data["other_ms"] == pytest.approx(data["end_to_end_ms"])
    assert data["kernel_sum_ms"] + data["cache_ms"] + data["vm_ms"] == pytest.approx(data["instrumented_ms"])
    assert all(k["in_sequence_ms"] > 0 for k in data["kernels"])
    ort_nodes = data["onnxruntime"]["nodes"]
    assert ort_nodes and all(n["ms"] > 0 and n["op_type"] for n in ort_nodes)
    assert data["onnxruntime"]["node_sum_ms"] == pytest.approx(sum(n["ms"] for n in ort_nodes))
    conv = next(c for c in data["classes"] if c["op_class"] == "conv")
    assert conv["kiln_kernels"] == 2 and conv["ort_nodes"] == 2 and conv["ratio"] > 0


def test_cli_profile_refuses_bad_arguments_clearly(tiny_lib, tmp_path):
    for args, message in [(["--repeat", "0"], "--repeat, --runs and --rounds must be at least 1"),
                          (["--reference", str(tmp_path / "missing.onnx")], "no such file")]:
        done = subprocess.run([sys.executable, "-m", "compiler", "profile", str(tiny_lib), *args],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_onnxruntime_trace_skips_warm_up_runs_and_counts_loop_iterations():
    def run(ts):
        return {"cat": "Session", "name": "model_run", "ts": ts, "dur": 900}

    def node(name, op, ts, dur):
        return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}

    events = [run(0), node("conv", "Conv", 10, 5000),  # warm-up: slow, left out
              run(1000), node("conv", "Conv", 1010, 400), node("cell", "Add", 1500, 10), node("cell", "Add", 1600, 10),
              run(2000), node("conv", "Conv", 2010, 600), node("cell", "Add", 2500, 10), node("cell", "Add", 2600, 10)]
    ort = parse_ort_trace(events, skip_runs=1, unprofiled_ms=0.8)
    by_name = {n["name"]: n for n in ort.nodes}
    assert by_name["conv"]["ms"] == pytest.approx(0.5) and by_name["conv"]["op_class"] == "conv"
    assert by_name["cell"]["ms"] == pytest.approx(0.02)  # twice per run
    assert ort.end_to_end_ms == pytest.approx(0.9)
    with pytest.raises(ValueError, match="1 runs"):
        parse_ort_trace(events[:2], skip_runs=1, unprofiled_ms=0.8)


@pytest.mark.parametrize("kernel, op_type, cls", [
    ("fused_conv2d16_add9_relu71_prepacked", "FusedConv", "conv"),
    ("fused_matmul_add31", "Gemm", "matmul"),
    ("max_pool2d1", "MaxPool", "pool"),
    ("adaptive_avg_pool2d", "GlobalAveragePool", "pool"),
    ("softmax1", "Softmax", "softmax"),
    ("lstm_recurrence", "LSTM", "recurrent"),
    ("concatenate3", "Concat", "data movement"),
    ("fused_reshape_transpose_reshape1", "Transpose", "data movement"),
    ("fused_squeeze1_multiply3_add4_power1_divide11", "LRN", "normalization"),
    ("fused_squeeze_multiply1_add1_sqrt_sqrt1_multiply2_divide1", "LRN", "normalization"),
    ("fused_add_relu", "Add", "elementwise and other"),
])
def test_kernels_and_onnx_nodes_fall_in_the_same_class(kernel, op_type, cls):
    assert kernel_class(kernel) == cls and ort_class(op_type) == cls
