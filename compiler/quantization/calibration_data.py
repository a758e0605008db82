"""Calibration samples from files or memory, as model-sized batches."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from compiler.array_files import read_npy, read_npz
from targets.errors import InputError
from targets.library_format import TensorSpec


def _as_batch(arrays: dict[str, np.ndarray], inputs: list[TensorSpec]) -> list[dict[str, np.ndarray]]:
    """Split one mapping name -> array into model-sized batches (a leading sample axis is allowed)."""
    missing = [spec.name for spec in inputs if spec.name not in arrays]
    if missing:
        raise InputError(f"calibration data has no array for input(s) {', '.join(missing)}; "
                         f"it has {', '.join(sorted(arrays)) or 'none'}")
    counts = set()
    per_input = {}
    for spec in inputs:
        value = np.asarray(arrays[spec.name])
        shape = tuple(spec.shape)
        if value.shape == shape:
            per_input[spec.name] = value[None]
        elif shape and shape[0] == 1 and value.shape == shape[1:]:  # one sample without its batch axis
            per_input[spec.name] = value[None, None]
        elif value.shape[1:] == shape:
            per_input[spec.name] = value
        elif shape and shape[0] == 1 and value.shape[1:] == shape[1:]:
            per_input[spec.name] = value[:, None]
        else:
            raise InputError(f"calibration array '{spec.name}' has shape {value.shape}; the model takes "
                             f"{shape} (or N x {shape} for N samples)")
        counts.add(per_input[spec.name].shape[0])
    if len(counts) != 1:
        raise InputError(f"calibration arrays have different sample counts: {sorted(counts)}")
    n = counts.pop()
    return [{spec.name: per_input[spec.name][i].astype(spec.dtype, copy=False) for spec in inputs}
            for i in range(n)]


def _read_file(path: Path, inputs: list[TensorSpec]) -> dict[str, np.ndarray]:
    if path.suffix not in (".npy", ".npz"):
        raise InputError(f"{path}: calibration data must be .npz (one array per input name) or .npy")
    if path.suffix == ".npy":
        if len(inputs) != 1:
            raise InputError(f"{path}: a .npy file feeds a one-input model; this one has {len(inputs)} "
                             "inputs (use .npz with one array per input name)")
        return {inputs[0].name: read_npy(path, "calibration data")}
    return read_npz(path, "calibration data")


def load_calibration(source, inputs: list[TensorSpec], limit: int | None = None) -> list[dict[str, np.ndarray]]:
    """Calibration samples as model-sized batches.

    ``source``: an ``.npz`` (one array per input name, optionally with a leading sample
    axis), an ``.npy`` (one-input models), a directory of those, the same as in-memory
    arrays (a dict, or one array), or an iterable of dicts / arrays. ``limit`` keeps the first samples only.
    """
    batches: list[dict[str, np.ndarray]] = []
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".npy", ".npz"))
            if not files:
                raise InputError(f"{path}: no .npy or .npz files for calibration")
        elif path.is_file():
            files = [path]
        else:
            raise InputError(f"calibration data {path}: no such file or directory")
        for file in files:
            batches += _as_batch(_read_file(file, inputs), inputs)
    elif isinstance(source, np.ndarray):
        if len(inputs) != 1:
            raise InputError("one calibration array feeds a one-input model; pass a dict name -> array")
        batches = _as_batch({inputs[0].name: source}, inputs)
    elif isinstance(source, dict):
        batches = _as_batch(source, inputs)
    elif isinstance(source, Iterable):
        for item in source:
            if isinstance(item, dict):
                batches += _as_batch(item, inputs)
            elif len(inputs) == 1:
                batches += _as_batch({inputs[0].name: item}, inputs)
            else:
                raise InputError("calibration items must be dicts name -> array for a multi-input model")
            if limit is not None and len(batches) >= limit:
                break
    else:
        raise InputError(f"calibration data must be a path or an iterable, not {type(source).__name__}")
    if not batches:
        raise InputError("calibration data holds no samples")
    return batches[:limit] if limit is not None else batches
