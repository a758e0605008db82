"""ARM64 targets, verified by running them: cross-compile, then run under qemu-aarch64.

Needs the Debian packages g++-aarch64-linux-gnu and qemu-user (scripts/prepare_arm.sh installs
them and caches the aarch64 TVM runtime); the emulation tests are skipped without them.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from compiler import build
from compiler.build import compile_model
from compiler.cli import main as kiln_main
from targets.errors import InputError, LibraryError, ToolMissingError
from targets.library_format import read_metadata
from compiler.runtime import load
from targets import emulation
from targets.emulation import EmulationError, is_aarch64_elf, run_emulated

HAVE_ARM_TOOLS = all(shutil.which(t) for t in (emulation.QEMU, emulation.AARCH64_GXX))
needs_arm = pytest.mark.skipif(
    not HAVE_ARM_TOOLS, reason="needs qemu-user and g++-aarch64-linux-gnu (run scripts/prepare_arm.sh)"
)
# A target that makes LLVM emit SVE code: cortex-a72 has no SVE, so qemu -cpu cortex-a72 must refuse it.
SVE_TARGET = '{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+sve"]}'


def _without(tool: str, real=shutil.which):
    return lambda name, *args, **kwargs: None if name == tool else real(name, *args, **kwargs)


@pytest.fixture(scope="module")
def arm_runtime() -> Path:
    return emulation.prepare_arm_runtime()


@pytest.fixture(scope="module")
def tiny_inputs() -> dict[str, np.ndarray]:
    return {"data": np.random.default_rng(7).standard_normal((1, 3, 32, 32)).astype(np.float32)}


@pytest.fixture(scope="module")
def arm_libs(tiny_onnx: Path, tmp_path_factory) -> dict[str, Path]:
    """The tiny example built for rpi4, graviton2 and an SVE target."""
    if not HAVE_ARM_TOOLS:
        pytest.skip("needs g++-aarch64-linux-gnu and qemu-user (run scripts/prepare_arm.sh)")
    out = tmp_path_factory.mktemp("arm")
    libs = {"rpi4": out / "rpi4.so", "graviton2": out / "graviton2.so", "sve": out / "sve.so"}
    for target, path in [("rpi4", libs["rpi4"]), ("graviton2", libs["graviton2"]), (SVE_TARGET, libs["sve"])]:
        compile_model(tiny_onnx, path, target=target)
    return libs


def test_missing_cross_compiler_is_a_clear_error(tiny_onnx: Path, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setattr(build.shutil, "which", _without("aarch64-linux-gnu-g++"))
    with pytest.raises(ToolMissingError, match=re.escape("apt-get install g++-aarch64-linux-gnu")):
        compile_model(tiny_onnx, tmp_path / "x.so", target="rpi4")
    assert not (tmp_path / "x.so").exists()
    assert kiln_main(["compile", str(tiny_onnx), "--target", "arm64", "-o", str(tmp_path / "y.so")]) == 2
    assert "aarch64-linux-gnu-g++" in capsys.readouterr().err


@pytest.mark.parametrize(
    "tool, package", [("qemu-aarch64", "qemu-user"), ("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu")]
)
def test_missing_emulation_tool_names_the_package(tool: str, package: str, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(emulation.shutil, "which", _without(tool))
    with pytest.raises(ToolMissingError, match=re.escape(f"apt-get install {package}")):
        emulation.prepare_arm_runtime(tmp_path)
    assert not any(tmp_path.iterdir())  # nothing fetched before the check


@needs_arm
def test_rpi4_library_is_aarch64_with_readable_metadata(arm_libs: dict[str, Path], tiny_lib: Path):
    lib = arm_libs["rpi4"]
    assert is_aarch64_elf(lib) and not is_aarch64_elf(tiny_lib)
    meta = read_metadata(lib)  # read on x86, without loading the library
    assert meta.target_name == "rpi4" and meta.target["mtriple"] == "aarch64-linux-gnu"
    assert [(s.name, s.shape, s.dtype) for s in meta.inputs] == [("data", (1, 3, 32, 32), "float32")]
    assert [(s.name, s.shape, s.dtype) for s in meta.outputs] == [("prob", (1, 10), "float32")]


@needs_arm
def test_loading_aarch64_library_on_x86_is_refused(arm_libs: dict[str, Path]):
    with pytest.raises(LibraryError, match="built for aarch64"):
        load(arm_libs["rpi4"])


@needs_arm
@pytest.mark.parametrize("name", ["rpi4", "graviton2"])
def test_emulated_run_matches_host_build(name, arm_libs, arm_runtime, tiny_lib, tiny_inputs):
    expected = load(tiny_lib).run(tiny_inputs)
    got = run_emulated(arm_libs[name], tiny_inputs)
    assert list(got) == ["prob"] and got["prob"].shape == (1, 10) and got["prob"].dtype == np.float32
    assert float(np.abs(got["prob"] - expected["prob"]).max()) < 1e-5


@needs_arm
def test_sve_build_runs_on_sve_cpu_and_dies_of_sigill_without(arm_libs, arm_runtime, tiny_lib, tiny_inputs):
    expected = load(tiny_lib).run(tiny_inputs)["prob"]
    assert float(np.abs(run_emulated(arm_libs["sve"], tiny_inputs)["prob"] - expected).max()) < 1e-5
    run_emulated(arm_libs["rpi4"], tiny_inputs, cpu="cortex-a72")  # the runtime itself is fine on a72
    with pytest.raises(EmulationError, match="SIGILL") as info:
        run_emulated(arm_libs["sve"], tiny_inputs, cpu="cortex-a72")
    assert info.value.signal_name == "SIGILL"


@needs_arm
def test_emulation_checks_inputs_and_library(arm_libs, arm_runtime, tiny_lib, tiny_inputs):
    with pytest.raises(InputError, match="data"):
        run_emulated(arm_libs["rpi4"], {"data": tiny_inputs["data"].astype(np.float64)})
    with pytest.raises(InputError, match="expects"):
        run_emulated(arm_libs["rpi4"], {"x": tiny_inputs["data"]})
    with pytest.raises(LibraryError, match="not an aarch64 library"):
        run_emulated(tiny_lib, tiny_inputs)


@needs_arm
@pytest.mark.parametrize("target,instruction", [("graviton2", "sdot"), ("graviton3", "usdot")])
def test_int8_runs_on_arm_dot_product_instructions_and_matches_the_host(target, instruction, arm_runtime,
                                                                         tmp_path):
    """INT8 for AArch64: with dotprod alone the activations are int8 (zero points - 128) for
    ``sdot``; with i8mm they stay uint8 for ``usdot``. Every conv is tensorized, the library
    holds the instruction, and under qemu it computes what the host's INT8 build computes
    (same 7-bit weights on both; the shifted zero point gives the same dequantized values)."""
    import subprocess

    import onnx

    from compiler.build import CompileOptions
    from compiler.quantization import Int8Options
    from tests.test_int8 import _fire

    onnx.save(_fire(), tmp_path / "fire.onnx")
    rng = np.random.default_rng(0)
    calibration = rng.uniform(-1, 1, (16, 3, 16, 16)).astype(np.float32)
    libs = {}
    for name in ("host", target):
        libs[name] = tmp_path / f"{name}.so"
        compile_model(tmp_path / "fire.onnx", libs[name], CompileOptions(target=name, precision="int8", int8=Int8Options(
            calibration=calibration, method="minmax", weight_bits=7)))
    schedules = read_metadata(libs[target]).extra["kernel_schedules"]
    convs = {k: v for k, v in schedules.items() if "conv2d" in k}
    assert len(convs) == 5 and set(convs.values()) == {"default:Int8Tensorized"}, convs
    asm = subprocess.run([emulation.AARCH64_GXX.replace("g++", "objdump"), "-d", str(libs[target])],
                         capture_output=True, text=True, check=True).stdout
    assert re.search(rf"\s{instruction}\s", asm), f"no {instruction} in the library"
    host = load(libs["host"])
    for x in rng.uniform(-1, 1, (3, 1, 3, 16, 16)).astype(np.float32):
        want = host.run({"x": x})["y"]
        got = run_emulated(libs[target], {"x": x})["y"]
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
