"""The metadata kiln stores inside every compiled library, and reading it back.

The JSON lives in an ELF section ``.kiln_metadata`` of the ``.so`` (linked in from a
small generated C++ object), so it can be read without loading the library: an ARM64
or CUDA library can be inspected on an x86 machine without a GPU. Reading needs only
the standard library.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from targets.errors import LibraryError

SECTION = ".kiln_metadata"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one model input or output.

    A dimension of -1 is only known at run time. For inputs compiled with a symbolic axis
    (``--input-shape x:1x3x48x32..2048``), ``ranges`` holds ``(axis, low, high)`` per such axis
    (``high`` -1: no upper bound)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    ranges: tuple[tuple[int, int, int], ...] = ()

    def _dim(self, axis: int) -> str:
        for a, low, high in self.ranges:
            if a == axis:
                return f"({low}..{high if high >= 0 else ''})"
        return "?" if self.shape[axis] < 0 else str(self.shape[axis])

    def dims(self) -> str:
        """The shape as kiln prints it: ``1x3x48x(32..2048)`` (``?`` for a size known at run time)."""
        return "x".join(self._dim(i) for i in range(len(self.shape)))

    def describe(self) -> str:
        return f"{self.name}: {self.dtype}[{self.dims()}]"

    def mismatch(self, shape: tuple[int, ...]) -> str | None:
        """Why an input of ``shape`` does not fit this spec (None when it does)."""
        if len(shape) != len(self.shape):
            return f"rank {len(shape)}, expected rank {len(self.shape)}"
        bounds = {a: (low, high) for a, low, high in self.ranges}
        for axis, (got, want) in enumerate(zip(shape, self.shape)):
            if axis in bounds:
                low, high = bounds[axis]
                if got < low or (high >= 0 and got > high):
                    return (f"axis {axis} is {got}; this library accepts {low}..{high if high >= 0 else ''} "
                            f"there")
            elif got != want:
                return f"axis {axis} is {got}, expected {want}"
        return None

    def example_shape(self) -> tuple[int, ...]:
        """A concrete shape this spec accepts: symbolic axes at the geometric middle of their
        range (the low end when unbounded)."""
        shape = list(self.shape)
        for axis, low, high in self.ranges:
            shape[axis] = low if high < 0 else max(low, min(high, round((low * high) ** 0.5)))
        return tuple(shape)


@dataclass
class Stage:
    """One step of a library's stage plan (``compiler.passes.split_parallel_branches``): its
    ``functions`` run one after another (one function) or side by side (a parallel region).

    ``inputs``/``outputs``: per function, the names of the values it takes and returns, in
    order; ``flops``: per function, the kernel FLOPs it runs; ``region``: the index of the
    parallel region, ``None`` for a sequential stage."""

    functions: list[str]
    inputs: list[list[str]]
    outputs: list[list[str]]
    flops: list[float]
    region: int | None = None


@dataclass
class StagePlan:
    """A library's stage functions and how values flow between them (metadata
    ``extra["inter_op"]["plan"]``). ``inputs``: the library's inputs by name, in order;
    ``outputs``: the names of its results, in order; ``groups``: functions per region at most."""

    groups: int
    inputs: list[str]
    outputs: list[str]
    stages: list[Stage] = field(default_factory=list)

    @property
    def regions(self) -> list[Stage]:
        return [s for s in self.stages if s.region is not None]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StagePlan":
        return cls(data["groups"], list(data["inputs"]), list(data["outputs"]), [Stage(**s) for s in data["stages"]])


@dataclass
class LibraryMetadata:
    """Everything a runtime needs to call a compiled model, and where it came from."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    target: dict[str, Any]
    target_name: str
    device: str
    precision: str
    kiln_version: str
    tvm_version: str
    source_sha256: str
    source_name: str
    opset: int
    tuned_kernels: int = 0
    default_kernels: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "LibraryMetadata":
        data = json.loads(text)
        data["inputs"] = [_spec(d) for d in data["inputs"]]
        data["outputs"] = [_spec(d) for d in data["outputs"]]
        return cls(**data)


def _spec(d: dict) -> TensorSpec:
    return TensorSpec(d["name"], tuple(d["shape"]), d["dtype"], tuple(tuple(r) for r in d.get("ranges", ())))


def metadata_source(meta: LibraryMetadata) -> str:
    """C++ source defining the metadata section; linked into the library by ``export_library``."""
    payload = meta.to_json().encode("utf-8") + b"\0"
    body = ",".join(str(b) for b in payload)
    return (
        "// generated by kiln: model metadata, read back from the ELF section by targets.library_format\n"
        'extern "C" const unsigned char kiln_metadata[];\n'
        f'extern "C" __attribute__((used, section("{SECTION}")))\n'
        f"const unsigned char kiln_metadata[{len(payload)}] = {{{body}}};\n"
    )


def _elf_section(data: bytes, wanted: str) -> bytes | None:
    """Bytes of the named section of a 64-bit little-endian ELF file, or None."""
    if data[:4] != b"\x7fELF":
        raise LibraryError("not an ELF shared library")
    if data[4] != 2 or data[5] != 1:
        raise LibraryError("only 64-bit little-endian libraries are supported")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    if shoff == 0 or shoff + shnum * shentsize > len(data):
        raise LibraryError("the library's section table is damaged or truncated")

    def header(i: int) -> tuple[int, int, int]:
        base = shoff + i * shentsize
        (name,) = struct.unpack_from("<I", data, base)
        offset, size = struct.unpack_from("<QQ", data, base + 0x18)
        return name, offset, size

    _, str_off, str_size = header(shstrndx)
    names = data[str_off : str_off + str_size]
    for i in range(shnum):
        name_off, offset, size = header(i)
        end = names.find(b"\0", name_off)
        if names[name_off:end].decode("ascii", "replace") == wanted:
            return data[offset : offset + size]
    return None


def read_metadata(path: str | Path) -> LibraryMetadata:
    """The metadata of a kiln library, read from the file without loading it.

    The seal is checked first (``verify_library``), so that a truncated or modified file is
    refused as such before anything in it is parsed."""
    path = Path(path)
    if not path.is_file():
        raise LibraryError(f"{path}: no such library file")
    data = path.read_bytes()
    if not data.startswith(b"\x7fELF"):
        raise LibraryError(f"{path}: not an ELF shared library; give a library made by `kiln compile`")
    verify_library(path, data)
    try:
        blob = _elf_section(data, SECTION)
    except (struct.error, IndexError, ValueError) as err:
        raise LibraryError(f"{path}: the library's ELF headers are damaged ({err}); recompile it") from None
    if blob is None:
        raise LibraryError(f"{path}: not a kiln library (no {SECTION} section); compile it with `kiln compile`")
    try:
        meta = LibraryMetadata.from_json(blob.split(b"\0", 1)[0].decode("utf-8"))
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as err:  # UnicodeDecodeError is a ValueError
        raise LibraryError(f"{path}: kiln metadata is unreadable ({type(err).__name__}); recompile the model") from None
    if not isinstance(meta.format_version, int) or meta.format_version > FORMAT_VERSION:
        raise LibraryError(
            f"{path}: built by a newer kiln (metadata format {meta.format_version}); upgrade kiln to load it"
        )
    return meta


SEAL_MAGIC = b"KILNSEAL"
SEAL_SIZE = len(SEAL_MAGIC) + 32


def seal_library(path: str | Path) -> None:
    """Append ``KILNSEAL`` + sha256(everything before it) to a library (ELF loaders ignore trailing bytes)."""
    path = Path(path)
    digest = hashlib.sha256(path.read_bytes()).digest()
    with open(path, "ab") as f:
        f.write(SEAL_MAGIC + digest)


def verify_library(path: str | Path, data: bytes | None = None) -> None:
    """Refuse a library whose bytes changed after ``kiln compile`` sealed it."""
    data = Path(path).read_bytes() if data is None else data
    body, seal = data[:-SEAL_SIZE], data[-SEAL_SIZE:]
    if len(data) <= SEAL_SIZE or not seal.startswith(SEAL_MAGIC):
        raise LibraryError(f"{path}: the library has no kiln seal: it was modified after compilation "
                           "(e.g. stripped or truncated) or not made by this kiln; recompile it")
    if hashlib.sha256(body).digest() != seal[len(SEAL_MAGIC):]:
        raise LibraryError(f"{path}: the library was modified after compilation (its sha256 no longer matches "
                           "the seal kiln wrote); recompile it")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
