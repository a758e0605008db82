"""Damaged files give one clean error (exit 2 through the CLI, a KilnError through the API), never a traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from compiler.cli import main
from targets.errors import KilnError, LibraryError
from targets.library_format import SEAL_SIZE, read_metadata, seal_library
from compiler.runtime import load

REPO = Path(__file__).resolve().parent.parent


def _cli(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


def test_a_truncated_library_is_refused_by_its_seal_before_parsing(tiny_lib, tmp_path, capsys):
    for cut in (10, 100, len(tiny_lib.read_bytes()) // 2, len(tiny_lib.read_bytes()) - 1):
        bad = tmp_path / f"cut{cut}.so"
        bad.write_bytes(tiny_lib.read_bytes()[:cut])
        with pytest.raises(LibraryError, match="no kiln seal"):
            load(bad)
        code, err = _cli(capsys, "inspect", str(bad))
        assert code == 2 and len(err.strip().splitlines()) == 1 and "no kiln seal" in err


def test_metadata_that_is_not_utf8_is_a_library_error(tiny_lib, tmp_path):
    """Sealed again after the damage, so the parser itself must cope (it raised UnicodeDecodeError)."""
    data = bytearray(tiny_lib.read_bytes()[:-SEAL_SIZE])
    at = data.find(b'{"default_kernels"')
    assert at > 0
    data[at + 1] = 0xFF
    bad = tmp_path / "bad.so"
    bad.write_bytes(bytes(data))
    seal_library(bad)
    with pytest.raises(LibraryError, match="metadata is unreadable"):
        read_metadata(bad)


def test_damaged_inputs_npz_is_a_user_error(tiny_lib, tmp_path, capsys):
    good = tmp_path / "in.npz"
    np.savez(good, data=np.zeros((1, 3, 32, 32), np.float32))
    for name, data in {"truncated": good.read_bytes()[:200], "empty": b"", "text": b"not a zip"}.items():
        bad = tmp_path / f"{name}.npz"
        bad.write_bytes(data)
        code, err = _cli(capsys, "run", str(tiny_lib), "--inputs", str(bad), "--threads", "1")
        assert code == 2 and len(err.strip().splitlines()) == 1 and "not a readable .npz" in err, err


def _small_db(tmp_path: Path) -> Path:
    """A tuning database directory with a run log and one workload line (what tune-report reads)."""
    from schedules.database import WORKLOAD_FILE
    from schedules.tune import LOG_FILE

    db = tmp_path / "db"
    db.mkdir()
    (db / WORKLOAD_FILE).write_text("")
    (db / LOG_FILE).write_text(json.dumps({"trials": 1, "elapsed_s": 1.0, "tasks": 1, "tasks_measured": 1,
                                           "estimated_ms": 0.5}) + "\n")
    return db


@pytest.mark.parametrize("line", ['[0, [1, "x"]]', '["a", {}]', "[" * 5000 + "]" * 5000, "null"],
                         ids=["string-latency", "object-body", "deep-nesting", "null"])
def test_tune_report_skips_record_lines_of_the_wrong_shape(tmp_path, capsys, line):
    from schedules.database import RECORD_FILE

    db = _small_db(tmp_path)
    (db / RECORD_FILE).write_text(line + "\n")
    code, err = _cli(capsys, "tune-report", str(db), "-o", str(tmp_path / "curve.png"))
    assert code == 0, err


def test_tune_report_skips_log_lines_of_the_wrong_shape(tmp_path, capsys):
    from schedules.tune import LOG_FILE

    db = _small_db(tmp_path)
    with open(db / LOG_FILE, "a") as f:
        f.write('{"trials": "x"}\n{"estimated_ms": 1}\n[]\n')
    code, err = _cli(capsys, "tune-report", str(db), "-o", str(tmp_path / "curve.png"))
    assert code == 0, err


@pytest.mark.parametrize("baselines", ['{"w": null}', "[1]", "[" * 5000 + "]" * 5000],
                         ids=["null", "list", "deep-nesting"])
def test_a_damaged_baseline_file_is_skipped_not_fatal(tmp_path, baselines):
    from schedules.database import BASELINE_FILE, DurableDatabase

    db = _small_db(tmp_path)
    (db / BASELINE_FILE).write_text(baselines)
    DurableDatabase(db).close()


def test_an_operator_name_that_is_not_utf8_is_printed_escaped(tiny_onnx, tmp_path, capsys):
    model = onnx.load(tiny_onnx)
    data = model.SerializeToString().replace(b"MaxPool", b"Max\xffool")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(data)
    code = main(["inspect", str(bad)])  # it raised AttributeError: the name came back as bytes
    out = capsys.readouterr().out
    assert code == 0 and "Max\\xffool" in out, out


def test_fuzzing_every_file_kind_finds_no_traceback(tmp_path):
    out = tmp_path / "fuzz.json"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "fuzz_files.py"), "--cases", "100", "--seed", "3",
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    summary = result["summary"]
    assert summary["cases"] == 100 and summary["tracebacks"] == 0 and {row["file"] for row in result["rows"]} == {
        "library", "inputs", "calibration", "tuning-db", "model", "plan"}
