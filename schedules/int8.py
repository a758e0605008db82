"""int8 dot-product tensor intrinsics for x86 and AArch64, and what each target's int8 kernels need.

``DOT_8x4_AVX2`` computes ``C[8] (int32) += sum_k A[4] (uint8) * B[8, 4] (int8)`` with one
``vpmaddubsw`` (u8 x s8 pairs summed into int16), one ``vpmaddwd`` against ones (int16
pairs summed into int32) and an add: TVM's AVX-512 ``dot_16x4_avx512`` at 256-bit width,
for CPUs without VNNI (Haswell to Alder Lake, Zen 1-3). ``AVX512_DOT_16x4`` is the same at
512 bits and ``VNNI_DOT_16x4`` one ``vpdpbusd`` (as TVM's ``dot_16x4_vnni``), ``VNNI_DOT_8x4``
the same on 256-bit registers (channel counts that are multiples of 8 but not 16); kiln registers
its own copies so that no caller has to import TVM's whole tensor-intrinsic package (~11 s).
On AArch64, ``ARM_USDOT_4x4`` is one i8mm ``usdot`` (uint8 x int8) and ``ARM_SDOT_4x4`` one
dotprod ``sdot`` (int8 x int8: where only that exists, ``signed_activations_for`` makes the
quantizer emit int8 activations with zero points shifted by -128, the same dequantized values).

``vpmaddubsw`` saturates its int16 sums: ``a0*b0 + a1*b1`` with ``a`` up to 255 leaves
int16 once ``|b| > 64``. With 7-bit weights (``|w| <= 63``; 2 * 255 * 64 = 32640) every
sum is exact. The quantizer asks ``weight_bits_for(target)`` and quantizes to that many
bits; the ``MarkInt8WeightBits`` pass (``compiler.passes.mark_int8_weight_bits``) marks kernels
whose constant weights need 8 bits (``WEIGHT_BITS_ATTR``), which then never get a saturating intrinsic.

Importing this module registers the intrinsics (small TVMScript functions, ~0.5 s).
"""

from __future__ import annotations

import inspect
import re
from contextlib import contextmanager

from tvm import tirx
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T
from tvm.target import Target
from tvm.target.codegen import llvm_version_major, target_has_features

DOT_8x4_AVX2 = "kiln_dot_8x4_u8i8i32_avx2"  # vpmaddubsw + vpmaddwd, 256-bit (saturating: 7-bit weights)
AVX512_DOT_16x4 = "kiln_dot_16x4_u8i8i32_avx512"  # the same at 512 bits (saturating: 7-bit weights)
VNNI_DOT_16x4 = "kiln_dot_16x4_u8i8i32_vnni"  # vpdpbusd, 512-bit (exact)
VNNI_DOT_8x4 = "kiln_dot_8x4_u8i8i32_vnni"  # vpdpbusd, 256-bit (AVX-512 VL; exact)
ARM_USDOT_4x4 = "kiln_dot_4x4_u8i8i32_usdot"  # AArch64 i8mm usdot: uint8 x int8 (exact)
ARM_SDOT_4x4 = "kiln_dot_4x4_i8i8i32_sdot"  # AArch64 dotprod sdot: int8 x int8 (exact; signed activations)

_PMADDUBSW = {8: "llvm.x86.avx2.pmadd.ub.sw", 16: "llvm.x86.avx512.pmaddubs.w.512"}
_PMADDWD = {8: "llvm.x86.avx2.pmadd.wd", 16: "llvm.x86.avx512.pmaddw.d.512"}


@contextmanager
def _fast_parse():
    """TVMScript calls ``inspect.stack()`` per function; without source lines it is ~10x cheaper
    (see ``schedules/intrinsics.py``)."""
    original = inspect.stack
    inspect.stack = lambda context=1: original(0)
    try:
        yield
    finally:
        inspect.stack = original


def dot_desc(lanes: int, data_dtype: str = "uint8") -> tirx.PrimFunc:
    """C[lanes] (int32) += sum_k int32(A[k]) * int32(B[i, k]), k < 4: what the kernels are matched against."""

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((4,), data_dtype, offset_factor=1),
        B: T.Buffer((lanes, 4), "int8", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    return desc


def _pmadd(lanes: int) -> tirx.PrimFunc:
    """``desc`` as vpmaddubsw (u8 x s8 pairs -> saturated int16) then vpmaddwd with ones (-> int32)."""
    nbytes, nshort = 4 * lanes, 2 * lanes
    pmaddubsw = _PMADDUBSW[lanes]
    pmaddwd = _PMADDWD[lanes]

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((lanes, 4), "int8", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            a_i32 = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
            a_u8 = T.reinterpret(T.broadcast(a_i32, lanes), dtype=f"uint8x{nbytes}")
            b_i8 = B.vload([0, 0], dtype=f"int8x{nbytes}")
            pairs = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(pmaddubsw), a_u8, b_i8, dtype=f"int16x{nshort}"
            )
            C[T.ramp(T.int32(0), 1, lanes)] += T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(pmaddwd), pairs, T.broadcast(T.int16(1), nshort),
                dtype=f"int32x{lanes}",
            )

    return impl


def _vnni(lanes: int) -> tirx.PrimFunc:
    """``desc`` (16 or 8 lanes) as one vpdpbusd: u8 x s8 quadruples summed exactly into int32.

    LLVM 22 declares ``llvm.x86.avx512.vpdpbusd.512`` on ``<64 x i8>`` operands (llvm-project
    PR 155194), older LLVM on ``<16 x i32>``; TVM 0.27's own ``dot_16x4_vnni`` still passes
    i32 vectors and fails LLVM's module verifier with the wheel's LLVM 22. The 256-bit form
    (``.256``, AVX-512 VL) changed the same way.
    """
    nbytes = 4 * lanes
    operands = f"8x{nbytes}" if llvm_version_major() >= 22 else f"32x{lanes}"
    vpdpbusd = f"llvm.x86.avx512.vpdpbusd.{32 * lanes}"

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((lanes, 4), "int8", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            a_i32 = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
            a = T.reinterpret(T.broadcast(a_i32, lanes), dtype=f"uint{operands}")
            b = T.reinterpret(B.vload([0, 0], dtype=f"int8x{nbytes}"), dtype=f"int{operands}")
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(vpdpbusd),
                C.vload([0], dtype=f"int32x{lanes}"), a, b, dtype=f"int32x{lanes}",
            )

    return impl


def _arm_dot(data_dtype: str) -> tirx.PrimFunc:
    """``desc`` (4 lanes, AArch64) as one ``usdot`` (uint8 data, i8mm) or ``sdot`` (int8 data,
    dotprod): four int32 lanes, each the exact sum of 4 products (as TVM's ``dot_4x4_i8i8s32_sdot``)."""
    instr = "usdot" if data_dtype == "uint8" else "sdot"

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), data_dtype, offset_factor=1),
        B: T.Buffer((4, 4), "int8", offset_factor=1),
        C: T.Buffer((4,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:4], A[0:4], B[0:4, 0:4])
            T.writes(C[0:4])
            a_i32 = T.reinterpret(A.vload([0], f"{data_dtype}x4"), dtype="int32")
            a = T.reinterpret(T.broadcast(a_i32, 4), dtype=f"{data_dtype}x16")
            C[T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(f"llvm.aarch64.neon.{instr}.v4i32.v16i8"),
                C.vload([0], dtype="int32x4"), a, B.vload([0, 0], dtype="int8x16"), dtype="int32x4",
            )

    return impl


def _register() -> None:
    """Register the intrinsics once per process."""
    with _fast_parse():
        for name, lanes, data, make in [
            (DOT_8x4_AVX2, 8, "uint8", lambda: _pmadd(8)), (AVX512_DOT_16x4, 16, "uint8", lambda: _pmadd(16)),
            (VNNI_DOT_16x4, 16, "uint8", lambda: _vnni(16)), (VNNI_DOT_8x4, 8, "uint8", lambda: _vnni(8)),
            (ARM_USDOT_4x4, 4, "uint8", lambda: _arm_dot("uint8")),
            (ARM_SDOT_4x4, 4, "int8", lambda: _arm_dot("int8")),
        ]:
            if TensorIntrin.get(name, allow_missing=True) is None:
                TensorIntrin.register(name, dot_desc(lanes, data), make())


_register()


def has_vnni(target: Target) -> bool:
    """Whether an x86 LLVM target has AVX-512 VNNI (``vpdpbusd``: exact u8 x s8 -> int32)."""
    return target.kind.name == "llvm" and bool(target_has_features("avx512vnni", target))


def has_avx512bw(target: Target) -> bool:
    """Whether an x86 LLVM target has AVX-512 BW (``vpmaddubsw`` on 512-bit registers)."""
    return target.kind.name == "llvm" and bool(target_has_features("avx512bw", target))


def has_avx2(target: Target) -> bool:
    """Whether an LLVM target has AVX2 (``vpmaddubsw`` on 256-bit registers)."""
    return target.kind.name == "llvm" and bool(target_has_features("avx2", target))


def _as_target(target: Target | str | dict) -> Target:
    return target if isinstance(target, Target) else Target(target)


def _is_aarch64(target: Target) -> bool:
    return target.kind.name == "llvm" and "aarch64" in str(target.attrs.get("mtriple", ""))


def has_arm_i8mm(target: Target) -> bool:
    """Whether an AArch64 LLVM target has the int8 matrix extension (``usdot``: uint8 x int8)."""
    return _is_aarch64(target) and bool(target_has_features("i8mm", target))


def has_arm_dotprod(target: Target) -> bool:
    """Whether an AArch64 LLVM target has the dot-product extension (``sdot``: int8 x int8)."""
    return _is_aarch64(target) and bool(target_has_features("dotprod", target))


def has_int8_tensor_cores(target: Target) -> bool:
    """Whether a CUDA target has int8 tensor cores (``wmma`` s8 x s8 -> s32, sm_72 and newer)."""
    if target.kind.name != "cuda":
        return False
    arch = re.fullmatch(r"sm_(\d+)[a-z]?", str(target.attrs.get("arch", "")))
    return arch is not None and int(arch.group(1)) >= 72


def signed_activations_for(target: Target | str | dict) -> bool:
    """Whether INT8 activations should be ``int8`` (zero point shifted by -128) on ``target``:
    AArch64 with ``sdot`` but without i8mm's ``usdot`` multiplies int8 by int8 only, and so do
    CUDA's int8 tensor cores (TVM's dlight ``MatmulInt8Tensorization`` takes int8 x int8 only)."""
    target = _as_target(target)
    return (has_arm_dotprod(target) and not has_arm_i8mm(target)) or has_int8_tensor_cores(target)


def weight_bits_for(target: Target | str | dict) -> int:
    """How many bits (sign included) int8 weights may use on ``target`` (a ``Target`` or what
    ``Target()`` accepts) for exact kernels.

    7 (``|w| <= 63``) on x86 with AVX2 but without AVX-512 VNNI, where kiln's int8 kernels
    use the saturating ``vpmaddubsw``; 8 everywhere else (VNNI, ARM, CUDA and the generic
    int32 loops are exact for any int8 weight).
    """
    target = _as_target(target)
    return 7 if has_avx2(target) and not has_vnni(target) else 8


def channel_multiple_for(target: Target | str | dict) -> int:
    """The input-channel multiple kiln's int8 kernels reduce per step on ``target``: 4 where a
    dot-product intrinsic takes 4 channels (x86 with AVX2, AArch64 with dotprod), else 1.
    Convolutions with other channel counts (RGB inputs) are padded to it by ``LowerQDQ``."""
    target = _as_target(target)
    return 4 if has_avx2(target) or has_arm_dotprod(target) else 1


WEIGHT_BITS_ATTR = "kiln.int8_weight_bits"  # on a PrimFunc: its int8 constant arguments need this many bits
# (written by compiler.passes.mark_int8_weight_bits, read by schedules.rules.int8)


def reads_int8(func) -> bool:
    """Whether a TIR kernel takes 8-bit integer data (uint8 or int8 arguments)."""
    return any(str(getattr(p, "dtype", "")) in ("int8", "uint8") for p in func.params)


def int8_bits(values) -> int:
    """Bits (sign included) the int8 array ``values`` needs for exact saturating sums: 7 when every
    value lies in [-64, 64] (2 * 255 * 64 = 32640 fits int16), else 8."""
    import numpy as np

    values = np.asarray(values)
    return 7 if values.size == 0 or int(np.abs(values.astype(np.int16)).max()) <= 64 else 8
