"""The runtime loader: metadata, validation of inputs, threads, benchmarks, refusing foreign libraries."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest

from targets.errors import DeviceError, InputError, LibraryError
from targets.library_format import read_metadata
from compiler.runtime import check_runnable_here, load


def test_metadata_is_inside_the_library(tiny_lib, tiny_onnx):
    import hashlib

    import tvm

    meta = read_metadata(tiny_lib)
    assert [s.name for s in meta.inputs] == ["data"] and meta.inputs[0].shape == (1, 3, 32, 32)
    assert [s.name for s in meta.outputs] == ["prob"] and meta.outputs[0].dtype == "float32"
    assert meta.tvm_version == tvm.__version__ and meta.precision == "fp32"
    assert meta.source_sha256 == hashlib.sha256(tiny_onnx.read_bytes()).hexdigest()
    assert meta.target["kind"] == "llvm"


def test_run_dict_positional_and_array_agree(tiny_lib):
    m = load(tiny_lib)
    x = m.random_inputs()["data"]
    a = m.run({"data": x})["prob"]
    b = m.run([x])["prob"]
    c = m.run(x)["prob"]
    assert a.shape == (1, 10) and np.allclose(a.sum(), 1.0, atol=1e-5)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_non_contiguous_input_is_accepted(tiny_lib):
    m = load(tiny_lib)
    x = m.random_inputs()["data"]
    fortran = np.asfortranarray(x)
    assert not fortran.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(m.run(fortran)["prob"], m.run(x)["prob"])


@pytest.mark.parametrize("bad, message", [
    ({"data": np.zeros((1, 3, 16, 16), np.float32)}, r"input 'data': shape 1x3x16x16, expected 1x3x32x32"),
    ({"data": np.zeros((3, 32, 32), np.float32)}, r"expected 1x3x32x32"),
    ({"data": np.zeros((1, 3, 32, 32), np.float64)}, r"input 'data': dtype float64, expected float32"),
    ({}, r"missing \['data'\]"),
    ({"data": np.zeros((1, 3, 32, 32), np.float32), "extra": np.zeros(1)}, r"unknown \['extra'\]"),
    ([np.zeros((1, 3, 32, 32), np.float32)] * 2, r"got 2 inputs, the model expects 1"),
    ({"data": np.array([object()] * 3)}, r"not a numeric array"),
])
def test_bad_inputs_are_clear_value_errors(tiny_lib, bad, message):
    m = load(tiny_lib)
    with pytest.raises(ValueError, match=message) as err:
        m.run(bad)
    assert isinstance(err.value, InputError)


def test_threads_are_explicit(tiny_lib):
    m = load(tiny_lib, threads=2)
    assert m.threads == 2  # TVM alone would pick 1 on a 2-vCPU machine


def test_benchmark_reports_percentiles(tiny_lib):
    stats = load(tiny_lib).benchmark(10)
    assert stats.runs == 10 and 0 < stats.p50_ms <= stats.p90_ms <= stats.p99_ms


def test_concurrent_calls_are_correct(tiny_lib):
    m = load(tiny_lib)
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((1, 3, 32, 32)).astype(np.float32) for _ in range(4)]
    expected = [m.run(x)["prob"] for x in xs]
    errors = []

    def worker(i: int) -> None:
        for _ in range(10):
            if not np.array_equal(m.run(xs[i])["prob"], expected[i]):
                errors.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_non_kiln_files_are_refused(tmp_path):
    import tvm

    other = tmp_path / "other.so"
    other.write_bytes(open(tvm.runtime.__file__.replace("__init__.py", "../lib/libtvm_runtime.so"), "rb").read(4096))
    with pytest.raises(LibraryError):
        load(other)
    with pytest.raises(LibraryError, match="no such library"):
        load(tmp_path / "missing.so")
    text = tmp_path / "text.so"
    text.write_text("hello")
    with pytest.raises(LibraryError, match="not an ELF"):
        load(text)


def test_foreign_libraries_are_refused_before_loading(tiny_lib):
    meta = read_metadata(tiny_lib)
    arm = replace(meta, target={"kind": "llvm", "mtriple": "aarch64-linux-gnu"}, target_name="rpi4")
    with pytest.raises(LibraryError, match="built for aarch64"):
        check_runnable_here(arm, tiny_lib)
    newer = replace(meta, tvm_version="9.9.9")
    with pytest.raises(LibraryError, match="TVM 9.9.9"):
        check_runnable_here(newer, tiny_lib)
    cuda = replace(meta, device="cuda", target_name="cuda-sm80")
    import tvm

    if not tvm.cuda(0).exist:
        with pytest.raises(DeviceError, match="targets CUDA"):
            check_runnable_here(cuda, tiny_lib)


def test_modified_library_is_refused(tiny_lib, tmp_path):
    data = bytearray(tiny_lib.read_bytes())
    changed = tmp_path / "changed.so"
    data[5000] ^= 0xFF  # one flipped bit inside the code
    changed.write_bytes(bytes(data))
    with pytest.raises(LibraryError, match="modified after compilation"):
        load(changed)
    stripped = tmp_path / "stripped.so"
    stripped.write_bytes(tiny_lib.read_bytes()[:-40])  # the seal removed, as `strip` or truncation would
    with pytest.raises(LibraryError, match="no kiln seal"):
        load(stripped)
    load(tiny_lib)  # the original still loads


def test_many_concurrent_calls_stay_correct_without_leaking(tiny_lib, tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    out = tmp_path / "load_test.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, str(repo / "scripts" / "load_test.py"), "--library", str(tiny_lib),
                           "--calls", "4000", "--threads", "4", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())["rows"][0]
    assert result["wrong_results"] == 0 and result["calls"] == 4000
    assert result["rss_growth_mb"] < 20, result


def _conv_gemm_model():
    """x[1,2,6,6] → Conv → Flatten → Gemm → Softmax: no Relu or MaxPool, which drop NaN (see docs/limitations.md)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((5, 64)).astype(np.float32), "g")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Flatten", ["c"], ["f"]),
             helper.make_node("Gemm", ["f", "g"], ["l"], transB=1), helper.make_node("Softmax", ["l"], ["y"])]
    graph = helper.make_graph(nodes, "nan", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_and_inf_inputs_give_what_onnxruntime_gives(tmp_path, value):
    from compiler.build import compile_model
    from compiler.reference import OnnxRuntimeReference, compare_outputs

    model = _conv_gemm_model()
    compile_model(model, tmp_path / "m.so", target="host")
    m = load(tmp_path / "m.so")
    x = m.random_inputs()["x"]
    x[0, 1, 2, 3] = value
    out = m.run(x)
    assert not np.isfinite(out["y"]).all()
    comparison = compare_outputs(out, OnnxRuntimeReference(model, 1).run({"x": x}))
    assert comparison.ok, comparison.problems
    assert np.isfinite(m.run(m.random_inputs())["y"]).all()  # the next call is unaffected


def test_a_library_rebuilt_to_the_same_path_loads_the_new_code(tmp_path):
    """The dynamic loader returns the library it already holds for a path; a rebuilt file loaded
    again in the same process must still run the new model (it used to run the old one)."""
    from onnx import helper

    from compiler.build import compile_model
    from tests.onnx_graphs import const, model

    def scale_by(k: float):
        return model([helper.make_node("Mul", ["x", "k"], ["y"])], [("x", [1, 4])], [("y", None)],
                     [const("k", 4, low=k, high=k)])

    path = tmp_path / "m.so"
    x = np.ones((1, 4), np.float32)
    compile_model(scale_by(2.0), path)
    first = load(path)
    compile_model(scale_by(3.0), path)
    second = load(path)
    np.testing.assert_array_equal(first.run(x)["y"], 2.0 * x)
    np.testing.assert_array_equal(second.run(x)["y"], 3.0 * x)
    np.testing.assert_array_equal(load(path).run(x)["y"], 3.0 * x)


def test_thread_count_follows_each_load_even_after_the_pool_started(tiny_lib):
    """TVM sizes a thread's pool once; a 1-thread library run first must not cap a later 2-thread
    load (it did: every later library ran on one thread, benchmarks included)."""
    import subprocess
    import sys

    code = ("from compiler.runtime import load\n"
            f"a = load({str(tiny_lib)!r}, threads=1); a.run(a.random_inputs())\n"
            f"b = load({str(tiny_lib)!r}, threads=2); b.run(b.random_inputs())\n"
            f"c = load({str(tiny_lib)!r}, threads=1)\n"
            "print(a.threads, b.threads, c.threads)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "2", "1"]
