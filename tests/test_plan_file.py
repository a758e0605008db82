"""The saved INT8 plan (``kiln quantize -o model.kq``): it round-trips through compile, is
refused for another model or other shapes, and a damaged file is one clear error."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import onnx
import pytest

from compiler.build import CompileOptions, compile_model, int8_plan_for, model_input_shapes
from compiler.frontend import import_onnx
from compiler.pipeline import simplified_module
from compiler.quantization import Int8Options, plan_int8
from compiler.quantization.plan_file import PlanFileError, load_plan, save_plan
from compiler.runtime import load
from targets.errors import InputError
from targets.registry import resolve_target
from tests.test_cli import kiln
from tests.test_int8 import _conv_relu_conv_gemm, _samples


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A small conv/gemm model, its calibration data, and its plan written by ``kiln quantize``."""
    tmp = tmp_path_factory.mktemp("plan")
    onnx.save(_conv_relu_conv_gemm(), tmp / "m.onnx")
    np.save(tmp / "calib.npy", _samples(8)[:, 0])
    done = kiln("quantize", str(tmp / "m.onnx"), "--calibration", str(tmp / "calib.npy"), "--keep-fp32", "last",
                "--bias-correction", "-o", str(tmp / "m.kq"))
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout and "conv_a" in done.stdout  # the per-layer table, then the file
    return tmp


@pytest.mark.slow
def test_a_plan_builds_the_library_that_calibrating_builds(saved):
    """kiln compile --int8-plan gives bit for bit the library's results of calibrating again with
    the same options (GPTQ weights, bias correction and the FP32 layer come from the file)."""
    planned, calibrated = saved / "planned.so", saved / "calibrated.so"
    done = kiln("compile", str(saved / "m.onnx"), "--int8-plan", str(saved / "m.kq"), "-o", str(planned))
    assert done.returncode == 0, done.stderr
    assert "kept in FP32: fc" in done.stdout
    done = kiln("compile", str(saved / "m.onnx"), "--precision", "int8", "--calibration", str(saved / "calib.npy"),
                "--keep-fp32", "last", "--bias-correction", "-o", str(calibrated))
    assert done.returncode == 0, done.stderr
    x = {"x": _samples(1, seed=5)[0]}
    a, b = load(planned).run(x)["y"], load(calibrated).run(x)["y"]
    np.testing.assert_array_equal(a, b)
    fp32 = saved / "fp32.so"
    assert kiln("compile", str(saved / "m.onnx"), "-o", str(fp32)).returncode == 0
    assert not np.array_equal(a, load(fp32).run(x)["y"])  # and it is the INT8 model, not FP32


def test_the_plan_round_trips_through_the_api(saved, tmp_path):
    imported = import_onnx(saved / "m.onnx")
    preset = resolve_target("host")
    options = Int8Options(calibration=_samples(8)[:, 0], method="minmax", bias_correction=True)
    result = plan_int8(simplified_module(imported, preset), imported, preset, options)
    path = save_plan(result, tmp_path / "p.kq", imported.sha256, model_input_shapes(imported), preset.name, options)
    back = int8_plan_for(imported, preset, None, path)
    assert back.plan.ranges == result.plan.ranges and back.plan.keep_fp32 == result.plan.keep_fp32
    assert back.plan.rounded_weights.keys() == result.plan.rounded_weights.keys()
    for name, (q, scale) in result.plan.rounded_weights.items():
        np.testing.assert_array_equal(back.plan.rounded_weights[name][0], q)
        np.testing.assert_array_equal(back.plan.rounded_weights[name][1], scale)
    for name, mean in result.plan.input_means.items():
        np.testing.assert_array_equal(back.plan.input_means[name], mean)
    assert [r.name for r in back.layers] == [r.name for r in result.layers]
    assert back.calibration.method == "minmax" and back.calibration.samples == 8
    with pytest.raises(InputError, match="either --int8-plan or --calibration"):
        int8_plan_for(imported, preset, options, path)


def test_a_plan_for_another_model_or_other_shapes_is_refused(saved, tmp_path):
    other = _conv_relu_conv_gemm()
    weights = onnx.numpy_helper.to_array(other.graph.initializer[0]).copy()
    other.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(weights * 2, other.graph.initializer[0].name))
    onnx.save(other, tmp_path / "other.onnx")
    done = kiln("compile", str(tmp_path / "other.onnx"), "--int8-plan", str(saved / "m.kq"), "-o", str(tmp_path / "o.so"))
    assert done.returncode == 2 and "made for another model" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    with pytest.raises(InputError, match="input shapes"):
        compile_model(saved / "m.onnx", tmp_path / "b2.so", CompileOptions(
            precision="int8", int8_plan=saved / "m.kq", input_shapes={"x": (2, 4, 8, 8)}))
    with pytest.raises(InputError, match="precision int8"):
        compile_model(saved / "m.onnx", tmp_path / "f.so", CompileOptions(int8_plan=saved / "m.kq"))
    done = kiln("compile", str(saved / "m.onnx"), "--int8-plan", str(saved / "m.kq"), "--precision", "fp16",
                "-o", str(tmp_path / "h.so"))
    assert done.returncode == 2 and "--int8-plan is for --precision int8" in done.stderr


def test_a_plan_with_wider_weights_than_the_target_takes_is_refused(saved):
    imported = import_onnx(saved / "m.onnx")
    with pytest.raises(InputError, match="weights: run kiln quantize with this --target"):
        load_plan(saved / "m.kq", imported.sha256, model_input_shapes(imported), weight_bits=6,
                  channel_multiple=1, signed_activations=False)


def _damaged(source, tmp_path) -> dict:
    data = source.read_bytes()
    with zipfile.ZipFile(source) as archive:
        document = json.loads(archive.read("plan.json"))
        entries = {name: archive.read(name) for name in archive.namelist()}

    def rezip(name: str, **replaced) -> None:
        with zipfile.ZipFile(tmp_path / name, "w") as out:
            for entry, content in {**entries, **replaced}.items():
                out.writestr(entry, content)

    array = next(name for name in entries if name.startswith("arrays/"))
    flipped = bytearray(entries[array])
    flipped[-1] ^= 0x40
    rezip("flipped.kq", **{array: bytes(flipped)})
    rezip("version.kq", **{"plan.json": json.dumps({**document, "version": 99})})
    rezip("shape.kq", **{"plan.json": json.dumps({**document, "plan": {**document["plan"], "ranges": [1, 2]}})})
    rezip("foreign.kq", **{"plan.json": json.dumps({"hello": 1})})
    (tmp_path / "truncated.kq").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.kq").write_bytes(b"")
    (tmp_path / "random.kq").write_bytes(np.random.default_rng(0).bytes(4096))
    return {"flipped.kq": "damaged", "version.kq": "version 99", "shape.kq": "damaged",
            "foreign.kq": "not a kiln INT8 plan", "truncated.kq": "not a readable", "empty.kq": "not a readable",
            "random.kq": "not a readable"}


def test_a_damaged_plan_is_one_clear_error(saved, tmp_path):
    imported = import_onnx(saved / "m.onnx")
    shapes = model_input_shapes(imported)
    for name, message in _damaged(saved / "m.kq", tmp_path).items():
        with pytest.raises(PlanFileError, match=message):
            load_plan(tmp_path / name, imported.sha256, shapes, weight_bits=8, channel_multiple=1,
                      signed_activations=False)
    done = kiln("compile", str(saved / "m.onnx"), "--int8-plan", str(tmp_path / "flipped.kq"), "-o",
                str(tmp_path / "x.so"))
    assert done.returncode == 2 and "damaged kiln INT8 plan" in done.stderr and "Traceback" not in done.stderr
    done = kiln("compile", str(saved / "m.onnx"), "--int8-plan", str(tmp_path / "missing.kq"), "-o",
                str(tmp_path / "x.so"))
    assert done.returncode == 2 and "no such file" in done.stderr
