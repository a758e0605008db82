"""A small tunable model and what a tuning database holds on disk: for ``tests/test_tune.py``
and ``scripts/kill_test.py``, which SIGKILL ``kiln tune`` and check that no record is lost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from schedules.database import RECORD_FILE


def small_model(seed: int = 0) -> onnx.ModelProto:
    """MatMul + bias + ReLU, then Softmax: two kernels with a search space (seeded weights)."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((64, 48)).astype("float32"), "w")
    b = numpy_helper.from_array(rng.standard_normal(48).astype("float32"), "b")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]), helper.make_node("Softmax", ["r"], ["y"], axis=-1)]
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 48])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def complete_lines(db: Path) -> list[str]:
    """The tuning records of database ``db`` whose line was written to the end (a line cut by a
    kill mid-write is left out), as text."""
    path = Path(db) / RECORD_FILE
    if not path.exists():
        return []
    text = path.read_text()
    return text[: text.rfind("\n") + 1].splitlines()
