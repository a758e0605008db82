"""Run aarch64 kiln libraries on an x86 machine, under qemu user-mode emulation.

``prepare_arm_runtime`` fetches the aarch64 TVM runtime (from the ``manylinux_2_28_aarch64``
wheels of the installed ``apache-tvm`` / ``apache-tvm-ffi`` versions) into a cache and
cross-compiles ``arm_runner.cc`` against it; ``run_emulated`` runs a library once under
``qemu-aarch64``, numpy in, numpy out::

    from targets.emulation import run_emulated
    outs = run_emulated("model-rpi4.so", {"data": x})            # dict of outputs by ONNX name
    run_emulated("model-sve.so", {"data": x}, cpu="cortex-a72")  # EmulationError: SIGILL

Use it for correctness and for CPU-feature gating (``cpu=`` is qemu's ``-cpu``); times
measured under qemu say nothing about speed on real ARM hardware. Needs the Debian
packages ``g++-aarch64-linux-gnu`` and ``qemu-user`` (``scripts/prepare_arm.sh``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata as dist_metadata
from pathlib import Path
from typing import Mapping

import numpy as np

from targets.errors import InputError, KilnError, LibraryError, ToolMissingError
from targets.library_format import LibraryMetadata, read_metadata
from targets.registry import AARCH64_GXX

log = logging.getLogger(__name__)

QEMU = "qemu-aarch64"
SYSROOT = Path("/usr/aarch64-linux-gnu")
WHEEL_PLATFORM = "manylinux_2_28_aarch64"
WHEEL_PYTHON = "3.11"  # the ffi wheel is per-Python; its libtvm_ffi.so is the same for all of them
# The pair kiln pins (pyproject.toml); used when the host has no TVM installed.
PINNED_TVM = "0.27.0.post1"
PINNED_TVM_FFI = "0.1.14.post0"
RUNNER_SOURCE = Path(__file__).with_name("arm_runner.cc")
RUNTIME_LIBS = {
    "tvm/lib/libtvm_runtime.so": "libtvm_runtime.so",
    "tvm/lib/libtvm_runtime_extra.so": "libtvm_runtime_extra.so",
    "tvm_ffi/lib/libtvm_ffi.so": "libtvm_ffi.so",
}
# --no-as-needed: the runner calls nothing in libtvm_runtime directly, but loading it registers
# the .so module loader and the Relax VM; libtvm_runtime_extra is loaded too, as Python's tvm does.
RUNNER_FLAGS = ["-std=c++17", "-O2", "-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_runtime_extra", "-ltvm_ffi",
                "-Wl,--as-needed", "-Wl,-rpath,$ORIGIN/lib"]
EM_AARCH64 = 183


class EmulationError(KilnError):
    """The library ran under qemu and failed: crashed, was killed by a signal, or reported an error.

    ``signal_name`` is set (e.g. ``"SIGILL"``) when the process died of a signal: SIGILL means the
    library uses an instruction the emulated CPU lacks.
    """

    def __init__(self, message: str, returncode: int, stderr: str = ""):
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr
        self.signal_name = signal.Signals(-returncode).name if returncode < 0 else None


def default_cache_dir() -> Path:
    """Where the aarch64 runtime is cached: ``$XDG_CACHE_HOME/kiln/aarch64`` (``~/.cache/kiln/aarch64``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kiln" / "aarch64"


def runtime_versions() -> tuple[str, str]:
    """(apache-tvm, apache-tvm-ffi) versions of this host's install; the pinned pair when absent."""
    try:
        return dist_metadata.version("apache-tvm"), dist_metadata.version("apache-tvm-ffi")
    except dist_metadata.PackageNotFoundError:
        return PINNED_TVM, PINNED_TVM_FFI


def require_tools() -> None:
    """Raise ``ToolMissingError`` naming the Debian package when qemu or the cross compiler is missing."""
    missing = [(tool, pkg) for tool, pkg in [(QEMU, "qemu-user"), (AARCH64_GXX, "g++-aarch64-linux-gnu")]
               if shutil.which(tool) is None]
    if not (SYSROOT / "lib" / "ld-linux-aarch64.so.1").exists() and all(t != AARCH64_GXX for t, _ in missing):
        missing.append((f"the aarch64 C library in {SYSROOT}", "libc6-dev-arm64-cross"))
    if missing:
        tools = ", ".join(tool for tool, _ in missing)
        pkgs = " ".join(pkg for _, pkg in missing)
        raise ToolMissingError(
            f"running aarch64 libraries under emulation needs {tools}, not installed; "
            f"install with: apt-get install {pkgs} (or run scripts/prepare_arm.sh)"
        )


def is_aarch64_elf(path: str | Path) -> bool:
    """True when ``path`` is a 64-bit little-endian ELF file for aarch64."""
    with open(path, "rb") as f:
        head = f.read(20)
    return len(head) == 20 and head[:4] == b"\x7fELF" and head[4:6] == b"\x02\x01" and \
        int.from_bytes(head[18:20], "little") == EM_AARCH64


def _runner_key() -> str:
    """Hash of what the runner binary depends on: its source and its build flags."""
    h = hashlib.sha256(RUNNER_SOURCE.read_bytes())
    h.update(" ".join(RUNNER_FLAGS).encode())
    return h.hexdigest()


def _fetch_runtime(root: Path, tvm_version: str, ffi_version: str) -> None:
    """Download the aarch64 wheels and unpack the runtime libraries and tvm-ffi headers into ``root``.

    Builds in a temporary directory beside ``root`` and renames it into place, so ``root`` is
    either complete or absent (a concurrent run that wins the race is kept).
    """
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=root.parent) as tmp:
        wheels, staged = Path(tmp) / "wheels", Path(tmp) / "runtime"
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--platform", WHEEL_PLATFORM, "--python-version", WHEEL_PYTHON, "--dest", str(wheels),
               f"apache-tvm=={tvm_version}", f"apache-tvm-ffi=={ffi_version}"]
        log.info("downloading the aarch64 TVM runtime: %s", " ".join(cmd[3:]))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise ToolMissingError(
                f"could not download the aarch64 TVM runtime wheels (apache-tvm=={tvm_version}, "
                f"apache-tvm-ffi=={ffi_version}): {detail}; check the network or the pip index"
            )
        (staged / "lib").mkdir(parents=True)
        for wheel in sorted(wheels.glob("*.whl")):
            with zipfile.ZipFile(wheel) as zf:
                for name in zf.namelist():
                    if name in RUNTIME_LIBS:
                        (staged / "lib" / RUNTIME_LIBS[name]).write_bytes(zf.read(name))
                    elif name.startswith("tvm_ffi/include/") and not name.endswith("/"):
                        dest = staged / "include" / name[len("tvm_ffi/include/"):]
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        dest.write_bytes(zf.read(name))
        absent = [lib for lib in RUNTIME_LIBS.values() if not (staged / "lib" / lib).is_file()]
        if absent or not (staged / "include" / "tvm" / "ffi" / "extra" / "module.h").is_file():
            raise ToolMissingError(f"the aarch64 wheels lack {absent or 'the tvm-ffi headers'}; "
                                   f"apache-tvm=={tvm_version} may not ship {WHEEL_PLATFORM} wheels")
        try:
            staged.rename(root)
        except OSError:
            if not (root / "lib" / "libtvm_runtime.so").is_file():
                raise


def _build_runner(root: Path, key: str) -> Path:
    """Cross-compile ``arm_runner.cc`` into ``root/arm_runner``; atomic, like ``_fetch_runtime``."""
    runner = root / "arm_runner"
    partial = root / f".arm_runner.{os.getpid()}"
    cmd = [AARCH64_GXX, str(RUNNER_SOURCE), "-o", str(partial), f"-I{root / 'include'}", f"-L{root / 'lib'}",
           *RUNNER_FLAGS]
    log.info("building the aarch64 runner: %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        raise KilnError(f"cross-compiling {RUNNER_SOURCE.name} failed:\n{proc.stderr.strip()}")
    partial.replace(runner)
    (root / "arm_runner.key").write_text(key)
    return runner


def prepare_arm_runtime(cache_dir: str | Path | None = None) -> Path:
    """Make the aarch64 runtime and runner ready; returns the runner executable's path.

    ``cache_dir`` defaults to ``default_cache_dir()``. The first call downloads two wheels
    (~100 MB) and compiles the runner; later calls only check the cache (idempotent; safe to
    run concurrently). Raises ``ToolMissingError`` when qemu-aarch64, the cross compiler or the
    wheels are unavailable.
    """
    require_tools()
    tvm_version, ffi_version = runtime_versions()
    root = Path(cache_dir or default_cache_dir()) / f"tvm-{tvm_version}-ffi-{ffi_version}"
    if not all((root / "lib" / lib).is_file() for lib in RUNTIME_LIBS.values()):
        if root.exists():
            log.warning("%s is incomplete; fetching the runtime again", root)
            shutil.rmtree(root)
        _fetch_runtime(root, tvm_version, ffi_version)
    runner, key = root / "arm_runner", _runner_key()
    key_file = root / "arm_runner.key"
    if runner.is_file() and key_file.is_file() and key_file.read_text() == key:
        return runner
    return _build_runner(root, key)


def _check_library(meta: LibraryMetadata, path: Path) -> None:
    """Refuse a library the emulated aarch64 runtime cannot run."""
    tvm_version, _ = runtime_versions()
    if not is_aarch64_elf(path):
        raise LibraryError(f"{path} is not an aarch64 library (target '{meta.target_name}'); "
                           "compile it with an ARM target such as --target rpi4")
    if meta.device != "cpu":
        raise LibraryError(f"{path} targets {meta.device} ('{meta.target_name}'); emulation runs CPU libraries only")
    if meta.tvm_version != tvm_version:
        raise LibraryError(f"{path} was built with TVM {meta.tvm_version}, the emulated runtime is TVM "
                           f"{tvm_version}; recompile the model")


def _checked_inputs(meta: LibraryMetadata, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """The inputs in the model's order, C-contiguous; ``InputError`` on a missing, extra or mismatched one."""
    names = [s.name for s in meta.inputs]
    if set(inputs) != set(names):
        raise InputError(f"inputs {sorted(inputs)}; the model expects {names}")
    arrays = []
    for spec in meta.inputs:
        arr = np.ascontiguousarray(inputs[spec.name])
        if arr.dtype != np.dtype(spec.dtype) or tuple(arr.shape) != tuple(spec.shape):
            raise InputError(f"input '{spec.name}': {arr.dtype}{list(arr.shape)}, expected {spec.describe()}")
        arrays.append(arr)
    return arrays


def run_emulated(
    lib_path: str | Path,
    inputs: Mapping[str, np.ndarray],
    *,
    cpu: str | None = None,
    cache_dir: str | Path | None = None,
    timeout: float = 300.0,
) -> dict[str, np.ndarray]:
    """Run an aarch64 kiln library once under qemu; returns its outputs keyed by ONNX output name.

    ``inputs`` maps every input name to an array of exactly the dtype and shape recorded in the
    library's metadata (``InputError`` otherwise). ``cpu`` is qemu's ``-cpu`` model (default:
    qemu's ``max``, which has every feature); running a library that needs a feature the model
    lacks raises ``EmulationError`` with ``signal_name == "SIGILL"``.
    """
    lib_path = Path(lib_path).resolve()
    meta = read_metadata(lib_path)
    _check_library(meta, lib_path)
    arrays = _checked_inputs(meta, inputs)
    runner = prepare_arm_runtime(cache_dir)
    with tempfile.TemporaryDirectory(prefix="kiln-emu-") as tmp:
        cmd = [QEMU, "-L", str(SYSROOT), *(["-cpu", cpu] if cpu else []), str(runner), str(lib_path), tmp]
        for i, (spec, arr) in enumerate(zip(meta.inputs, arrays)):
            path = Path(tmp) / f"input{i}.bin"
            arr.tofile(path)
            cmd += [spec.dtype, "x".join(map(str, spec.shape)), str(path)]
        env = dict(os.environ, TVM_BIND_THREADS=os.environ.get("TVM_BIND_THREADS", "0"))
        log.debug("running %s", " ".join(cmd))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise EmulationError(f"{lib_path.name} did not finish within {timeout:.0f} s under qemu", -9) from None
        if proc.returncode != 0:
            stderr = proc.stderr.strip()
            if proc.returncode < 0:
                sig = signal.Signals(-proc.returncode).name
                hint = f" (the library needs a CPU feature qemu's -cpu {cpu or 'max'} lacks)" if sig == "SIGILL" else ""
                msg = f"{lib_path.name} died of {sig} under qemu-aarch64{hint}"
            else:
                msg = f"{lib_path.name} failed under qemu-aarch64: {(stderr.splitlines() or ['no message'])[-1]}"
            raise EmulationError(msg, proc.returncode, stderr)
        reported = [line.split(" ") for line in proc.stdout.splitlines() if line.startswith("output ")]
        if len(reported) != len(meta.outputs):
            raise EmulationError(f"{lib_path.name} returned {len(reported)} outputs, its metadata lists "
                                 f"{len(meta.outputs)}", proc.returncode, proc.stderr)
        outputs = {}
        for spec, (_, index, dtype, shape) in zip(meta.outputs, reported):
            dims = tuple(int(d) for d in shape.split("x")) if shape else ()
            outputs[spec.name] = np.fromfile(Path(tmp) / f"output{index}.bin", dtype=dtype).reshape(dims)
        return outputs
