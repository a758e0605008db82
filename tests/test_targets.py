from __future__ import annotations

import pytest

from compiler.errors import TargetError
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
