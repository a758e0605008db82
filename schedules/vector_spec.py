"""How wide a CPU's SIMD registers are, read from the TVM target (data, not ``if`` chains).

Every default rule sizes its vector lanes and register tiles from a ``VectorSpec``:
AVX2 has 16 registers of 8 float32 lanes, AVX-512 32 of 16, NEON 32 of 4.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm.target import Target


@dataclass(frozen=True)
class VectorSpec:
    """The SIMD shape of one CPU: bits per vector register and how many registers there are."""

    isa: str
    vector_bits: int
    registers: int

    def lanes(self, dtype_bits: int = 32) -> int:
        """Lanes of one vector register for elements of ``dtype_bits`` bits (8 float32 on AVX2)."""
        return max(1, self.vector_bits // dtype_bits)


SSE = VectorSpec("sse", 128, 16)
AVX2 = VectorSpec("avx2", 256, 16)
AVX512 = VectorSpec("avx512", 512, 32)
NEON = VectorSpec("neon", 128, 32)

# LLVM -mcpu names and their widest *profitable* vector unit. Unknown x86 CPUs get AVX2's
# width: vectors wider than the hardware are split by LLVM, so this is never wrong, only slower.
MCPU_SPECS: dict[str, VectorSpec] = {
    **{cpu: AVX2 for cpu in ("haswell", "broadwell", "skylake", "alderlake", "raptorlake", "znver1", "znver2",
                             "znver3", "core-avx2", "x86-64-v3")},
    **{cpu: AVX512 for cpu in ("skylake-avx512", "cascadelake", "cooperlake", "icelake-server",
                               "icelake-client", "tigerlake", "sapphirerapids", "znver4", "znver5",
                               "x86-64-v4")},
    **{cpu: SSE for cpu in ("x86-64", "x86-64-v2", "nehalem", "westmere", "sandybridge", "ivybridge")},
}
# -mattr features, checked widest first.
MATTR_SPECS: list[tuple[str, VectorSpec]] = [("+avx512f", AVX512), ("+avx2", AVX2), ("+neon", NEON)]
# Fallback by the architecture part of -mtriple.
ARCH_SPECS: dict[str, VectorSpec] = {"x86_64": AVX2, "aarch64": NEON, "arm64": NEON, "armv7": NEON}


def vector_spec(target: Target) -> VectorSpec:
    """The ``VectorSpec`` of an LLVM CPU target, from its ``mcpu``, ``mattr`` or ``mtriple``."""
    attrs = target.attrs
    mcpu = str(attrs.get("mcpu", "") or "")
    if mcpu in MCPU_SPECS:
        return MCPU_SPECS[mcpu]
    mattr = [str(a) for a in (attrs.get("mattr") or ())]
    for feature, spec in MATTR_SPECS:
        if feature in mattr:
            return spec
    arch = str(attrs.get("mtriple", "") or "").split("-")[0]
    if arch in ARCH_SPECS:
        return ARCH_SPECS[arch]
    if arch.startswith("arm") or arch.startswith("aarch"):
        return NEON
    return AVX2
