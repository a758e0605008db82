"""A target resolved once: the preset plus every fact kiln's passes and schedules derive from it.

The CLI and the Python API resolve ``--target``/``target=`` once (``resolve``) and pass the
``ResolvedTarget`` down; passes, the quantizer and the tuner read its fields instead of
re-deriving them from the TVM target. It is a ``TargetPreset`` (name, TVM target dict, host,
cross compiler, device, conv layouts) whose derived facts are computed when it is made, so a
``dataclasses.replace`` (another layout, a CUDA arch) re-derives them and they never go stale.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from targets.registry import TargetPreset, resolve_target, with_build_layout


@dataclass(frozen=True)
class ResolvedTarget(TargetPreset):
    """A ``TargetPreset`` with its derived facts (see the module docstring)."""

    tvm: object = field(init=False, compare=False, repr=False)  # the tvm.target.Target, built once
    # float32 lanes of one SIMD register (CPU targets; 8 elsewhere: the blocked-layout default)
    vector_lanes: int = field(init=False)
    # bits (sign included) int8 weights may use for exact kernels: 7 on AVX2 without VNNI
    int8_weight_bits: int = field(init=False)
    # input channels an int8 conv is padded to a multiple of: 4 where a dot-product intrinsic reads 4
    int8_channel_multiple: int = field(init=False)
    # int8 (not uint8) activations: AArch64 with sdot only, CUDA int8 tensor cores
    int8_signed_activations: bool = field(init=False)

    def __post_init__(self) -> None:
        from schedules.int8 import channel_multiple_for, signed_activations_for, weight_bits_for
        from schedules.vector_spec import vector_spec

        target = TargetPreset.tvm_target(self)
        facts = {
            "tvm": target,
            "vector_lanes": vector_spec(target).lanes() if self.kind == "llvm" else 8,
            "int8_weight_bits": weight_bits_for(target),
            "int8_channel_multiple": channel_multiple_for(target),
            "int8_signed_activations": signed_activations_for(target),
        }
        for name, value in facts.items():
            object.__setattr__(self, name, value)

    def tvm_target(self):
        """The ``tvm.target.Target``, built when the target was resolved."""
        return self.tvm


def as_resolved(preset: TargetPreset) -> ResolvedTarget:
    """``preset`` with its facts derived (itself when it already is a ``ResolvedTarget``)."""
    if isinstance(preset, ResolvedTarget):
        return preset
    return ResolvedTarget(**{f.name: getattr(preset, f.name) for f in fields(TargetPreset)})


def resolve(spec: str | TargetPreset | None, layout: str | None = None, precision: str = "fp32") -> ResolvedTarget:
    """Resolve ``--target`` (a preset name, ``host``, TVM target JSON, or a preset) once, with the
    conv layout a build of ``precision`` uses (``with_build_layout``). Raises ``TargetError``
    for an unknown target or layout."""
    return as_resolved(with_build_layout(resolve_target(spec), layout, precision))
