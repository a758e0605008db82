"""The CLI end to end, as a user runs it: exit codes, one-line errors, files in and out."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest


def kiln(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "compiler", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.mark.slow
def test_example_compile_run_roundtrip(tmp_path):
    model, lib = tmp_path / "tiny.onnx", tmp_path / "tiny.so"
    assert kiln("example", "tiny", "-o", str(model)).returncode == 0
    done = kiln("compile", str(model), "-o", str(lib), "--target", "host")
    assert done.returncode == 0, done.stderr
    assert "input  data: float32[1x3x32x32]" in done.stdout
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "in.npz", data=x)
    done = kiln("run", str(lib), "--inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / "out.npz"),
                "--print-top", "3", "--bench", "5", "--reference", str(model), "--threads", "2")
    assert done.returncode == 0, done.stderr
    assert "p50" in done.stdout and "p99" in done.stdout and "kiln / onnxruntime latency" in done.stdout
    assert "with 2 threads" in done.stdout
    diff = float(done.stdout.split("max abs diff ")[1].split()[0])
    assert diff < 1e-4
    with np.load(tmp_path / "out.npz") as out:
        assert out.files == ["prob"] and out["prob"].shape == (1, 10)
    info = kiln("inspect", str(lib), "--json")
    assert info.returncode == 0 and '"source_sha256"' in info.stdout


@pytest.mark.slow
def test_compile_with_nhwc_layout_matches_onnxruntime(tmp_path):
    model, lib = tmp_path / "tiny.onnx", tmp_path / "tiny.so"
    assert kiln("example", "tiny", "-o", str(model)).returncode == 0
    done = kiln("compile", str(model), "-o", str(lib), "--layout", "NHWC")
    assert done.returncode == 0, done.stderr
    done = kiln("run", str(lib), "--reference", str(model))
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.split("max abs diff ")[1].split()[0]) < 1e-4
    assert kiln("compile", str(model), "-o", str(lib), "--layout", "NCHW8c").returncode == 2  # argparse refuses
    done = kiln("compile", str(model), "-o", str(lib), "--layout", "NCHWc")
    assert done.returncode == 0, done.stderr
    done = kiln("run", str(lib), "--reference", str(model))
    assert done.returncode == 0 and float(done.stdout.split("max abs diff ")[1].split()[0]) < 1e-4, done.stderr
    refused = kiln("compile", str(model), "-o", str(lib), "--layout", "NCHWc", "--precision", "fp16")
    assert refused.returncode != 0 and "float32 CPU builds" in refused.stderr and "Traceback" not in refused.stderr
    done = kiln("compile", str(model), "-o", str(lib), "--layout", "auto")
    assert done.returncode == 0, done.stderr
    line = next(s for s in done.stdout.splitlines() if s.startswith("layout auto:"))
    assert "NCHW " in line and "NHWC " in line and "NCHWc " in line
    assert any(f"-> kept {layout}" in line for layout in ("NCHW", "NHWC", "NCHWc"))
    assert kiln("run", str(lib), "--reference", str(model)).returncode == 0
    refused = kiln("compile", str(model), "-o", str(lib), "--layout", "auto", "--target", "arm64")
    assert refused.returncode != 0 and "--layout auto" in refused.stderr and "Traceback" not in refused.stderr


def test_listings():
    assert "squeezenet" in kiln("example").stdout
    out = kiln("targets").stdout
    assert "x86-avx2" in out and "host" in out


def _assert_user_error(done: subprocess.CompletedProcess, *words: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kiln: error:"), done.stderr
    for word in words:
        assert word in lines[0]


@pytest.mark.slow
def test_user_errors_exit_2_with_one_line(tmp_path, tiny_lib):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x01garbage" * 50)
    _assert_user_error(kiln("compile", str(junk), "-o", str(tmp_path / "x.so")), "junk.onnx")
    _assert_user_error(kiln("compile", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "x.so")), "no such file")
    _assert_user_error(kiln("compile", str(junk), "-o", "x.so", "--target", "pentium"), "unknown target")
    np.savez(tmp_path / "wrong.npz", data=np.zeros((1, 3, 8, 8), np.float32))
    _assert_user_error(kiln("run", str(tiny_lib), "--inputs", str(tmp_path / "wrong.npz")), "expected 1x3x32x32")
    (tmp_path / "bad.npz").write_text("nope")
    _assert_user_error(kiln("run", str(tiny_lib), "--inputs", str(tmp_path / "bad.npz")), "not a readable .npz")
    _assert_user_error(kiln("run", str(junk)), "not an ELF")
    _assert_user_error(kiln("example", "alexnet9000"), "unknown example")


def test_pickled_npz_is_refused(tmp_path, tiny_lib):
    np.savez(tmp_path / "obj.npz", data=np.array([{"a": 1}], dtype=object))
    _assert_user_error(kiln("run", str(tiny_lib), "--inputs", str(tmp_path / "obj.npz")), "not a readable .npz")


def test_debug_shows_traceback(tmp_path):
    done = kiln("--debug", "compile", str(tmp_path / "missing.onnx"), "-o", "x.so")
    assert done.returncode != 0 and "Traceback" in done.stderr


def test_inspect_passes_reports_kernel_counts(tiny_onnx):
    import json

    done = kiln("inspect", str(tiny_onnx), "--passes", "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert isinstance(info["kernels_stock"], int) and isinstance(info["kernels_kiln"], int)
    assert 0 < info["kernels_kiln"] <= info["kernels_stock"]
    names = [p["pass"] for p in info["passes"]]
    assert names[0] == "import" and "FuseTIR" in names and "FoldBatchnormToConv2D" in names
    assert len(info["fused_kernels"]) == info["kernels_kiln"]
    assert 0 < info["launches_kiln"] <= info["launches_stock"]  # reshapes are views: not launches
    assert info["passes"][-1]["launches"] == info["launches_kiln"]
    text = kiln("inspect", str(tiny_onnx), "--passes").stdout
    assert "kernels: TVM stock fusion" in text


def test_demo_runs_the_main_job_end_to_end(tmp_path):
    """`kiln demo` (the README's first command) on the tiny model: compile, run, agree with ONNX Runtime."""
    done = kiln("demo", "tiny", "--workdir", str(tmp_path), "--bench", "3", "--threads", "1")
    assert done.returncode == 0, done.stderr
    assert "onnxruntime agreement" in done.stdout and "kiln / onnxruntime latency" in done.stdout


def test_a_tvm_code_generation_failure_is_one_line(tmp_path, tiny_onnx, monkeypatch, capsys):
    import tvm

    from compiler.cli import main

    def broken(*_args, **_kwargs):
        raise tvm.error.InternalError("Traceback (most recent call last):\n  File vectorize_loop.cc\n"
                                      "Check failed: (is_scalable_expr) is false: Failed to vectorize loop")

    monkeypatch.setattr(tvm, "compile", broken)
    assert main(["compile", str(tiny_onnx), "-o", str(tmp_path / "x.so")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kiln: error: TVM failed to generate code: Check failed"), lines
    assert "not a problem with the model" in lines[0]
