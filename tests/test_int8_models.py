"""The labelled models for the INT8 accuracy report (compiler/testing/int8_data.py): fast parts only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from targets.errors import InputError
from compiler.reference import OnnxRuntimeReference
from compiler.shape_folding import freeze_input_shapes
from compiler.testing import int8_data as int8_models


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("int8_models")


def test_digits_trains_to_95_percent_and_onnx_matches_numpy(workdir: Path, monkeypatch):
    pytest.importorskip("sklearn")
    m = int8_models.load("digits", workdir)
    assert m.test_inputs.shape == (540, 1, 8, 8) and m.calibration.shape == (100, 1, 8, 8)
    assert m.test_inputs.dtype == np.float32 and 0.0 <= m.test_inputs.min() and m.test_inputs.max() <= 1.0
    assert m.input_shape == (1, 1, 8, 8)
    onnx.checker.check_model(onnx.load(m.onnx_path), full_check=True)
    acc = m.accuracy(int8_models.onnxruntime_runner(m))
    assert acc >= 95.0
    assert acc == m.info["numpy_test_accuracy"] == m.info["ort_test_accuracy"]

    def no_training(*_args, **_kwargs):
        raise AssertionError("the second load trained again instead of reading the cache")

    monkeypatch.setattr(int8_models, "train_digits_cnn", no_training)
    again = int8_models.load("digits", workdir)  # from the cache: no training
    assert again.onnx_path == m.onnx_path and again.test_labels == m.test_labels
    assert np.array_equal(again.calibration, m.calibration)


def test_digits_calibration_comes_from_the_training_part(workdir: Path):
    pytest.importorskip("sklearn")
    x_tr, _, x_te, _ = int8_models.digits_split(seed=0)
    assert len(x_tr) + len(x_te) == 1797 and len(x_te) == 540
    m = int8_models.load("digits", workdir)
    train_rows = {row.tobytes() for row in x_tr}
    assert all(row.tobytes() in train_rows for row in m.calibration)
    assert np.array_equal(m.test_inputs, x_te)


def test_batches_pad_the_last_one():
    m = int8_models.LabelledModel("t", Path("t.onnx"), "x", np.zeros((0, 2), np.float32),
                                  np.arange(10, dtype=np.float32).reshape(5, 2), [0, 1, 0, 1, 0], batch=2,
                                  decode=lambda out: [int(v) for v in out[:, 0] % 2])
    chunks = m.batches(m.test_inputs)
    assert [c.shape for c in chunks] == [(2, 2)] * 3 and np.array_equal(chunks[-1][1], m.test_inputs[-1])
    assert m.predict(lambda x: x) == [0, 0, 0, 0, 0]  # x[:, 0] is 0, 2, 4, 6, 8; the padding row is dropped
    assert m.accuracy(lambda x: x) == 60.0  # labels 0, 1, 0, 1, 0


def test_unknown_model_name():
    with pytest.raises(InputError, match="ppocr_cls"):
        int8_models.load("mnist", Path("/nonexistent"))


def test_ctc_decoder_merges_repeats_and_drops_blank():
    chars = ["blank", "a", "b", " "]
    steps = [3, 1, 1, 0, 1, 2, 2, 0, 3]  # ' ', a, a, -, a, b, b, -, ' '
    logits = np.eye(4, dtype=np.float32)[steps][None]
    assert int8_models.ctc_decoder(chars, strip=False)(logits) == [" aab "]
    assert int8_models.ctc_decoder(chars)(logits) == ["aab"]


def _shape_chain_model():
    """x [N, 4, 2, 2] -> Reshape(x, Concat(Shape(x)[0:1], [-1])): the Paddle2ONNX pattern."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Cast", ["s"], ["s32"], to=TensorProto.INT32),
        helper.make_node("Slice", ["s32", "starts", "ends", "axes"], ["n"]),
        helper.make_node("Cast", ["n"], ["n64"], to=TensorProto.INT64),
        helper.make_node("Concat", ["n64", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
        helper.make_node("Relu", ["y"], ["out"]),
    ]
    inits = [numpy_helper.from_array(np.array(v, np.int64 if k == "minus_one" else np.int32), k)
             for k, v in [("starts", [0]), ("ends", [1]), ("axes", [0]), ("minus_one", [-1])]]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 2, 2])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", "M"])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_freeze_input_shapes_folds_the_shape_chain():
    model = _shape_chain_model()
    frozen = freeze_input_shapes(model, {"x": (2, 4, 2, 2)})
    ops = [n.op_type for n in frozen.graph.node]
    assert "Shape" not in ops and "Concat" not in ops and ops.count("Reshape") == 1
    dims = [d.dim_value for d in frozen.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 4, 2, 2]
    x = np.random.default_rng(0).standard_normal((2, 4, 2, 2)).astype(np.float32)
    want = OnnxRuntimeReference(model, 1).session.run(None, {"x": x})[0]
    got = OnnxRuntimeReference(frozen, 1).session.run(None, {"x": x})[0]
    assert got.shape == (2, 16) and np.array_equal(got, want)
    with pytest.raises(InputError, match="rank"):
        freeze_input_shapes(model, {"x": (2, 4)})
    with pytest.raises(InputError, match="not in the model"):
        freeze_input_shapes(model, {"data": (2, 4, 2, 2)})


def test_ppocr_cls_data_and_accuracy(workdir: Path):
    pytest.importorskip("rapidocr_onnxruntime")
    pytest.importorskip("cv2")
    m = int8_models.load("ppocr_cls", workdir, n_test=20, n_calibration=10)
    assert m.input_name == "x" and m.input_shape == (1, 3, 48, 192)
    assert m.calibration.shape == (10, 3, 48, 192) and m.test_inputs.shape == (20, 3, 48, 192)
    assert m.test_inputs.dtype == np.float32 and -1.0 <= m.test_inputs.min() and m.test_inputs.max() <= 1.0
    assert sorted(set(m.test_labels)) == [0, 1] and sum(m.test_labels) == 10
    shape = [d.dim_value for d in onnx.load(m.onnx_path).graph.input[0].type.tensor_type.shape.dim]
    assert shape == [1, 3, 48, 192]
    assert m.accuracy(int8_models.onnxruntime_runner(m)) >= 90.0
    assert not set(m.info["calibration_texts"]) & set(m.info["test_texts"])
    smaller = int8_models.load("ppocr_cls", workdir, n_test=4, n_calibration=0)  # a prefix of the same test set
    assert np.array_equal(smaller.test_inputs, m.test_inputs[:4]) and smaller.test_labels == m.test_labels[:4]
    assert smaller.calibration.shape == (0, 3, 48, 192)


def test_ppocr_rec_reads_rendered_words(workdir: Path):
    pytest.importorskip("rapidocr_onnxruntime")
    pytest.importorskip("cv2")
    m = int8_models.load("ppocr_rec", workdir, n_test=5, n_calibration=2)
    assert m.input_shape == (1, 3, 48, 320) and m.calibration.shape == (2, 3, 48, 320)
    assert all(isinstance(t, str) and t for t in m.test_labels)
    assert m.accuracy(int8_models.onnxruntime_runner(m)) >= 80.0
