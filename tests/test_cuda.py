"""CUDA builds on a machine without a GPU: device code compiled at build time, clear errors at load."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from compiler.build import compile_model
from targets.errors import DeviceError, TargetError
from targets.library_format import read_metadata
from compiler.runtime import load
from targets.cuda import fatbin_entries, parse_archs

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (CUDA toolkit)")


def test_parse_archs():
    assert parse_archs("sm_90,80", "sm_75") == ["sm_80", "sm_90"]
    assert parse_archs(None, "sm_86") == ["sm_86"]
    with pytest.raises(TargetError, match="not a CUDA arch"):
        parse_archs("ampere", "sm_80")


@pytest.fixture(scope="module")
def cuda_lib(tiny_onnx, tmp_path_factory):
    if shutil.which("nvcc") is None:
        pytest.skip("needs nvcc (CUDA toolkit)")
    out = tmp_path_factory.mktemp("cuda") / "tiny-cuda.so"
    compile_model(tiny_onnx, out, target="cuda-sm80", cuda_archs="sm_80,sm_90")
    return out


@needs_nvcc
def test_library_holds_sass_per_arch_and_ptx_for_the_newest(cuda_lib):
    entries = {(e.kind, e.arch) for e in fatbin_entries(cuda_lib.read_bytes())}
    assert {("sass", "sm_80"), ("sass", "sm_90"), ("ptx", "sm_90")} <= entries
    assert b"__global__" not in cuda_lib.read_bytes(), "device code must be compiled, not stored as source"
    meta = read_metadata(cuda_lib)
    assert meta.device == "cuda" and meta.extra["cuda_archs"] == ["sm_80", "sm_90"]


@needs_nvcc
def test_loading_without_a_gpu_is_a_clear_error(cuda_lib):
    import tvm

    if tvm.cuda(0).exist:
        pytest.skip("a GPU is present here")
    with pytest.raises(DeviceError, match="targets CUDA"):
        load(cuda_lib)
    done = subprocess.run([sys.executable, "-m", "compiler", "run", str(cuda_lib)], capture_output=True, text=True)
    assert done.returncode == 2 and "targets CUDA" in done.stderr and "Traceback" not in done.stderr


@needs_nvcc
def test_inspect_lists_device_code(cuda_lib):
    from compiler.inspect import inspect_path

    info = inspect_path(cuda_lib)
    assert any(line.startswith("sass sm_80") for line in info["cuda_device_code"])


def _int8_conv_model():
    import numpy as np
    from onnx import helper

    from tests.onnx_graphs import const, model

    rng = np.random.default_rng(5)
    # A matmul of 256 x 128 x 864 (pixels x output channels x 96 * 3 * 3): over dlight's 64 threshold.
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"])]
    return model(nodes, [("x", [1, 96, 16, 16])], [("y", None)],
                 [const("w", 128, 96, 3, 3, low=-0.05, high=0.05, rng=rng), const("b", 128, rng=rng)])


def _cuda_source_of_int8_build(tmp_path, monkeypatch, **int8_options) -> str:
    import numpy as np

    import targets.cuda
    from compiler.quantization import Int8Options

    sources = []
    compile_fatbin = targets.cuda.nvcc_fatbin

    def keep_source(code, archs):
        sources.append(code)
        return compile_fatbin(code, archs)

    monkeypatch.setattr(targets.cuda, "nvcc_fatbin", keep_source)
    calibration = np.random.default_rng(0).standard_normal((4, 1, 96, 16, 16)).astype(np.float32)
    compile_model(_int8_conv_model(), tmp_path / "q.so", target="cuda-sm90", precision="int8",
                  int8=Int8Options(calibration=list(calibration), **int8_options))
    assert len(sources) == 1
    return sources[0]


@needs_nvcc
@pytest.mark.slow  # about a minute of nvcc
def test_int8_conv_on_cuda_builds_for_int8_tensor_cores(tmp_path, monkeypatch):
    # int8 activations on sm_90 (the tensor cores multiply int8 x int8); kiln's Int8TensorCore rule
    # drops the software pipelining that makes TVM 0.27 fail on dlight's int8 wmma schedule.
    source = _cuda_source_of_int8_build(tmp_path, monkeypatch)
    assert "wmma::mma_sync" in source and "signed char" in source
    meta = read_metadata(tmp_path / "q.so")
    assert meta.precision == "int8" and meta.device == "cuda"


@needs_nvcc
def test_int8_conv_on_cuda_with_uint8_activations_uses_int32_loops(tmp_path, monkeypatch):
    source = _cuda_source_of_int8_build(tmp_path, monkeypatch, signed_activations=False)
    assert "wmma" not in source and "uchar" in source


@pytest.mark.slow
def test_int8_tensor_core_rule_declines_non_matmuls_and_small_matmuls():
    import tvm
    from tvm import te

    from schedules.rules.gpu_int8 import Int8TensorCore

    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"})

    def int8_matmul(m, n, k, dtype="int8"):
        a = te.placeholder((m, k), dtype, name="a")
        b = te.placeholder((n, k), "int8", name="b")
        r = te.reduce_axis((0, k), name="r")
        c = te.compute((m, n), lambda i, j: te.sum(a[i, r].astype("int32") * b[j, r].astype("int32"), axis=r))
        return te.create_prim_func([a, b, c])

    rule = Int8TensorCore()
    scheduled = rule.apply(int8_matmul(256, 128, 256), target, False)
    assert scheduled is not None and "software_pipeline" not in scheduled.mod.script()
    assert rule.apply(int8_matmul(256, 64, 256), target, False) is None  # J = 64: dlight's scalar path
    assert rule.apply(int8_matmul(256, 128, 256, dtype="uint8"), target, False) is None
    assert rule.apply(int8_matmul(256, 128, 256), tvm.target.Target({"kind": "cuda", "arch": "sm_70"}), False) is None
