from __future__ import annotations

import pytest

from targets.errors import TargetError
from targets.registry import PRESETS, detect_host, resolve_target


def test_every_preset_is_a_valid_tvm_target():
    for preset in PRESETS.values():
        target = preset.tvm_target()
        assert target.kind.name == preset.kind


def test_host_is_detected():
    host = detect_host()
    assert host.name == "host" and host.kind == "llvm"
    assert resolve_target("host").target == host.target
    assert resolve_target(None).name == "host"


def test_aliases_and_json():
    assert resolve_target("neoverse-n1").name == "graviton2"
    custom = resolve_target('{"kind": "llvm", "mcpu": "znver3"}')
    assert custom.name == "custom" and custom.target["mcpu"] == "znver3"


@pytest.mark.parametrize("spec, message", [
    ("x86-avx3", "unknown target 'x86-avx3'. Known targets: host, x86-avx2"),
    ("{not json", "not valid JSON"),
    ('{"mcpu": "haswell"}', 'needs a "kind"'),
    ('{"kind": "no-such-kind"}', "TVM refused"),
])
def test_bad_targets(spec, message):
    with pytest.raises(TargetError, match=message.replace("(", r"\(")):
        resolve_target(spec)


def test_fp16_is_refused_where_the_target_has_no_native_half_precision(tiny_onnx, tmp_path):
    """On x86 without AVX512-FP16 LLVM converts every float16 to float32 and back (slower than
    fp32, docs/limitations.md): refused, naming the targets that have it."""
    import json

    from compiler.build import compile_model
    from targets.registry import fp16_refusal

    for name in ("x86-avx2", "x86-avx512", "x86-vnni", "rpi4", "arm64"):
        assert not resolve_target(name).native_fp16 and "graviton2" in fp16_refusal(resolve_target(name))
    for name in ("graviton2", "graviton3", "cortex-a76", "cuda-sm80", "jetson-orin"):
        assert resolve_target(name).native_fp16 and fp16_refusal(resolve_target(name)) is None
    spr = json.dumps({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mattr": ["+avx512f", "+avx512fp16"]})
    assert resolve_target(spr).native_fp16
    with pytest.raises(TargetError, match="needs native half-precision"):
        compile_model(tiny_onnx, tmp_path / "m.so", target="x86-avx2", precision="fp16")


RPI4_FEATURES = {"fp", "asimd", "evtstrm", "crc32", "cpuid"}  # /proc/cpuinfo of a Cortex-A72
AVX2_FLAGS = {"sse4_2", "avx", "avx2", "fma"}


@pytest.mark.parametrize("preset, flags, missing", [
    ("graviton3", RPI4_FEATURES, ["asimddp", "asimdhp", "i8mm"]),
    ("graviton2", RPI4_FEATURES, ["asimddp", "asimdhp"]),
    ("rpi4", RPI4_FEATURES, []),
    ("x86-vnni", AVX2_FLAGS, ["avx512_vnni", "avx512bw", "avx512cd", "avx512dq", "avx512f", "avx512vl"]),
    ("x86-avx2", AVX2_FLAGS, []),
    ('{"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mattr": ["+avx2", "+avx512fp16"]}', AVX2_FLAGS,
     ["avx512_fp16"]),
    ('{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+i8mm"]}', RPI4_FEATURES, ["i8mm"]),
])
def test_every_preset_and_json_target_names_the_features_it_needs(preset, flags, missing):
    from targets.cpu_features import missing_features

    assert missing_features(resolve_target(preset).target, flags) == missing


def test_aarch64_features_come_from_hwcap_where_cpuinfo_has_none():
    import struct

    from targets.cpu_features import hwcap_features

    auxv = struct.pack("<QQQQQQ", 16, (1 << 1) | (1 << 20), 26, 1 << 13, 0, 0)  # asimd, asimddp; i8mm
    assert hwcap_features(auxv) == {"asimd", "asimddp", "i8mm"}


def test_a_library_needing_a_missing_feature_is_refused_before_loading(tiny_lib, monkeypatch):
    from dataclasses import replace

    import compiler.runtime as runtime
    from targets.errors import LibraryError
    from targets.library_format import read_metadata

    meta = read_metadata(tiny_lib)
    amx = replace(meta, target={"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "sapphirerapids"},
                  target_name="x86-amx")
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset(AVX2_FLAGS))
    if runtime.platform.machine().lower() != "x86_64":
        pytest.skip("an x86 check")
    with pytest.raises(LibraryError, match=r"needs the CPU features amx_bf16, amx_int8, .*which this CPU lacks.*"
                                           r"one of the presets this CPU runs: x86-avx2"):
        runtime.check_runnable_here(amx, tiny_lib)


def test_an_arm_host_is_detected_from_linux_feature_names():
    """/proc/cpuinfo names dotprod ``asimddp`` and fp16 ``asimdhp``: a Graviton3 host gets all three."""
    from targets.registry import detect_host

    graviton3 = frozenset({"fp", "asimd", "asimdhp", "asimddp", "i8mm", "sve"})
    assert detect_host(graviton3, "aarch64").target["mattr"] == ["+neon", "+dotprod", "+i8mm", "+fullfp16"]
    assert detect_host(frozenset({"fp", "asimd"}), "aarch64").target["mattr"] == ["+neon"]
