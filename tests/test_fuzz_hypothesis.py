"""Property: any model, however broken, imports or ends in one kiln error with a one-line message.

Cases come from ``compiler/testing/onnx_strategies.py``: random small graphs of supported and
unsupported operators and the built-in ``tiny`` model, with graph-level and byte-level
mutations. A bounded, derandomized slice runs here; ``scripts/fuzz_hypothesis.py`` runs
thousands of random ones in a crash-isolated worker. Below it, the cases it found.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from onnx import TensorProto, helper, numpy_helper

from targets.errors import InputError, KilnError, ModelError, UnsupportedOperatorError
from compiler.frontend import import_onnx
from compiler.testing.onnx_strategies import FuzzCase, fuzz_cases, import_case, is_clear_message

REPO = Path(__file__).resolve().parent.parent
MAX_EXAMPLES = 300  # about 10 s on an idle 2-core machine


@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=fuzz_cases())
def test_any_model_imports_or_fails_with_a_kiln_error(case: FuzzCase):
    with tempfile.TemporaryDirectory(prefix="kiln-hfuzz-") as tmp:
        try:
            import_case(case, Path(tmp))
        except KilnError as err:  # anything else propagates and hypothesis shrinks it
            assert is_clear_message(str(err)), f"{type(err).__name__} message is not one line: {str(err)!r}"


# -- what the fuzzer found ---------------------------------------------------------------------

def _model(nodes, inputs, outputs, inits=(), name: str = "g", domains: tuple[str, ...] = ()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, list(inits))
    opsets = [helper.make_opsetid("", 17)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(graph, opset_imports=opsets)


def _vi(name: str, shape, elem: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


LINE_BREAK_CASES = {
    "graph name": (_model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [1])], [], name="a\nb"), None,
                   ModelError),
    "custom op type and node name": (
        _model([helper.make_node("Fo\no", ["x"], ["y"], domain="com.example", name="n\r\n1")],
               [_vi("x", [1])], [_vi("y", [1])], domains=("com.example",)), None, UnsupportedOperatorError),
    "input name with a dynamic dim": (
        _model([helper.make_node("Relu", ["x\ny"], ["y"])], [_vi("x\ny", ["N"])], [_vi("y", ["N"])]), None,
        InputError),
    "input name with a wrong --input-shape rank": (
        _model([helper.make_node("Relu", ["x\x1ey"], ["y"])], [_vi("x\x1ey", [2])], [_vi("y", [2])]),
        {"x\x1ey": (1, 2)}, InputError),
    "unknown --input-shape name": (
        _model([helper.make_node("Relu", ["x\u2028"], ["y"])], [_vi("x\u2028", [2])], [_vi("y", [2])]),
        {"nope\n": (2,)}, InputError),
}


@pytest.mark.parametrize("case", LINE_BREAK_CASES, ids=list(LINE_BREAK_CASES))
def test_names_with_line_breaks_stay_on_one_line(case):
    model, shapes, error = LINE_BREAK_CASES[case]
    with pytest.raises(error) as err:
        import_onnx(model, shapes)
    assert is_clear_message(str(err.value)), repr(str(err.value))
    assert "\\n" in str(err.value) or "\\r" in str(err.value) or "\\x1e" in str(err.value) \
        or "\\u2028" in str(err.value), "the name is shown escaped"


def _constant_of_shape(output: str, shape_name: str) -> onnx.NodeProto:
    return helper.make_node("ConstantOfShape", [shape_name], [output],
                            value=numpy_helper.from_array(np.array([1.0], np.float32)))


def _int64(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def memory_cases() -> None:
    """Run in a child under a 3 GiB address-space limit: a regression fails there, not the machine."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
    n = 2**23  # with ONNX's data propagation over this 1-D tensor: ~1.3 GB
    cases = {  # the bounded one first: ru_maxrss is a high-water mark
        "long_1d_constant_plus_input": _model([_constant_of_shape("c", "s"), helper.make_node("Add", ["x", "c"], ["y"])],
                                              [_vi("x", [1])], [_vi("y", [n])], [_int64("s", [n])]),
        "constant_of_shape_2**31": _model([_constant_of_shape("c", "s"), helper.make_node("Add", ["x", "c"], ["y"])],
                                          [_vi("x", [1])], [_vi("y", [2**31])], [_int64("s", [2**31])]),
        "three_1GiB_constants": _model(
            [_constant_of_shape(f"c{i}", "s") for i in range(3)] + [helper.make_node("Sum", ["c0", "c1", "c2"], ["y"])],
            [], [_vi("y", [2**28])], [_int64("s", [2**28])]),
    }
    results = {}
    for name, model in cases.items():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            import_onnx(model)
            outcome = "imported"
        except Exception as err:  # noqa: BLE001 — reported to the test, which says what it expected
            outcome = f"{type(err).__name__}: {err}"
        results[name] = {"outcome": outcome,
                         "peak_growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024}
    print(json.dumps(results))


def test_huge_constants_are_refused_before_anything_allocates_them():
    done = subprocess.run([sys.executable, "-c", "from tests.test_fuzz_hypothesis import memory_cases; memory_cases()"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert results["constant_of_shape_2**31"]["outcome"].startswith("ModelError")
    assert "kiln refuses tensors over 4 GiB" in results["constant_of_shape_2**31"]["outcome"]
    assert results["three_1GiB_constants"]["outcome"].startswith("ModelError")
    assert "GiB of constants at import" in results["three_1GiB_constants"]["outcome"]
    # ONNX's data propagation is off for it: imports, without the ~1.3 GB it would take
    assert results["long_1d_constant_plus_input"]["outcome"] == "imported", results
    assert results["long_1d_constant_plus_input"]["peak_growth_mb"] < 600, results
