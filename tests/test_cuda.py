"""CUDA builds on a machine without a GPU: device code compiled at build time, clear errors at load."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from compiler.build import compile_model
from compiler.errors import DeviceError, TargetError
from compiler.metadata import read_metadata
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
