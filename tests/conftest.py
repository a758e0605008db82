from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from compiler.build import compile_model
from compiler.examples import example_model


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    onnx.save(example_model("tiny"), path)
    return path


@pytest.fixture(scope="session")
def tiny_lib(tiny_onnx: Path) -> Path:
    out = tiny_onnx.with_suffix(".so")
    compile_model(tiny_onnx, out, target="host")
    return out
