"""Named target presets as data.

A preset says which TVM target to build for, which host target drives it, which
compiler links the shared library, and which runtime device runs it. Adding a board
means adding a row to ``PRESETS``, not an ``if`` somewhere else.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

from targets.errors import TargetError

AARCH64_GXX = "aarch64-linux-gnu-g++"


@dataclass(frozen=True)
class TargetPreset:
    """One named target: everything needed to build and run a library for it."""

    name: str
    description: str
    target: dict[str, Any]
    host: dict[str, Any] | None = None
    # Cross compiler used to link the .so (None: the host's default C++ compiler).
    cross_compiler: str | None = None
    cross_triple: str | None = None
    # Debian package that provides the cross compiler, for the error message.
    cross_package: str | None = None
    device: str = "cpu"  # runtime device: "cpu" or "cuda"
    aliases: tuple[str, ...] = field(default_factory=tuple)
    # Activation layout of float convolutions (compiler/passes/convert_conv_layout.py): "NCHW" or "NHWC".
    conv_layout: str = "NCHW"
    # The layout for INT8 builds (None: conv_layout). x86: NHWC, where the int8 dot-product
    # kernels read 4 contiguous channels in place (SqueezeNet INT8 about 1.8x faster than NCHW).
    int8_conv_layout: str | None = None

    @property
    def kind(self) -> str:
        return str(self.target["kind"])

    @property
    def is_cross(self) -> bool:
        return self.cross_compiler is not None

    @property
    def native_fp16(self) -> bool:
        """Whether the device computes in float16 natively: CUDA GPUs, ARM64 with the ``fullfp16``
        extension, x86 with AVX512-FP16. Elsewhere LLVM converts every float16 value to float32
        and back around each operation: slower than float32, so ``--precision fp16`` is refused."""
        if self.device == "cuda":
            return True
        mattr = {str(a) for a in self.target.get("mattr", ())}
        return bool(mattr & {"+fullfp16", "+avx512fp16"}) or self.target.get("mcpu") in FP16_X86_CPUS

    def tvm_target(self):
        """The ``tvm.target.Target`` for this preset."""
        import tvm

        if self.host is not None:
            return tvm.target.Target(self.target, host=self.host)
        return tvm.target.Target(self.target)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "target": self.target,
            "host": self.host,
            "cross_compiler": self.cross_compiler,
            "device": self.device,
            "conv_layout": self.conv_layout,
            "int8_conv_layout": self.int8_conv_layout or self.conv_layout,
        }


FP16_X86_CPUS = ("sapphirerapids", "graniterapids", "emeraldrapids")  # AVX512-FP16


def fp16_refusal(preset: "TargetPreset") -> str | None:
    """Why ``preset`` cannot take ``--precision fp16`` (None when it can)."""
    if preset.native_fp16:
        return None
    having = ", ".join(p.name for p in PRESETS.values() if p.native_fp16 and p.device == "cpu")
    return (f"--precision fp16 needs native half-precision arithmetic, which target '{preset.name}' lacks "
            f"(float16 would be converted to float32 around every operation: slower than fp32). Targets that have "
            f"it: CUDA presets, {having}, or an x86 JSON target with mattr +avx512fp16 (Sapphire Rapids); here use "
            "--precision fp32 or int8")


def _llvm_x86(mcpu: str) -> dict[str, Any]:
    return {"kind": "llvm", "mcpu": mcpu, "mtriple": "x86_64-linux-gnu"}


def _llvm_arm(mcpu: str | None, mattr: list[str]) -> dict[str, Any]:
    target: dict[str, Any] = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": mattr}
    if mcpu:
        target["mcpu"] = mcpu
    return target


def _cuda(arch: str) -> dict[str, Any]:
    # MetaSchedule needs the size limits spelled out (see ../shared/DESIGN.md).
    return {
        "kind": "cuda",
        "arch": arch,
        "max_threads_per_block": 1024,
        "max_shared_memory_per_block": 49152,
        "thread_warp_size": 32,
    }


_ARM_CROSS = dict(
    cross_compiler=AARCH64_GXX, cross_triple="aarch64-linux-gnu", cross_package="g++-aarch64-linux-gnu"
)
_X86_HOST = {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}

PRESETS: dict[str, TargetPreset] = {
    p.name: p
    for p in [
        TargetPreset("x86-avx2", "x86-64 with AVX2/FMA (Haswell and newer)", _llvm_x86("haswell"),
                     int8_conv_layout="NHWC"),
        TargetPreset("x86-avx512", "x86-64 with AVX-512 (Skylake-SP and newer)", _llvm_x86("skylake-avx512"),
                     int8_conv_layout="NHWC"),
        TargetPreset("x86-vnni", "x86-64 with AVX-512 VNNI (Cascade Lake and newer)", _llvm_x86("cascadelake"),
                     int8_conv_layout="NHWC"),
        TargetPreset("arm64", "generic ARMv8-A with NEON", _llvm_arm(None, ["+neon"]), **_ARM_CROSS),
        TargetPreset("rpi4", "Raspberry Pi 4 (Cortex-A72, NEON)", _llvm_arm("cortex-a72", ["+neon"]), **_ARM_CROSS),
        TargetPreset(
            "cortex-a76", "Cortex-A76 (NEON, dotprod, fp16)",
            _llvm_arm("cortex-a76", ["+neon", "+dotprod", "+fullfp16"]), **_ARM_CROSS,
        ),
        TargetPreset(
            "graviton2", "AWS Graviton2 / Neoverse-N1 (NEON, dotprod, fp16)",
            _llvm_arm("neoverse-n1", ["+neon", "+dotprod", "+fullfp16"]), aliases=("neoverse-n1",), **_ARM_CROSS,
        ),
        TargetPreset(
            "graviton3", "AWS Graviton3 / Neoverse-V1 (NEON, dotprod, i8mm, fp16; SVE not used)",
            _llvm_arm("neoverse-v1", ["+neon", "+dotprod", "+i8mm", "+fullfp16"]), aliases=("neoverse-v1",),
            **_ARM_CROSS,
        ),
        TargetPreset(
            "jetson-orin", "NVIDIA Jetson Orin (CUDA sm_87, aarch64 host)", _cuda("sm_87"),
            host=_llvm_arm("cortex-a78", ["+neon", "+dotprod", "+fullfp16"]), device="cuda", **_ARM_CROSS,
        ),
        *[
            TargetPreset(f"cuda-sm{sm}", f"NVIDIA GPU, compute capability {sm[0]}.{sm[1]} ({card})", _cuda(f"sm_{sm}"),
                         host=_X86_HOST, device="cuda")
            for sm, card in [("75", "T4, RTX 20xx"), ("80", "A100"), ("86", "A10, RTX 30xx"),
                             ("89", "L4, RTX 40xx"), ("90", "H100, H200")]
        ],
    ]
}

_ALIASES = {alias: p.name for p in PRESETS.values() for alias in p.aliases}


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (x86 `flags`, ARM `Features`) from /proc/cpuinfo; on AArch64
    without them (some kernels and emulators), the HWCAP bits of /proc/self/auxv."""
    from targets.cpu_features import hwcap_features

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags") or line.startswith("Features"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:  # no /proc/cpuinfo (not Linux): no flags known, detect_host takes the generic preset
        return frozenset()
    if platform.machine().lower() in ("aarch64", "arm64"):
        try:
            with open("/proc/self/auxv", "rb") as f:
                return hwcap_features(f.read())
        except OSError:
            return frozenset()
    return frozenset()


def detect_host(flags: frozenset[str] | None = None, machine: str | None = None) -> TargetPreset:
    """The preset matching this machine's CPU, read from its feature flags (or the given ``flags``
    of a CPU of architecture ``machine``, e.g. a benchmark record's)."""
    machine = (machine or platform.machine()).lower()
    flags = cpu_flags() if flags is None else flags
    if machine in ("aarch64", "arm64"):
        from targets.cpu_features import ARM_MATTR  # LLVM attribute -> Linux feature name (dotprod: asimddp)

        mattr = ["+neon"] + [attr for attr in ("+dotprod", "+i8mm", "+fullfp16") if ARM_MATTR[attr] in flags]
        target = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": mattr}
        return TargetPreset("host", f"this machine (aarch64, {' '.join(mattr)})", target)
    if "avx512_vnni" in flags:
        base = PRESETS["x86-vnni"]
    elif "avx512f" in flags:
        base = PRESETS["x86-avx512"]
    elif "avx2" in flags:
        base = PRESETS["x86-avx2"]
    else:
        return TargetPreset("host", "this machine (x86-64, no AVX2)", {"kind": "llvm"})
    return TargetPreset("host", f"this machine ({base.name}: {base.description})", base.target,
                        int8_conv_layout=base.int8_conv_layout)


CONV_LAYOUTS = ("NCHW", "NHWC", "NCHWc")  # NCHWc: channel blocks of the target's vector width


def with_conv_layout(preset: TargetPreset, layout: str | None) -> TargetPreset:
    """``preset`` with its conv layout replaced (None: unchanged). An explicit layout holds for
    int8 convs too (a pre-quantized model's, ``Int8ConvLayout``), not only float ones.

    "auto" is not a layout: ``compiler.build.compile_model`` resolves it (build both, keep
    the faster) before any preset sees it.
    """
    if layout is None:
        return preset
    canonical = {name.upper(): name for name in CONV_LAYOUTS}.get(layout.upper())
    if canonical is None:
        raise TargetError(f"--layout {layout}: use one of {', '.join(CONV_LAYOUTS)} "
                          "(auto only for kiln compile / compile_model)")
    return replace(preset, conv_layout=canonical, int8_conv_layout=canonical)


def with_build_layout(preset: TargetPreset, layout: str | None, precision: str) -> TargetPreset:
    """``preset`` with the conv layout a build of ``precision`` uses: ``layout`` when given, else
    for int8 the preset's ``int8_conv_layout`` (NHWC on x86), else the preset's own. Compile and
    tune both choose it here, so tuning records match the compiled kernels."""
    return with_conv_layout(preset, layout or (preset.int8_conv_layout if precision == "int8" else None))


def list_presets() -> list[TargetPreset]:
    """Every preset, ``host`` (detected) first."""
    return [detect_host(), *PRESETS.values()]


def runs_on_this_machine(preset: TargetPreset) -> bool:
    """Whether libraries for ``preset`` are built for this very machine (a CPU target equal to the
    detected host's), so they can be timed here (``--layout auto``, ``--inter-op auto``, the
    tuning network check)."""
    return preset.device == "cpu" and not preset.is_cross and preset.target == detect_host().target


def resolve_target(spec: str | TargetPreset | None) -> TargetPreset:
    """A preset from a name (``host``, ``x86-avx2``, …) or a TVM target JSON string.

    Raises ``TargetError`` naming the known presets when the name is unknown.
    """
    if isinstance(spec, TargetPreset):
        return spec
    if spec is None or spec == "host":
        return detect_host()
    name = _ALIASES.get(spec, spec)
    if name in PRESETS:
        return PRESETS[name]
    text = spec.strip()
    if text.startswith("{"):
        try:
            target = json.loads(text)
        except json.JSONDecodeError as err:
            raise TargetError(f"--target is not valid JSON: {err}") from None
        if not isinstance(target, dict) or "kind" not in target:
            raise TargetError('a target JSON object needs a "kind", e.g. {"kind": "llvm", "mcpu": "haswell"}')
        host = target.pop("host", None)
        device = "cuda" if target["kind"] == "cuda" else "cpu"
        if device == "cuda" and host is None:
            host = _X86_HOST
        triple = str((host or target).get("mtriple", ""))
        cross = dict(_ARM_CROSS) if triple.startswith("aarch64") and platform.machine() != "aarch64" else {}
        preset = TargetPreset("custom", "target given as TVM JSON", target, host=host, device=device, **cross)
        try:
            preset.tvm_target()
        except Exception as err:  # TVM raises its own error types for a bad target
            raise TargetError(f"TVM refused the target {text}: {str(err).splitlines()[0]}") from None
        return preset
    known = ", ".join(["host", *PRESETS])
    raise TargetError(f"unknown target '{spec}'. Known targets: {known}; or pass a TVM target JSON object")


def default_threads() -> int:
    """Threads a runtime uses by default: the cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
