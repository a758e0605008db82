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
