"""CUDA device code compiled at build time: one fatbin with SASS per arch plus PTX.

Without the NVIDIA driver (``libcuda.so.1``) TVM's CUDA runtime library does not
load, its codegen silently stores CUDA *source* in the library and leaves the compile
to load time on the GPU machine. kiln instead:

1. makes TVM's CUDA runtime library loadable on a build machine without a driver by
   pre-loading a stub ``libcuda.so.1`` whose entry points all return
   ``CUDA_ERROR_NO_DEVICE`` (it is never used to run anything; see ``enable_cuda_codegen``);
2. registers ``tvm_callback_cuda_compile`` to run ``nvcc --fatbin`` with one
   ``-gencode`` per requested arch (SASS) plus PTX for the newest one, so drivers of
   future GPUs can JIT it.

``fatbin_entries`` lists what a library holds, without ``cuobjdump``.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from targets.errors import TargetError, ToolMissingError

log = logging.getLogger(__name__)

FATBIN_MAGIC = 0xBA55ED50
_CUDA_NO_DEVICE = 100


def parse_archs(spec: str | None, default: str) -> list[str]:
    """``"sm_80,sm_90"`` (or ``"80,90"``) → ``["sm_80", "sm_90"]``; ``default`` when empty."""
    archs = []
    for part in (spec or default).split(","):
        part = part.strip()
        m = re.fullmatch(r"(?:sm_?)?(\d{2,3}[a-z]?)", part)
        if not m:
            raise TargetError(f"--cuda-arch '{part}' is not a CUDA arch such as sm_80 or sm_90")
        archs.append(f"sm_{m.group(1)}")
    return sorted(set(archs), key=lambda a: int(re.sub(r"\D", "", a)))


def _stub_driver_path() -> Path:
    """Build (once) a stub libcuda.so.1 exporting the driver symbols TVM's CUDA runtime links against."""
    from tvm.base import _LOADED_LIBS

    runtime_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent
    cuda_runtime = runtime_dir / "libtvm_runtime_cuda.so"
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kiln" / "cuda-stub"
    stub = cache / "libcuda.so.1"
    if stub.is_file():
        return stub
    cache.mkdir(parents=True, exist_ok=True)
    nm = subprocess.run(["nm", "-D", "--undefined-only", str(cuda_runtime)], capture_output=True, text=True,
                        check=True).stdout
    symbols = sorted({line.split()[-1] for line in nm.splitlines() if re.search(r"\scu[A-Z]\w*$", line)})
    source = cache / "stub.c"
    source.write_text("/* kiln: build-time stand-in for the NVIDIA driver; every call reports no device. */\n"
                      + "".join(f"int {s}(void) {{ return {_CUDA_NO_DEVICE}; }}\n" for s in symbols))
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise ToolMissingError("building for CUDA here needs a C compiler (apt-get install gcc)")
    partial = cache / "libcuda.so.1.partial"
    subprocess.run([cc, "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(partial), str(source)], check=True)
    partial.replace(stub)
    return stub


def enable_cuda_codegen() -> None:
    """Make TVM's CUDA runtime library (and so its real CUDA codegen path) available in this process."""
    import tvm
    from tvm.base import _LOADED_LIBS
    from tvm_ffi.libinfo import load_lib_ctypes

    if tvm.get_global_func("ffi.Module.load_from_bytes.cuda", allow_missing=True) is not None:
        return
    try:
        ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL)
    except OSError:
        log.info("no NVIDIA driver here; loading a stub libcuda.so.1 so TVM can compile CUDA code")
        ctypes.CDLL(str(_stub_driver_path()), mode=ctypes.RTLD_GLOBAL)
    runtime_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent
    _LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(
        package="tvm", target_name="tvm_runtime_cuda", extra_lib_paths=[runtime_dir], mode="RTLD_LOCAL"
    )


def nvcc_fatbin(code: str, archs: list[str]) -> bytes:
    """Compile CUDA source into one fatbin: SASS for each arch, PTX for the newest."""
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
    if nvcc is None:
        raise ToolMissingError("building for CUDA needs nvcc (install the CUDA toolkit, or put nvcc on PATH)")
    gencode = []
    for arch in archs:
        num = arch.removeprefix("sm_")
        gencode += ["-gencode", f"arch=compute_{num},code=sm_{num}"]
    newest = archs[-1].removeprefix("sm_")
    gencode += ["-gencode", f"arch=compute_{newest},code=compute_{newest}"]
    with tempfile.TemporaryDirectory(prefix="kiln-nvcc-") as tmp:
        src, out = Path(tmp) / "kernels.cu", Path(tmp) / "kernels.fatbin"
        src.write_text(code)
        done = subprocess.run([nvcc, "--fatbin", "-O3", "-w", *gencode, "-o", str(out), str(src)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise TargetError(f"nvcc failed on the generated CUDA code: {done.stderr.strip()[-2000:]}")
        return out.read_bytes()


@contextlib.contextmanager
def cuda_compile_hook(archs: list[str]) -> Iterator[None]:
    """While active, TVM's CUDA codegen compiles through ``nvcc_fatbin(code, archs)``."""
    import tvm_ffi

    previous = tvm_ffi.get_global_func("tvm_callback_cuda_compile", allow_missing=True)

    def compile_hook(code: str, *_target) -> bytearray:
        return bytearray(nvcc_fatbin(code, archs))

    tvm_ffi.register_global_func("tvm_callback_cuda_compile", compile_hook, override=True)
    try:
        yield
    finally:
        if previous is not None:
            tvm_ffi.register_global_func("tvm_callback_cuda_compile", previous, override=True)


@dataclass(frozen=True)
class FatbinEntry:
    kind: str  # "sass" or "ptx"
    arch: str  # "sm_80"
    size: int


def fatbin_entries(data: bytes) -> list[FatbinEntry]:
    """Every SASS/PTX entry of every fatbin embedded in ``data`` (e.g. a whole ``.so``)."""
    entries = []
    magic = struct.pack("<I", FATBIN_MAGIC)
    start = data.find(magic)
    while start != -1:
        _, _, header_size, fat_size = struct.unpack_from("<IHHQ", data, start)
        off, end = start + header_size, start + header_size + fat_size
        while off + 32 <= min(end, len(data)):
            kind, _, entry_header, payload = struct.unpack_from("<HHIQ", data, off)
            arch = struct.unpack_from("<I", data, off + 28)[0]
            if entry_header == 0:
                break
            entries.append(FatbinEntry({1: "ptx", 2: "sass"}.get(kind, f"kind{kind}"), f"sm_{arch}", payload))
            off += entry_header + payload
        start = data.find(magic, max(end, start + 4))
    return entries
