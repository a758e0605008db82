"""LSTM, GRU and RNN against ONNX Runtime: every attribute and optional input of the ONNX spec,
stacked layers as PyTorch exports them, and the errors for what is not supported."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from compiler.build import compile_model
from targets.errors import ModelError
from compiler.examples import recurrent_stack
from compiler.reference import OnnxRuntimeReference, max_abs_diff
from compiler.runtime import load
from tests.recurrent_graphs import recurrent_model, reference_outputs

TOLERANCE = 1e-5  # max abs error relative to the output scale (float32 recurrences, exact-ish)

CASES = {
    # every cell, each direction
    "lstm_forward": dict(cell="LSTM", direction="forward"),
    "lstm_reverse": dict(cell="LSTM", direction="reverse"),
    "lstm_bidirectional": dict(cell="LSTM"),
    "gru_forward": dict(cell="GRU", direction="forward"),
    "gru_reverse_linear_before_reset": dict(cell="GRU", direction="reverse", linear_before_reset=1),
    "gru_bidirectional": dict(cell="GRU"),
    "gru_bidirectional_linear_before_reset": dict(cell="GRU", linear_before_reset=1),
    "rnn_forward": dict(cell="RNN", direction="forward"),
    "rnn_bidirectional": dict(cell="RNN"),
    # optional inputs
    "lstm_all_inputs": dict(cell="LSTM", lens=True, h0=True, c0=True, peepholes=True),
    "lstm_reverse_lens_states": dict(cell="LSTM", direction="reverse", lens=True, h0=True, c0=True),
    "lstm_no_bias": dict(cell="LSTM", bias=False),
    "gru_lens_h0": dict(cell="GRU", lens=True, h0=True),
    "gru_lens_h0_linear_before_reset": dict(cell="GRU", lens=True, h0=True, linear_before_reset=1),
    "gru_no_bias_linear_before_reset": dict(cell="GRU", bias=False, linear_before_reset=1),
    "rnn_lens_h0": dict(cell="RNN", lens=True, h0=True, direction="reverse"),
    # attributes
    "lstm_clip_peepholes": dict(cell="LSTM", clip=0.7, peepholes=True, h0=True, c0=True),
    "lstm_input_forget": dict(cell="LSTM", input_forget=1, peepholes=True),
    "gru_clip": dict(cell="GRU", clip=0.4),
    "rnn_clip": dict(cell="RNN", clip=0.4),
    "lstm_layout1": dict(cell="LSTM", layout=1, h0=True, c0=True, lens=True),
    "gru_layout1": dict(cell="GRU", layout=1, h0=True, linear_before_reset=1),
    "rnn_layout1": dict(cell="RNN", layout=1, direction="forward"),
    # activations other than the defaults, with alpha/beta consumed in order
    "lstm_activations": dict(cell="LSTM", direction="forward", activations=["HardSigmoid", "Softsign", "Elu"],
                             activation_alpha=[0.3, 0.8], activation_beta=[0.4]),
    "lstm_per_direction_activations": dict(cell="LSTM", activations=["Sigmoid", "Tanh", "Tanh",
                                                                      "HardSigmoid", "Relu", "Softplus"]),
    "gru_activations": dict(cell="GRU", activations=["Sigmoid", "LeakyRelu", "HardSigmoid", "ScaledTanh"],
                            activation_alpha=[0.1, 0.25, 0.9], activation_beta=[0.5, 1.2]),
    "rnn_activations": dict(cell="RNN", activations=["Relu", "Affine"], activation_alpha=[0.5],
                            activation_beta=[0.1]),
    "rnn_thresholded_relu": dict(cell="RNN", direction="forward", activations=["ThresholdedRelu"],
                                 activation_alpha=[0.2]),
    # sizes: a hidden size no vector block divides, batch 1, one step
    "lstm_odd_hidden": dict(cell="LSTM", hidden=13, batch=3),
    "gru_single_step": dict(cell="GRU", steps=1, batch=1),
}


def run_both(model: onnx.ModelProto, tmp_path, threads: int = 2, scale: float = 1.0):
    lib = tmp_path / "m.so"
    compile_model(model, lib, target="host")
    m = load(lib, threads=threads)
    x = (m.random_inputs(seed=1)["X"] * scale).astype(np.float32)
    return m.run({"X": x}), reference_outputs(model, x, threads)


@pytest.mark.parametrize("name", sorted(CASES))
def test_recurrent_node_matches_onnxruntime(name, tmp_path):
    ours, ref = run_both(recurrent_model(**CASES[name]), tmp_path, scale=2.0)
    assert list(ours) == list(ref)
    for key in ref:
        assert ours[key].shape == ref[key].shape, key
    assert max_abs_diff(ours, ref)[1] <= TOLERANCE


def test_sequence_lens_zero_the_steps_past_each_end(tmp_path):
    """ONNX: Y is 0 past a sequence's length, and Y_h is the state at its last real step."""
    ours, ref = run_both(recurrent_model("LSTM", steps=6, batch=2, lens=True), tmp_path)
    y = ours["Y"]  # [T, D, B, H]; batch 1 has length 3
    assert np.all(y[3:, :, 1] == 0) and np.any(y[:3, :, 1] != 0)
    assert np.allclose(ours["Y_h"][0, 1], y[2, 0, 1]) and np.allclose(ours["Y_h"][1, 1], y[0, 1, 1])


def test_one_thread_and_two_give_the_same_result(tmp_path):
    model = recurrent_model("GRU", hidden=64)
    lib = tmp_path / "m.so"
    compile_model(model, lib, target="host")
    x = load(lib, threads=1).random_inputs(seed=0)
    one, two = load(lib, threads=1).run(x), load(lib, threads=2).run(x)
    for k in one:
        np.testing.assert_array_equal(one[k], two[k])


def relative_error_vs_onnxruntime(model, tmp_path) -> float:
    """Compile ``model`` (ModelProto or path), run it on seeded inputs beside ONNX Runtime."""
    lib = tmp_path / "m.so"
    compile_model(model, lib, target="host")
    m = load(lib, threads=2)
    x = m.random_inputs(seed=0)
    return max_abs_diff(m.run(x), OnnxRuntimeReference(model, 2).run(x))[1]


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_stacked_layers_as_pytorch_exports_them(cell, tmp_path):
    model = recurrent_stack(cell, layers=2, input_size=12, hidden=32, steps=20)
    assert relative_error_vs_onnxruntime(model, tmp_path) <= TOLERANCE


def test_torch_lstm_and_gru_exports(tmp_path):
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(10, 24, num_layers=2, bidirectional=True)
            self.gru = torch.nn.GRU(48, 16, batch_first=False)

        def forward(self, x):
            y, _ = self.lstm(x)
            z, h = self.gru(y)
            return z, h

    torch.manual_seed(0)
    path = tmp_path / "net.onnx"
    torch.onnx.export(Net().eval(), (torch.randn(9, 1, 10),), str(path), input_names=["x"],
                      output_names=["z", "h"], dynamo=False)
    assert relative_error_vs_onnxruntime(path, tmp_path) <= TOLERANCE


def test_unknown_activation_is_a_one_line_error_naming_the_node(tmp_path):
    model = recurrent_model("RNN", activations=["Gelu", "Tanh"])
    model.graph.node[0].name = "rnn_with_gelu"
    with pytest.raises(ModelError, match=r"node 'rnn_with_gelu' \(RNN\): activation 'Gelu' is not one ONNX"):
        compile_model(model, tmp_path / "m.so", target="host")


def test_recurrent_layer_for_cuda_is_refused_clearly(tmp_path):
    with pytest.raises(ModelError, match="CPU targets only"):
        compile_model(recurrent_model("GRU"), tmp_path / "m.so", target="cuda-sm80")
