"""GPTQ weight rounding: im2col patches, the rounding itself, calibration's second moments, CLI."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from compiler.cli import main as kiln
from targets.errors import InputError
from compiler.frontend import import_onnx
from compiler.quantization.gptq import ConvWindow, HessianSum, conv_patches, gptq_quantize_weight
from compiler.quantization.weights import quantize_weight
from compiler.pipeline import simplified_module
from compiler.quantization import Int8Options, plan_int8
from compiler.runtime import load
from targets.registry import resolve_target
from tests.test_int8 import _conv_relu_conv_gemm, _samples


def _direct_conv(x: np.ndarray, w: np.ndarray, window: ConvWindow) -> np.ndarray:
    """NCHW/OIHW convolution written out tap by tap (the reference for the patches)."""
    (sy, sx), (dy, dx), groups = window.strides, window.dilation, window.groups
    top, left, bottom, right = window.padding
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)))
    out_channels, per_group, kh, kw = w.shape
    oh, ow = (x.shape[2] - dy * (kh - 1) - 1) // sy + 1, (x.shape[3] - dx * (kw - 1) - 1) // sx + 1
    out = np.zeros((x.shape[0], out_channels, oh, ow))
    for o in range(out_channels):
        g = o // (out_channels // groups)
        for ky in range(kh):
            for kx in range(kw):
                taps = x[:, g * per_group:(g + 1) * per_group,
                         ky * dy:ky * dy + sy * (oh - 1) + 1:sy, kx * dx:kx * dx + sx * (ow - 1) + 1:sx]
                out[:, o] += np.einsum("nchw,c->nhw", taps, w[o, :, ky, kx])
    return out


CONVS = [  # in, out channels, kernel, stride, padding, dilation, groups
    (16, 32, 3, 1, 1, 1, 1), (16, 16, 3, 2, 1, 1, 16), (32, 64, 1, 1, 0, 1, 1), (12, 24, 3, 1, 2, 2, 3)]


def _correlated_input(rng, channels: int) -> np.ndarray:
    x = rng.standard_normal((4, channels, 13, 11)).astype(np.float32)
    return x + 0.8 * x[:, :1]  # a shared component: H is far from diagonal, as after real layers


def _conv_case(seed: int, cin, cout, k, stride, pad, dilation, groups):
    """A seeded input, OIHW weight and window for one of ``CONVS``."""
    rng = np.random.default_rng(seed)
    x = _correlated_input(rng, cin)
    w = rng.standard_normal((cout, cin // groups, k, k)).astype(np.float32)
    return x, w, ConvWindow((k, k), (stride, stride), (pad, pad, pad, pad), (dilation, dilation), groups)


@pytest.mark.parametrize("cin,cout,k,stride,pad,dilation,groups", CONVS)
def test_conv_patches_times_weights_are_the_convolution(cin, cout, k, stride, pad, dilation, groups):
    x, w, window = _conv_case(0, cin, cout, k, stride, pad, dilation, groups)
    patches = conv_patches(x, window)  # [groups, N*OH*OW, K]
    ref = _direct_conv(x, w, window)
    n, _, oh, ow = ref.shape
    ours = np.einsum("gpk,gok->gop", patches, w.reshape(groups, cout // groups, -1))
    ours = ours.reshape(cout, n, oh, ow).transpose(1, 0, 2, 3)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cin,cout,k,stride,pad,dilation,groups", CONVS)
def test_gptq_keeps_scales_and_range_and_lowers_the_output_error(cin, cout, k, stride, pad, dilation, groups):
    x, w, window = _conv_case(1, cin, cout, k, stride, pad, dilation, groups)
    moments = HessianSum(window, columns=cin // groups * k * k, samples=4)
    moments.add(x[:2])
    moments.add(x[2:])  # batches add up
    assert moments.mean.shape == (groups, cin // groups * k * k, cin // groups * k * k)
    ref = _direct_conv(x, w, window)
    for bits in (7, 8):
        nearest, scale = quantize_weight(w, 0, bits)
        rounded, gptq_scale = gptq_quantize_weight(w, "OIHW", moments.mean, bits)
        np.testing.assert_array_equal(gptq_scale, scale)  # same steps: the same int8 kernels
        assert rounded.dtype == np.int8 and np.abs(rounded.astype(int)).max() <= 2 ** (bits - 1) - 1

        def error(q):
            return np.linalg.norm(_direct_conv(x, q * scale[:, None, None, None], window) - ref)

        assert error(rounded) < error(nearest)
        # another layout of the same weight rounds the same way
        ohwi, _ = gptq_quantize_weight(w.transpose(0, 2, 3, 1), "OHWI", moments.mean, bits)
        np.testing.assert_array_equal(ohwi.transpose(0, 3, 1, 2), rounded)


def test_gptq_matmul_and_an_input_that_is_always_zero():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 7, 40)).astype(np.float32)
    x[..., 3] = 0.0  # a dead input: H has a zero row and column
    w = rng.standard_normal((40, 30)).astype(np.float32)  # matmul weight [K, N]
    moments = HessianSum(None, columns=40, samples=1)
    moments.add(x)
    rounded, scale = gptq_quantize_weight(w, None, moments.mean, 8)
    nearest, nearest_scale = quantize_weight(w, 1, 8)
    np.testing.assert_array_equal(scale, nearest_scale)
    assert rounded.shape == w.shape and np.isfinite(rounded).all()
    assert np.abs(rounded[3]).max() == 0  # weights that never meet an input are 0
    assert np.linalg.norm(x @ (rounded * scale) - x @ w) < np.linalg.norm(x @ (nearest * scale) - x @ w)


def test_second_moment_from_a_subset_of_positions_is_close_to_the_full_one():
    rng = np.random.default_rng(3)
    x = np.concatenate([_correlated_input(rng, 8) for _ in range(4)])  # 16 samples
    x = np.concatenate([x] * 4, axis=2)  # 52x11: 572 positions per sample
    window = ConvWindow((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1)
    full = conv_patches(x, window)
    everything = HessianSum(window, columns=72, samples=4)  # 64 * 72 / 4 = 1152 rows per sample: all
    budget = HessianSum(window, columns=72, samples=16)  # 288 of the 572 rows per sample, drawn at random
    for sample in x:
        everything.add(sample[None])
        budget.add(sample[None])
    assert everything.rows == full.shape[1] and budget.rows == 64 * 72
    exact = full[0].T @ full[0] / full.shape[1]
    np.testing.assert_allclose(everything.mean[0], exact, rtol=1e-4, atol=1e-5)
    assert np.linalg.norm(budget.mean[0] - exact) < 0.1 * np.linalg.norm(exact)
    positions = np.array([0, 5, 300, 571])
    np.testing.assert_array_equal(conv_patches(x, window, positions)[0].reshape(16, 4, 72),
                                  full[0].reshape(16, 572, 72)[:, positions])


def test_plan_rounds_each_layer_once_from_its_second_moment_and_refuses_unknown_rounding():
    from compiler.quantization.calibrate import calibrate
    from compiler.quantization.layers import find_layers
    from compiler.host_runner import HostRunner
    from compiler.quantization import describe_layers

    imported = import_onnx(_conv_relu_conv_gemm())
    preset = resolve_target("host")
    mod = simplified_module(imported, preset)
    data = _samples(8)[:, 0]
    moments = calibrate(mod, imported.inputs, [{"x": x[None]} for x in data], HostRunner(), "percentile",
                        onnx_model=imported.onnx_model, hessians=True).hessians
    assert {name: h.shape for name, h in moments.items()} == {
        "conv_a": (1, 36, 36), "conv_b": (1, 72, 72), "fc": (1, 128, 128)}
    patches = conv_patches(data, ConvWindow((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1))[0]
    np.testing.assert_allclose(moments["conv_a"][0], patches.T @ patches / len(patches), rtol=1e-4, atol=1e-6)

    result = plan_int8(mod, imported, preset, Int8Options(calibration=data, weight_rounding="gptq"))
    plan = result.plan
    assert plan.weight_rounding == "gptq" and not result.calibration.hessians  # H is not kept
    assert {name: q.shape for name, (q, _) in plan.rounded_weights.items()} == {
        "conv_a": (8, 4, 3, 3), "conv_b": (8, 8, 3, 3), "fc": (128, 10)}  # conv2d OIHW, matmul [K, N]
    q, scale = plan.rounded_weights["conv_a"]
    conv_a = find_layers(mod, imported.onnx_model)[0]
    assert conv_a.name == "conv_a" and conv_a.kernel_layout == "OIHW"
    # Checked against the test's own patches, not against gptq_quantize_weight: the same grid as
    # nearest rounding, other choices on it, and a smaller output error on the calibration inputs.
    w = conv_a.weight.value.numpy()
    nearest_q, step = quantize_weight(w, 0, plan.weight_bits)
    np.testing.assert_array_equal(scale, step)
    assert (q != nearest_q).any()

    def output_error(integers: np.ndarray) -> float:
        return float(np.linalg.norm(patches @ (w - integers * step[:, None, None, None]).reshape(8, -1).T))

    assert output_error(q) < output_error(nearest_q)
    for report in result.layers:  # GPTQ's objective: each layer's output on its calibration inputs
        assert 0 < report.output_error < report.nearest_output_error
    assert "weights rounded by GPTQ" in describe_layers(result)
    nearest = plan_int8(mod, imported, preset, Int8Options(calibration=data, weight_rounding="nearest"))
    assert not nearest.plan.rounded_weights and nearest.layers[0].output_error is None
    with pytest.raises(InputError, match="weight rounding 'stochastic' is unknown"):
        plan_int8(mod, imported, preset, Int8Options(calibration=data, weight_rounding="stochastic"))


def test_cli_gptq_build_is_closer_to_fp32_than_nearest_rounding(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_conv_relu_conv_gemm(), path)
    np.savez(tmp_path / "c.npz", x=_samples(16)[:, 0])
    assert kiln(["compile", str(path), "-o", str(tmp_path / "f.so")]) == 0
    for name, rounding in [("n.so", "nearest"), ("g.so", "gptq")]:
        assert kiln(["compile", str(path), "-o", str(tmp_path / name), "--precision", "int8",
                     "--calibration", str(tmp_path / "c.npz"), "--weight-rounding", rounding]) == 0
    fp32, nearest, gptq = (load(tmp_path / n) for n in ("f.so", "n.so", "g.so"))
    assert [lib.metadata.extra["int8"]["weight_rounding"] for lib in (nearest, gptq)] == ["nearest", "gptq"]
    samples = _samples(16)
    errors = {"nearest": 0.0, "gptq": 0.0}
    for x in samples:
        ref = fp32.run({"x": x})["y"]
        errors["nearest"] += float(np.sum((nearest.run({"x": x})["y"] - ref) ** 2))
        errors["gptq"] += float(np.sum((gptq.run({"x": x})["y"] - ref) ** 2))
    assert errors["gptq"] < errors["nearest"]
    # The rounding follows each conv's own weight layout: an NCHW build (x86 INT8 is NHWC) rounds the same way.
    assert kiln(["compile", str(path), "-o", str(tmp_path / "g_nchw.so"), "--precision", "int8", "--layout", "NCHW",
                 "--calibration", str(tmp_path / "c.npz"), "--weight-rounding", "gptq"]) == 0
    nchw = load(tmp_path / "g_nchw.so")
    for x in samples[:4]:
        np.testing.assert_allclose(nchw.run({"x": x})["y"], gptq.run({"x": x})["y"], rtol=1e-5, atol=1e-5)
