"""The benchmark harness (compiler/benchmark.py) and the page made from its result files
(scripts/benchmarks_doc.py, run as a program)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from compiler.benchmark import (
    ENVELOPE_FIELDS,
    Machine,
    Result,
    both_orders_p50_ms,
    current_command,
    geometric_mean,
    parse_cpuinfo,
    read_result,
    time_calls,
    write_result,
)

REPO = Path(__file__).resolve().parent.parent

ZEN4_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model name\t: AMD EPYC 9R14 96-Core Processor
cpu MHz\t\t: 2596.000
flags\t\t: fpu vme de pse tsc msr sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni avx512_bf16 aes

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu vme de pse tsc msr sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni avx512_bf16 aes
"""

SAPPHIRE_FLAGS = "sse4_2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8"

GRAVITON_CPUINFO = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU part\t: 0xd0c
"""


def test_cpuinfo_of_an_avx512_vnni_machine():
    name, flags = parse_cpuinfo(ZEN4_CPUINFO)
    assert name == "AMD EPYC 9R14 96-Core Processor" and "avx512_vnni" in flags and "fpu" in flags
    m = Machine.from_cpuinfo(ZEN4_CPUINFO, cores=2, arch="x86_64", python="3.11.7")
    assert m.cpu == "AMD EPYC 9R14 96-Core Processor" and m.cores == 2 and m.arch == "x86_64"
    assert {"avx2", "avx512f", "avx512_vnni", "fma"} <= set(m.simd_flags) and "fpu" not in m.simd_flags
    assert m.host_preset == "x86-vnni" and m.host_target["mcpu"] == "cascadelake"
    data = m.to_json()
    assert set(data) == {"cpu", "arch", "cores", "simd_flags", "host_preset", "host_target", "python"}
    assert json.loads(json.dumps(data)) == data


@pytest.mark.parametrize("flags, preset", [("sse4_2 avx avx2 fma", "x86-avx2"), ("avx2 avx512f avx512bw", "x86-avx512"),
                                           (SAPPHIRE_FLAGS, "x86-vnni"), ("sse4_2", None)])
def test_host_preset_follows_the_flags(flags, preset):
    m = Machine.from_cpuinfo(f"model name\t: Some CPU\nflags\t\t: {flags}\n", cores=4, arch="x86_64")
    assert m.host_preset == preset
    if preset == "x86-vnni":
        assert {"amx_tile", "amx_int8", "avx512_fp16"} <= set(m.simd_flags)


def test_cpuinfo_of_an_arm_machine():
    m = Machine.from_cpuinfo(GRAVITON_CPUINFO, cores=8, arch="aarch64")
    assert {"asimd", "asimddp", "asimdhp"} <= set(m.simd_flags) and "aes" not in m.simd_flags
    assert m.host_target["mtriple"] == "aarch64-linux-gnu" and "+neon" in m.host_target["mattr"]
    assert m.cpu  # no model name on ARM: something else names it, never empty


def test_envelope_has_the_fields_and_reads_back(tmp_path):
    path = tmp_path / "sub" / "demo.json"
    result = write_result(path, "demo", [{"model": "tiny", "kiln_p50_ms": 0.5}], {"threads": 2},
                          command="python scripts/demo.py --threads 2")
    data = json.loads(path.read_text())
    assert list(data) == [*ENVELOPE_FIELDS, "summary"]
    assert data["kind"] == "demo" and data["command"] == "python scripts/demo.py --threads 2"
    assert data["commit"] is None or re.fullmatch(r"[0-9a-f]{40}", data["commit"])
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", data["date"])
    assert data["machine"]["cores"] >= 1 and "simd_flags" in data["machine"]
    assert data["rows"] == [{"model": "tiny", "kiln_p50_ms": 0.5}] and data["summary"] == {"threads": 2}
    assert read_result(path) == result
    no_summary = Result("demo", [], machine={"cpu": "x"}).to_json()
    assert "summary" not in no_summary and no_summary["command"] is None and no_summary["commit"] is None


def test_old_shaped_files_are_refused(tmp_path):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"machine": {}, "threads": 2, "rows": []}))
    with pytest.raises(ValueError, match="old.json: not a result envelope .*missing kind, command, commit, date"):
        read_result(old)
    old.write_text(json.dumps({"squeezenet": {"fp32_ms": 1.0}}))
    with pytest.raises(ValueError, match="not a result envelope"):
        read_result(old)


def test_command_and_timing_helpers():
    assert current_command(["scripts/bench.py", "--models", "a b"]) == "python scripts/bench.py --models 'a b'"
    assert geometric_mean([1.0, 4.0]) == pytest.approx(2.0)
    stats = time_calls(lambda: sum(range(1000)), runs=5, warmup=1)
    assert stats.runs == 5 and stats.p50_ms > 0 and stats.cpu_ms is not None and stats.cpu_ms >= 0
    p50 = both_orders_p50_ms({"a": lambda: None, "b": lambda: None}, rounds=1, runs=3)
    assert set(p50) == {"a", "b"} and all(v >= 0 for v in p50.values())


def _generator(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, str(REPO / "scripts" / "benchmarks_doc.py"), *args],
                          capture_output=True, text=True, timeout=120, env=env)


def test_generator_writes_a_section_per_kind(tmp_path):
    results = tmp_path / "results"
    machine = Machine.from_cpuinfo(ZEN4_CPUINFO, cores=2, arch="x86_64", python="3.11.7").to_json()
    Result("bench", [{"model": "squeezenet", "kiln_p50_ms": 4.8362, "onnxruntime_p50_ms": 3.855, "ratio": 1.25}],
           {"threads": 2, "geomean_ratio": 1.25}, "python scripts/bench.py --threads 2", "a" * 40, machine,
           "2026-12-06").write(results / "bench_zen4.json")
    Result("bench", [{"model": "resnet50", "kiln_p50_ms": 64.0, "onnxruntime_p50_ms": 54.6, "ratio": 1.17}],
           machine=None, date="2026-11-28").write(results / "bench_avx2.json")
    Result("kill_test", [{"kill": 0, "records": 3}], {"records_lost": 0}).write(results / "kill_test.json")
    (results / "curve.png").write_bytes(b"\x89PNG")
    Result("tune_report", [{"workload": 0, "best_ms": 0.25}], {"curve": "scripts/results/curve.png"}
           ).write(results / "tune_report.json")
    out = tmp_path / "docs" / "benchmarks.md"
    done = _generator("--results", str(results), "--out", str(out))
    assert done.returncode == 0, done.stderr
    page = out.read_text()
    sections = re.findall(r"^## (.+)$", page, re.MULTILINE)
    assert len(sections) == 3 and sections[0].startswith("Benchmark kiln against ONNX Runtime")
    assert page.index("bench_zen4.json") < page.index("bench_avx2.json")  # newest first
    assert "- command: `python scripts/bench.py --threads 2`" in page and "commit `aaaaaaaaaaaa`" in page
    assert "AMD EPYC 9R14 96-Core Processor; 2 cores; `--target host` = x86-vnni" in page
    assert "- command: not recorded" in page and "- machine: not recorded" in page
    assert "| squeezenet | 4.836 | 3.855 | 1.25 |" in page and "- geomean_ratio: 1.25" in page
    assert "![curve](../results/curve.png)" in page

    (results / "stale.json").write_text(json.dumps({"rows": []}))
    done = _generator("--results", str(results), "--out", str(out))
    assert done.returncode == 1 and "stale.json: not a result envelope" in done.stderr


def test_this_machine():
    from compiler.benchmark import describe_machine
    from targets.registry import detect_host

    m = describe_machine()
    assert m.cores >= 1 and m.cpu and m.python
    assert m.host_target == detect_host().target  # the flags read here pick the preset `--target host` builds for
