"""Which CPU features a library's target needs, named as Linux reports them, and which are missing.

A library compiled for a CPU feature this machine lacks (AVX-512 on an AVX2 machine, ``i8mm``
from a Graviton3 build on a Raspberry Pi 4) dies with SIGILL at its first kernel. The runtime
compares what the target needs with this CPU's features before TVM loads the file.

Feature names are those of ``/proc/cpuinfo``: x86 ``flags``, AArch64 ``Features`` (the same
names as the kernel's HWCAP bits, read from ``/proc/self/auxv`` where cpuinfo has none).
"""

from __future__ import annotations

import struct
from typing import Any

_AVX512 = {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"}
# What LLVM's -mcpu enables, as far as kiln's kernels can use it.
X86_MCPU: dict[str, set[str]] = {
    "haswell": {"avx2", "fma"}, "broadwell": {"avx2", "fma"}, "skylake": {"avx2", "fma"},
    "znver2": {"avx2", "fma"}, "znver3": {"avx2", "fma"}, "alderlake": {"avx2", "fma", "avx_vnni"},
    "skylake-avx512": {"avx2", "fma", *_AVX512},
    "cascadelake": {"avx2", "fma", *_AVX512, "avx512_vnni"},
    "cooperlake": {"avx2", "fma", *_AVX512, "avx512_vnni", "avx512_bf16"},
    "icelake-server": {"avx2", "fma", *_AVX512, "avx512_vnni", "avx512vbmi"},
    "sapphirerapids": {"avx2", "fma", *_AVX512, "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
                       "amx_int8", "amx_bf16"},
    "znver4": {"avx2", "fma", *_AVX512, "avx512_vnni", "avx512_bf16"},
}
X86_MATTR: dict[str, str] = {
    "+avx2": "avx2", "+fma": "fma", "+avx512f": "avx512f", "+avx512bw": "avx512bw", "+avx512dq": "avx512dq",
    "+avx512vl": "avx512vl", "+avx512vnni": "avx512_vnni", "+avx512bf16": "avx512_bf16",
    "+avx512fp16": "avx512_fp16", "+avxvnni": "avx_vnni", "+amx-tile": "amx_tile", "+amx-int8": "amx_int8",
    "+amx-bf16": "amx_bf16",
}
ARM_MCPU: dict[str, set[str]] = {
    "cortex-a53": {"asimd"}, "cortex-a72": {"asimd"},
    "cortex-a76": {"asimd", "asimddp", "asimdhp"}, "cortex-a78": {"asimd", "asimddp", "asimdhp"},
    "neoverse-n1": {"asimd", "asimddp", "asimdhp"}, "neoverse-v1": {"asimd", "asimddp", "asimdhp", "i8mm"},
}
ARM_MATTR: dict[str, str] = {"+neon": "asimd", "+dotprod": "asimddp", "+fullfp16": "asimdhp", "+i8mm": "i8mm",
                             "+sve": "sve", "+sve2": "sve2", "+bf16": "bf16"}
# AArch64 HWCAP / HWCAP2 bits (Linux arch/arm64/include/uapi/asm/hwcap.h) for the names above.
_HWCAP = {"asimd": 1, "asimdhp": 10, "asimddp": 20, "sve": 22}
_HWCAP2 = {"sve2": 1, "i8mm": 13, "bf16": 14}


def required_features(target: dict[str, Any]) -> tuple[str, set[str]]:
    """(architecture "x86_64" | "aarch64" | "", the features a TVM LLVM target dict needs)."""
    triple = str(target.get("mtriple", ""))
    mcpu = str(target.get("mcpu", "") or "")
    mattr = [str(a) for a in (target.get("mattr") or ())]
    if triple.startswith("x86_64"):
        return "x86_64", set(X86_MCPU.get(mcpu, set())) | {X86_MATTR[a] for a in mattr if a in X86_MATTR}
    if triple.startswith(("aarch64", "arm64")):
        return "aarch64", set(ARM_MCPU.get(mcpu, set())) | {ARM_MATTR[a] for a in mattr if a in ARM_MATTR}
    return "", set()


def missing_features(target: dict[str, Any], flags: frozenset[str] | set[str]) -> list[str]:
    """The features ``target`` needs that ``flags`` (this CPU's) lack, sorted; [] when it can run."""
    _, needed = required_features(target)
    return sorted(needed - set(flags))


def hwcap_features(auxv: bytes) -> frozenset[str]:
    """AArch64 feature names from the bytes of ``/proc/self/auxv`` (pairs of 64-bit type, value)."""
    values = {}
    for offset in range(0, len(auxv) - 15, 16):
        kind, value = struct.unpack_from("<QQ", auxv, offset)
        values[kind] = value
    hwcap, hwcap2 = values.get(16, 0), values.get(26, 0)  # AT_HWCAP, AT_HWCAP2
    return frozenset([n for n, bit in _HWCAP.items() if hwcap >> bit & 1]
                     + [n for n, bit in _HWCAP2.items() if hwcap2 >> bit & 1])
