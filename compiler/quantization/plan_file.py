"""The INT8 plan as a file (``kiln quantize -o model.kq``): versioned, no pickle.

A ``.kq`` file is a zip archive of ``plan.json`` and one ``.npy`` per array. ``plan.json``
holds the format name and version, the source model's sha256 and input shapes, the target
facts the plan was made for (weight bits), the INT8 options, the calibrated ranges, the layers
kept in FP32, the per-layer report, and the sha256 of every array. The arrays are the
GPTQ-rounded integer weights with their scales and the bias-correction input means; they are
read back with ``allow_pickle=False``.

``load_plan`` expects the model the plan was made for, imported at the same input shapes, and
a target whose int8 kernels take the plan's weights. It guarantees the ``Int8Result``
``plan_int8`` returned when the plan was saved. Anything else raises a ``KilnError``:
- another model or other shapes: ``InputError``, naming both;
- a damaged or foreign file: ``PlanFileError``, one line.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
import zlib
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

from compiler.quantization.calibrate import CalibrationResult
from compiler.quantization.calibrators import TensorRange
from compiler.quantization.plan import LayerReport, QuantizationPlan
from compiler.quantization.planner import Int8Options
from compiler.quantization.report import Int8Result
from targets.errors import InputError, KilnError

FORMAT = "kiln-int8-plan"
VERSION = 1
PLAN_JSON = "plan.json"
# Int8Options fields that are not choices about the plan (data source, callbacks, run-time threads)
_NOT_SAVED = ("calibration", "evaluate", "threads")


class PlanFileError(KilnError):
    """A ``.kq`` file that is damaged, truncated, or not a kiln INT8 plan."""


def _range_json(rng: TensorRange) -> dict:
    out = {"signed": rng.signed, "threshold": rng.threshold, "minimum": rng.minimum, "maximum": rng.maximum}
    if rng.channels is not None:
        out["channels"] = [_range_json(c) for c in rng.channels]
    return out


def _range(data: dict) -> TensorRange:
    channels = data.get("channels")
    return TensorRange(bool(data["signed"]), float(data["threshold"]), float(data["minimum"]),
                       float(data["maximum"]), tuple(_range(c) for c in channels) if channels is not None else None)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def save_plan(result: Int8Result, path: str | Path, model_sha256: str, input_shapes: dict[str, list],
              target: str, options: Int8Options) -> Path:
    """Write ``result`` (from ``plan_int8``) for the model with ``model_sha256`` to ``path``."""
    plan = result.plan
    arrays: dict[str, bytes] = {}

    def stored(array: np.ndarray) -> dict:
        name = f"arrays/{len(arrays)}.npy"
        arrays[name] = _npy_bytes(array)
        return {"file": name, "sha256": hashlib.sha256(arrays[name]).hexdigest()}

    document = {
        "format": FORMAT, "version": VERSION,
        "model": {"sha256": model_sha256, "input_shapes": input_shapes},
        "target": target,
        "options": {f.name: getattr(options, f.name) for f in fields(options) if f.name not in _NOT_SAVED},
        "plan": {
            "ranges": {name: _range_json(rng) for name, rng in plan.ranges.items()},
            "keep_fp32": sorted(plan.keep_fp32), "weight_bits": plan.weight_bits,
            "channel_multiple": plan.channel_multiple, "signed_activations": plan.signed_activations,
            "bias_correction": plan.bias_correction, "requantize": plan.requantize,
            "weight_rounding": plan.weight_rounding,
            "input_means": {name: stored(mean) for name, mean in plan.input_means.items()},
            "rounded_weights": {name: {"q": stored(q), "scale": stored(scale)}
                                for name, (q, scale) in plan.rounded_weights.items()},
        },
        "calibration": {"method": result.calibration.method, "samples": result.calibration.samples,
                        "seconds": result.calibration.seconds},
        "layers": [asdict(layer) for layer in result.layers],
        "agreement_search": result.agreement_search, "search_metric": result.search_metric,
        "fp32_score": result.fp32_score, "probe_seconds": result.probe_seconds,
    }
    document["options"]["keep_fp32"] = list(options.keep_fp32)
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(PLAN_JSON, json.dumps(document, indent=1, allow_nan=False))
        for name, data in arrays.items():
            archive.writestr(name, data)
    partial.replace(path)  # a killed write leaves no half plan under the real name
    return path


def _read(path: Path) -> tuple[dict, zipfile.ZipFile]:
    if not path.is_file():
        raise InputError(f"INT8 plan {path}: no such file (write one with kiln quantize MODEL --calibration DATA "
                         f"-o {path.name})")
    try:
        archive = zipfile.ZipFile(path)
        document = json.loads(archive.read(PLAN_JSON).decode("utf-8"))
    except (zipfile.BadZipFile, zlib.error, KeyError, OSError, EOFError, UnicodeDecodeError, ValueError,
            RuntimeError, NotImplementedError, zipfile.LargeZipFile, RecursionError) as err:  # every way a zip or its JSON can be damaged
        raise PlanFileError(f"{path} is not a readable kiln INT8 plan ({type(err).__name__}: "
                            f"{str(err)[:120]}); write it again with kiln quantize") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise PlanFileError(f"{path} is not a kiln INT8 plan (no '{FORMAT}' header)")
    if document.get("version") != VERSION:
        raise PlanFileError(f"{path} is an INT8 plan of format version {document.get('version')!r}; this kiln "
                            f"reads version {VERSION}: write it again with this kiln's kiln quantize")
    return document, archive


def _array(archive: zipfile.ZipFile, entry: dict) -> np.ndarray:
    data = archive.read(entry["file"])
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise ValueError(f"{entry['file']} does not match its sha256")
    return np.load(io.BytesIO(data), allow_pickle=False)


def load_plan(path: str | Path, model_sha256: str, input_shapes: dict[str, list], *, weight_bits: int,
              channel_multiple: int, signed_activations: bool, onnx_model=None) -> Int8Result:
    """The ``Int8Result`` saved in ``path``, checked against the model being built (its
    ``model_sha256`` and ``input_shapes``) and the target's int8 weight width ``weight_bits``.

    The target's own ``channel_multiple`` and ``signed_activations`` replace the saved ones
    (both change how the int8 kernels read the data, not its values), unless the plan's options
    chose the activation sign explicitly."""
    path = Path(path)
    document, archive = _read(path)
    with archive:
        try:
            model = document["model"]
            if model["sha256"] != model_sha256:
                raise InputError(f"{path} was made for another model (sha256 {str(model['sha256'])[:12]}…, this one "
                                 f"is {model_sha256[:12]}…): run kiln quantize on this model")
            if model["input_shapes"] != input_shapes:
                raise InputError(f"{path} was made for input shapes {model['input_shapes']}, this build has "
                                 f"{input_shapes}: pass the same --input-shape as to kiln quantize")
            saved = document["plan"]
            if int(saved["weight_bits"]) > weight_bits:
                raise InputError(f"{path} holds {saved['weight_bits']}-bit weights (made for target "
                                 f"'{document['target']}'); this target's int8 kernels take {weight_bits}-bit "
                                 "weights: run kiln quantize with this --target")
            plan = QuantizationPlan(
                ranges={name: _range(r) for name, r in saved["ranges"].items()},
                keep_fp32=set(saved["keep_fp32"]), weight_bits=int(saved["weight_bits"]), onnx_model=onnx_model,
                channel_multiple=channel_multiple,
                signed_activations=signed_activations if document["options"].get("signed_activations") is None
                else bool(saved["signed_activations"]),
                bias_correction=bool(saved["bias_correction"]), requantize=str(saved["requantize"]),
                weight_rounding=str(saved["weight_rounding"]),
                input_means={name: _array(archive, e) for name, e in saved["input_means"].items()},
                rounded_weights={name: (_array(archive, e["q"]), _array(archive, e["scale"]))
                                 for name, e in saved["rounded_weights"].items()})
            c = document["calibration"]
            calibration = CalibrationResult(str(c["method"]), plan.ranges, int(c["samples"]), float(c["seconds"]))
            return Int8Result(plan, calibration, [LayerReport(**layer) for layer in document["layers"]],
                              [tuple(step) for step in document["agreement_search"]], str(document["search_metric"]),
                              document["fp32_score"], float(document["probe_seconds"]))
        except KilnError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, OSError, EOFError, zipfile.BadZipFile, zlib.error,
                RuntimeError, RecursionError) as err:  # a damaged entry or a field of the wrong shape
            raise PlanFileError(f"{path} is a damaged kiln INT8 plan ({type(err).__name__}: {str(err)[:120]}); "
                                "write it again with kiln quantize") from None
