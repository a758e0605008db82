"""If nodes: folded when the condition is known at compile time (shapes, --input-value), kept
as Relax If when it depends on data; always equal to ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from compiler.build import compile_model
from compiler.control_flow import parse_input_values
from targets.errors import InputError
from compiler.frontend import prepare_onnx
from compiler.reference import OnnxRuntimeReference, max_abs_diff
from compiler.runtime import load
from tests import control_flow_graphs as graphs
from tests.test_cli import kiln


def _ifs(model: onnx.ModelProto) -> int:
    return sum(n.op_type == "If" for n in model.graph.node)


def _signed_inputs(sign: float) -> dict[str, np.ndarray]:
    return {"x": (sign * np.abs(np.random.default_rng(0).normal(size=(1, 8)))).astype(np.float32)}


def test_data_dependent_if_runs_both_branches(tmp_path):
    model = graphs.data_if()
    assert _ifs(prepare_onnx(model)[0]) == 1  # kept: a Relax If
    compile_model(model, tmp_path / "m.so", target="host")
    lib, ref = load(tmp_path / "m.so", threads=2), OnnxRuntimeReference(model, 2)
    outs = []
    for sign in (1.0, -1.0):
        x = _signed_inputs(sign)
        ours = lib.run(x)
        assert max_abs_diff(ours, ref.run(x))[0] <= 1e-6
        outs.append(ours["out"])
    assert np.any(outs[0] > 0) and np.all(outs[1] == 0)  # then-branch (2x), else-branch (relu(x - 1))


@pytest.mark.parametrize("width, factor", [(8, 3.0), (6, None)])
def test_if_on_a_shape_folds_once_the_shape_is_fixed(width, factor, tmp_path):
    model = graphs.shape_if()
    prepared = prepare_onnx(model, {"x": (1, width)})[0]
    assert _ifs(prepared) == 0
    compile_model(model, tmp_path / "m.so", target="host", input_shapes={"x": (1, width)})
    lib = load(tmp_path / "m.so", threads=2)
    x = np.arange(width, dtype=np.float32).reshape(1, width)
    expected = x * 3 if factor else x + 5
    np.testing.assert_allclose(lib.run({"x": x})["out"], expected)


@pytest.mark.parametrize("rate", [16000, 8000])
def test_input_value_fixes_a_rate_and_folds_its_branch(rate, tmp_path):
    model = graphs.rate_if()
    prepared, specs, _, _ = prepare_onnx(model, input_values={"sr": np.array(rate)})
    assert [s.name for s in specs] == ["x"]
    # sr=16000: the outer If folds; the inner one depends on data and stays
    assert _ifs(prepared) == (1 if rate == 16000 else 0)
    compile_model(model, tmp_path / "m.so", target="host", input_values={"sr": rate})
    lib, ref = load(tmp_path / "m.so", threads=2), OnnxRuntimeReference(model, 2, {"sr": rate})
    assert [s.name for s in lib.inputs] == ["x"]
    assert lib.metadata.extra["input_values"] == {"sr": rate}
    for sign in (1.0, -1.0):
        x = _signed_inputs(sign)
        assert max_abs_diff(lib.run(x), ref.run(x))[0] <= 1e-6


@pytest.mark.slow
def test_input_value_from_the_cli_and_the_reference_run(tmp_path):
    model, lib = tmp_path / "rate.onnx", tmp_path / "rate.so"
    onnx.save(graphs.rate_if(), model)
    done = kiln("compile", str(model), "-o", str(lib), "--input-value", "sr=8000")
    assert done.returncode == 0, done.stderr
    done = kiln("run", str(lib), "--reference", str(model))
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.split("max abs diff ")[1].split()[0]) < 1e-6
    bad = kiln("compile", str(model), "-o", str(lib), "--input-value", "rate=8000")
    assert bad.returncode == 2 and "model's inputs are: x, sr" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("spec, message", [("sr", "NAME=VALUE"), ("sr=fast", "NAME=VALUE"), ("=3", "NAME=VALUE")])
def test_malformed_input_values_are_refused(spec, message):
    with pytest.raises(InputError, match=message):
        parse_input_values([spec])


def test_input_value_must_fit_the_input():
    with pytest.raises(InputError, match="not a whole number"):
        prepare_onnx(graphs.rate_if(), input_values={"sr": np.array(16000.5)})
    with pytest.raises(InputError, match="has shape"):
        prepare_onnx(graphs.rate_if(), input_values={"sr": np.array([16000, 8000])})


@pytest.mark.parametrize("make", [lambda: graphs.counting_loop(5), lambda: graphs.counting_loop(1),
                                  lambda: graphs.running_scan(6), lambda: graphs.running_scan(4, reverse=True)],
                         ids=["loop5", "loop1", "scan", "scan_reverse"])
def test_loops_with_known_trip_counts_unroll_and_match_onnxruntime(make, tmp_path):
    model = make()
    prepared = prepare_onnx(model)[0]
    assert not {"Loop", "Scan"} & {n.op_type for n in prepared.graph.node}
    compile_model(model, tmp_path / "m.so", target="host")
    lib = load(tmp_path / "m.so", threads=2)
    x = lib.random_inputs(seed=2)
    assert max_abs_diff(lib.run(x), OnnxRuntimeReference(model, 2).run(x))[1] <= 1e-6


def test_loop_that_can_end_early_is_refused_by_name():
    from targets.errors import UnsupportedOperatorError

    with pytest.raises(UnsupportedOperatorError, match=r"Loop 'counter'.*cannot end early"):
        prepare_onnx(graphs.counting_loop(5, early_exit=True))
