"""The C API (targets/c_api): built with its Makefile, driven through its C example program.

Natively (x86_64 here): the example's outputs equal the Python runtime's bit for bit; wrong
inputs, damaged files and missing CPU features are refused with the status and message the
header promises. ARM64: cross-built with ``make arm64`` and run under qemu-aarch64, compared with
the native outputs; a library needing CPU features the emulated CPU lacks is refused by name.
Needs make, g++ and gcc (ARM64 also g++-aarch64-linux-gnu and qemu-user: scripts/prepare_arm.sh).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from compiler.build import compile_model
from compiler.frontend import parse_input_shapes
from compiler.runtime import load
from targets import cpu_features, emulation
from targets.registry import cpu_flags

C_API = Path(__file__).resolve().parents[1] / "targets" / "c_api"
KILN_E_IO, KILN_E_LIBRARY, KILN_E_CPU, KILN_E_INPUT = 1, 2, 3, 4
HAVE_BUILD_TOOLS = all(shutil.which(t) for t in ("make", "g++", "gcc"))
HAVE_ARM_TOOLS = HAVE_BUILD_TOOLS and all(shutil.which(t) for t in (emulation.QEMU, emulation.AARCH64_GXX))
# Markers rather than a skip in the fixture: the session fixtures (tiny_lib) need g++ too.
needs_build = pytest.mark.skipif(not HAVE_BUILD_TOOLS,
                                 reason="the C API needs make, g++ and gcc (apt-get install build-essential)")
needs_arm = pytest.mark.skipif(
    not HAVE_ARM_TOOLS, reason="needs make, qemu-user and g++-aarch64-linux-gnu (run scripts/prepare_arm.sh)"
)
# Sapphire Rapids: AVX512-FP16 and AMX, which few CPUs that run these tests have.
SPR_TARGET = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "sapphirerapids"}


def _make(build: Path, *args: str) -> Path:
    proc = subprocess.run(["make", "-C", str(C_API), f"BUILD={build}", f"PYTHON={sys.executable}", *args],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return build


@pytest.fixture(scope="module")
def native(tmp_path_factory) -> Path:
    return _make(tmp_path_factory.mktemp("c-api-native"))


def run_example(build: Path, lib: Path, *inputs: str, threads: int = 1, out: Path | None = None,
                qemu_cpu: str | None = None):
    """Run the example; returns (exit status, stdout, stderr, outputs by name)."""
    cmd = [str(build / "example"), str(lib), str(threads)]
    if qemu_cpu:
        cmd = [emulation.QEMU, "-L", str(emulation.SYSROOT), "-cpu", qemu_cpu, *cmd]
    if out is not None:
        cmd += [str(out), *inputs]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    outputs = {}
    for line in proc.stdout.splitlines():
        if line.startswith("output "):
            _, index, name, dtype, shape = line.split()
            dims = () if shape == "scalar" else tuple(int(d) for d in shape.split("x"))
            outputs[name] = np.fromfile(out / f"output{index}.bin", dtype=dtype).reshape(dims)
    return proc.returncode, proc.stdout, proc.stderr, outputs


def _write(tmp: Path, name: str, array: np.ndarray, shape: bool = False, dtype: str = "") -> str:
    """Write ``array`` raw; returns the example's argument FILE[:SHAPE[:DTYPE]]."""
    path = tmp / f"{name}.bin"
    array.tofile(path)
    arg = str(path)
    if shape or dtype:
        arg += ":" + ("x".join(map(str, array.shape)) if shape else "")
    return arg + (f":{dtype}" if dtype else "")


@pytest.fixture(scope="module")
def tiny_x() -> np.ndarray:
    return np.random.default_rng(7).standard_normal((1, 3, 32, 32)).astype(np.float32)


def _two_input_model() -> onnx.ModelProto:
    """x: float32[1 x n x 8] (n symbolic), s: float32[8] -> y = x * s, i = argmax(x, axis 2) (int64)."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "s"], ["y"]), helper.make_node("ArgMax", ["x"], ["i"], axis=2, keepdims=0)],
        "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "n", 8]),
                helper.make_tensor_value_info("s", TensorProto.FLOAT, [8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "n", 8]),
         helper.make_tensor_value_info("i", TensorProto.INT64, [1, "n"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@needs_build
def test_tiny_model_matches_python_runtime_exactly(native: Path, tiny_lib: Path, tiny_x, tmp_path: Path):
    expected = load(tiny_lib, threads=1).run({"data": tiny_x})
    status, stdout, stderr, got = run_example(native, tiny_lib, _write(tmp_path, "x", tiny_x), out=tmp_path)
    assert status == 0, stderr
    assert "input-spec 0 data float32 1x3x32x32" in stdout and "output-spec 0 prob float32 1x10" in stdout
    assert list(got) == ["prob"] and got["prob"].dtype == np.float32
    assert np.array_equal(got["prob"], expected["prob"])


@needs_build
def test_threads_are_configured(native: Path, tiny_lib: Path):
    status, stdout, stderr, _ = run_example(native, tiny_lib, threads=2)
    assert status == 0 and "threads 2" in stdout.splitlines()[0], stdout + stderr


@needs_build
def test_two_inputs_and_a_symbolic_axis(native: Path, tmp_path: Path):
    lib = tmp_path / "two.so"
    compile_model(_two_input_model(), lib, target="host", input_shapes=parse_input_shapes(["x:1x2..64x8"]))
    python = load(lib, threads=1)
    s = np.linspace(-1, 1, 8, dtype=np.float32)
    for n in (2, 37):
        x = np.random.default_rng(n).standard_normal((1, n, 8)).astype(np.float32)
        status, stdout, stderr, got = run_example(native, lib, _write(tmp_path, "x", x, shape=True),
                                                  _write(tmp_path, "s", s), out=tmp_path)
        assert status == 0, stderr
        expected = python.run({"x": x, "s": s})
        assert list(got) == ["y", "i"] and got["i"].dtype == np.int64 and got["i"].shape == (1, n)
        assert all(np.array_equal(got[k], expected[k]) for k in expected)
    assert "input-spec 0 x float32 1x(2..64)x8" in stdout and "output-spec 1 i int64 1x?" in stdout
    x = np.zeros((1, 65, 8), np.float32)
    status, _, stderr, _ = run_example(native, lib, _write(tmp_path, "x", x, shape=True), _write(tmp_path, "s", s),
                                       out=tmp_path)
    assert status == KILN_E_INPUT
    assert "input 'x': shape 1x65x8, expected 1x(2..64)x8 (axis 1 is 65; this library accepts 2..64 there" in stderr
    status, _, stderr, _ = run_example(native, lib, _write(tmp_path, "x", x[:, :4], shape=True), out=tmp_path)
    assert status == KILN_E_INPUT
    assert "got 1 inputs, the model expects 2: x: float32[1x(2..64)x8], s: float32[8]" in stderr


@needs_build
def test_wrong_shape_or_dtype_is_an_input_error_naming_the_input(native: Path, tiny_lib: Path, tiny_x, tmp_path: Path):
    cases = [
        (_write(tmp_path, "narrow", tiny_x[..., :31], shape=True),
         "input 'data': shape 1x3x32x31, expected 1x3x32x32 (axis 3 is 31, expected 32; data: float32[1x3x32x32])"),
        (_write(tmp_path, "flat", tiny_x.reshape(-1), shape=True),
         "input 'data': shape 3072, expected 1x3x32x32 (rank 1"),
        (_write(tmp_path, "f64", tiny_x.astype(np.float64), dtype="float64"),
         "input 'data': dtype float64, expected float32"),
    ]
    for arg, message in cases:
        status, _, stderr, got = run_example(native, tiny_lib, arg, out=tmp_path)
        assert status == KILN_E_INPUT and "KILN_E_INPUT" in stderr and message in stderr, stderr
        assert not got


@needs_build
def test_damaged_or_foreign_files_are_library_errors(native: Path, tiny_lib: Path, tmp_path: Path):
    data = bytearray(tiny_lib.read_bytes())
    flipped = tmp_path / "flipped.so"
    data[len(data) // 2] ^= 0x10
    flipped.write_bytes(data)
    unsealed = tmp_path / "unsealed.so"
    unsealed.write_bytes(tiny_lib.read_bytes()[:-40])
    text = tmp_path / "text.so"
    text.write_text("not a library\n" * 10)
    for lib, message in [(flipped, "modified after compilation (its sha256 no longer matches"),
                         (unsealed, "has no kiln seal"), (text, "not an ELF shared library")]:
        status, _, stderr, _ = run_example(native, lib)
        assert status == KILN_E_LIBRARY and message in stderr, stderr
    status, _, stderr, _ = run_example(native, tmp_path / "missing.so")
    assert status == KILN_E_IO and "no such library file" in stderr


@needs_build
def test_missing_cpu_feature_is_refused_by_name(native: Path, tiny_onnx: Path, tmp_path: Path):
    missing = cpu_features.missing_features(SPR_TARGET, cpu_flags())
    if not missing:
        pytest.skip("this CPU has every Sapphire Rapids feature (AVX512-FP16, AMX)")
    lib = tmp_path / "spr.so"
    compile_model(tiny_onnx, lib, target=json.dumps(SPR_TARGET))
    status, stdout, stderr, _ = run_example(native, lib)
    assert status == KILN_E_CPU and not stdout, stdout + stderr
    listed = re.search(r"needs the CPU features? ([a-z0-9_, ]+), which this CPU lacks", stderr)
    assert listed and listed.group(1).split(", ") == missing, stderr  # the same list as the Python runtime's


def test_hwcap_bits_match_the_python_table():
    """On AArch64 without a Features line, both runtimes read the same HWCAP bits."""
    source = (C_API / "kiln_runtime.cc").read_text()
    bits = {name: (kind, int(bit)) for name, kind, bit in re.findall(r'\{"(\w+)", (AT_HWCAP2?), (\d+)\}', source)}
    assert bits == {**{n: ("AT_HWCAP", b) for n, b in cpu_features._HWCAP.items()},
                    **{n: ("AT_HWCAP2", b) for n, b in cpu_features._HWCAP2.items()}}


@pytest.fixture(scope="module")
def arm_build(tmp_path_factory) -> Path:
    if not HAVE_ARM_TOOLS:
        pytest.skip("needs make, g++-aarch64-linux-gnu and qemu-user (run scripts/prepare_arm.sh)")
    emulation.prepare_arm_runtime()  # fetched once into the cache; `make arm64` then finds it
    build = _make(tmp_path_factory.mktemp("c-api-arm64"), "arm64")
    assert emulation.is_aarch64_elf(build / "libkiln_runtime.so") and emulation.is_aarch64_elf(build / "example")
    return build


@needs_arm
def test_arm64_under_qemu_matches_native(arm_build: Path, native: Path, tiny_onnx: Path, tiny_lib: Path, tiny_x,
                                         tmp_path: Path):
    arm_lib, graviton2 = tmp_path / "arm64.so", tmp_path / "graviton2.so"
    compile_model(tiny_onnx, arm_lib, target="arm64")
    compile_model(tiny_onnx, graviton2, target="graviton2")
    x = _write(tmp_path, "x", tiny_x)
    status, stdout, stderr, got = run_example(arm_build, arm_lib, x, out=tmp_path, qemu_cpu="cortex-a72")
    assert status == 0 and "target arm64" in stdout, stderr
    (tmp_path / "native").mkdir()
    _, _, _, native_out = run_example(native, tiny_lib, x, out=tmp_path / "native")
    assert float(np.abs(got["prob"] - native_out["prob"]).max()) < 1e-5
    # graviton2 needs dotprod and fp16: refused on a Cortex-A72, run on qemu's "max" CPU.
    status, _, stderr, _ = run_example(arm_build, graviton2, x, out=tmp_path, qemu_cpu="cortex-a72")
    assert status == KILN_E_CPU and "needs the CPU features asimddp, asimdhp, which this CPU lacks" in stderr
    status, _, stderr, got = run_example(arm_build, graviton2, x, out=tmp_path, qemu_cpu="max")
    assert status == 0 and float(np.abs(got["prob"] - native_out["prob"]).max()) < 1e-5, stderr
    # an x86 library on ARM64: the architecture is refused before the features are compared
    status, _, stderr, _ = run_example(arm_build, tiny_lib, qemu_cpu="max")
    assert status == KILN_E_LIBRARY and "was built for x86_64" in stderr


# Drives libkiln_runtime.so through ctypes in a fresh process (without TVM's Python package, whose
# own libtvm_runtime must not meet the build's copy): API misuse, and a library replaced at the same
# path while the first one is still loaded.
_CTYPES_DRIVER = r"""
import ctypes, json, os, shutil, sys
import numpy as np

build, lib_a, lib_b, path, x_file = sys.argv[1:]
k = ctypes.CDLL(os.path.join(build, "libkiln_runtime.so"))
k.kiln_last_error.restype = ctypes.c_char_p


class Tensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("dtype", ctypes.c_int), ("ndim", ctypes.c_int32),
                ("shape", ctypes.POINTER(ctypes.c_int64))]


x = np.fromfile(x_file, np.float32)
shape = (ctypes.c_int64 * 4)(1, 3, 32, 32)
report = {}


def load_and_run(name):
    model = ctypes.c_void_p()
    assert k.kiln_load(path.encode(), 1, ctypes.byref(model)) == 0, k.kiln_last_error()
    out = Tensor()
    report[name + "_output_before_run"] = k.kiln_output(model, 0, ctypes.byref(out))
    t = Tensor(x.ctypes.data, 1, 4, shape)
    assert k.kiln_run(model, ctypes.byref(t), 1) == 0, k.kiln_last_error()
    assert k.kiln_output(model, 0, ctypes.byref(out)) == 0
    report[name] = np.ctypeslib.as_array(ctypes.cast(out.data, ctypes.POINTER(ctypes.c_float)), (10,)).tolist()
    return model


def replace_with(src):  # as `kiln compile` writes: a new file renamed over the old one
    shutil.copyfile(src, path + ".partial")
    os.replace(path + ".partial", path)


replace_with(lib_a)
first = load_and_run("a")
half = (x * 0.5).astype(np.float32)  # a second run on the same model reuses its input buffer
out = Tensor()
assert k.kiln_run(first, ctypes.byref(Tensor(half.ctypes.data, 1, 4, shape)), 1) == 0
assert k.kiln_output(first, 0, ctypes.byref(out)) == 0
report["a_half"] = np.ctypeslib.as_array(ctypes.cast(out.data, ctypes.POINTER(ctypes.c_float)), (10,)).tolist()
replace_with(lib_b)
second = load_and_run("b")  # the first is still loaded
report["spec_out_of_range"] = k.kiln_input_spec(first, 5, ctypes.byref(Tensor()))
report["spec_error"] = k.kiln_last_error().decode()
report["load_null"] = k.kiln_load(None, 1, ctypes.byref(ctypes.c_void_p()))
k.kiln_free(first)
k.kiln_free(second)
print(json.dumps(report))
"""


@needs_build
def test_replaced_library_is_loaded_afresh_and_misuse_is_reported(native: Path, tiny_lib: Path, tiny_x,
                                                                   tmp_path: Path):
    from compiler.examples import example_model

    other = tmp_path / "tiny-seed1.so"
    compile_model(example_model("tiny", seed=1), other, target="host")
    x_file = tmp_path / "x.bin"
    tiny_x.tofile(x_file)
    proc = subprocess.run([sys.executable, "-c", _CTYPES_DRIVER, str(native), str(tiny_lib), str(other),
                           str(tmp_path / "model.so"), str(x_file)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    expected_a = load(tiny_lib, threads=1).run({"data": tiny_x})["prob"][0]
    expected_b = load(other, threads=1).run({"data": tiny_x})["prob"][0]
    assert not np.array_equal(expected_a, expected_b)
    assert np.array_equal(report["a"], expected_a) and np.array_equal(report["b"], expected_b)
    half = load(tiny_lib, threads=1).run({"data": tiny_x * np.float32(0.5)})["prob"][0]
    assert np.array_equal(report["a_half"], half) and not np.array_equal(half, expected_a)
    assert report["a_output_before_run"] == report["spec_out_of_range"] == report["load_null"] == 6  # KILN_E_ARGUMENT
    assert "index 5 out of range (the model has 1)" in report["spec_error"]


@needs_build
def test_minimal_program_in_the_docs_builds_and_runs(native: Path, tiny_lib: Path, tmp_path: Path):
    doc = (Path(__file__).resolve().parents[1] / "docs" / "c-api.md").read_text()
    source = re.search(r"```c\n(/\* app\.c:.*?)```", doc, re.S).group(1)
    (tmp_path / "app.c").write_text(source)
    build = subprocess.run(["gcc", "-std=c11", "-Wall", "-Werror", str(tmp_path / "app.c"), f"-I{native}",
                            f"-L{native}", "-lkiln_runtime", f"-Wl,-rpath,{native}", "-o", str(tmp_path / "app")],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    proc = subprocess.run([str(tmp_path / "app"), str(tiny_lib)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    expected = load(tiny_lib, threads=1).run({"data": np.zeros((1, 3, 32, 32), np.float32)})["prob"][0]
    np.testing.assert_allclose([float(v) for v in proc.stdout.split()], expected, rtol=1e-5)
