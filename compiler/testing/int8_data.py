"""Models and data for kiln's INT8 measurements (``scripts/int8_report.py``, the tests).

Real trained models with labelled data (issue #6), one interface (``LabelledModel``),
nothing downloaded:

- ``digits``: a small CNN trained here in numpy on scikit-learn's 8x8 digits (seeded, a few
  seconds), exported with ``onnx.helper``; input 1x1x8x8 in [0, 1]; label = the digit.
- ``ppocr_cls``: the PP-OCR text-direction classifier shipped with ``rapidocr_onnxruntime``,
  on text lines rendered with Pillow upright (label 0) or turned 180 degrees (label 1);
  input 1x3x48x192, preprocessed exactly as rapidocr's ``TextClassifier``.
- ``ppocr_rec``: the PP-OCRv4 recognizer from the same package, on rendered words; input
  1x3x48x320, preprocessed and CTC-decoded exactly as rapidocr's ``TextRecognizer``;
  a prediction counts only if the whole string is right.

    from compiler.testing.int8_data import load, onnxruntime_runner
    m = load("ppocr_cls", Path("/tmp/int8"))
    print(m.accuracy(onnxruntime_runner(m)))          # percent

``run`` callables map one batch (``batch`` consecutive samples of ``test_inputs``) to the
model's raw output. Calibration samples are drawn apart from the test samples.

For the OCR models ``onnx_path`` is a copy under ``workdir`` with the input shape fixed and
the run-time shape arithmetic folded (``compiler.shape_folding``): kiln rejects the shipped
files (TVM's importer: "Reshape requires the input new shape to be Shape");
``info["source_onnx"]`` names the shipped file. Both give the same accuracy under ONNX Runtime.

And the light-zoo cases (``ZOO_MODELS``, ``zoo_case``): the built-in example models at opset
13 (newer ones as they are: ``tiny`` keeps 17) with seeded uniform calibration and test inputs
(random weights, so no labels).

    python scripts/int8_models.py [digits ppocr_cls ppocr_rec] --workdir DIR   # FP32 accuracy, JSON lines
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from targets.errors import InputError, ModelError, ToolMissingError

log = logging.getLogger("kiln.int8_models")

MODEL_NAMES = ("digits", "ppocr_cls", "ppocr_rec")

Runner = Callable[[np.ndarray], np.ndarray]


@dataclass
class LabelledModel:
    """A real model, the input it is compiled for, and labelled data to score it with.

    ``calibration`` and ``test_inputs`` are float32 arrays of samples (N x C x H x W), ready
    for the model; a batch is ``batch`` consecutive samples. ``decode`` turns the model's
    raw output for one batch into one prediction per sample, comparable with ``test_labels``.
    """

    name: str
    onnx_path: Path
    input_name: str
    calibration: np.ndarray
    test_inputs: np.ndarray
    test_labels: list
    batch: int
    decode: Callable[[np.ndarray], list]
    info: dict = field(default_factory=dict)  # how the data was made, for the report

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The fixed input shape to compile for: (batch, C, H, W)."""
        return (self.batch, *self.test_inputs.shape[1:])

    def batches(self, samples: np.ndarray) -> list[np.ndarray]:
        """``samples`` cut into batches of ``batch``; the last one padded by repeating its last sample."""
        out = []
        for start in range(0, len(samples), self.batch):
            chunk = samples[start:start + self.batch]
            if len(chunk) < self.batch:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch - len(chunk), axis=0)])
            out.append(np.ascontiguousarray(chunk, dtype=np.float32))
        return out

    def predict(self, run: Runner, samples: np.ndarray | None = None) -> list:
        """One prediction per sample (default: the test samples), from ``run`` (one batch -> raw output)."""
        samples = self.test_inputs if samples is None else samples
        preds: list = []
        for chunk in self.batches(samples):
            preds.extend(self.decode(np.asarray(run(chunk))))
        return preds[:len(samples)]

    def accuracy(self, run: Runner, samples: np.ndarray | None = None, labels: list | None = None) -> float:
        """Percent of samples whose prediction equals the label (default: the test set)."""
        if samples is None:
            samples, labels = self.test_inputs, self.test_labels
        preds = self.predict(run, samples)
        hits = sum(1 for p, y in zip(preds, labels) if p == y)
        return 100.0 * hits / len(labels)


def onnxruntime_runner(model: LabelledModel, threads: int = 1) -> Runner:
    """A ``run`` callable backed by ONNX Runtime (CPU, ``threads`` intra-op threads): the FP32 reference."""
    from compiler.reference import OnnxRuntimeReference

    ref = OnnxRuntimeReference(model.onnx_path, threads)
    return lambda x: ref.session.run(None, {model.input_name: x})[0]


def load(name: str, workdir: Path, n_test: int | None = None, n_calibration: int = 100,
         seed: int = 0) -> LabelledModel:
    """The model ``name`` (one of ``MODEL_NAMES``) with its data; files it makes go under ``workdir``.

    ``n_test`` defaults to the model's full test set (digits: the 30% held-out split, 540;
    the OCR models: 200 rendered images). Same arguments, same data.
    """
    if name not in MODEL_NAMES:
        raise InputError(f"unknown INT8 model '{name}'; choose one of {', '.join(MODEL_NAMES)}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if name == "digits":
        return load_digits_model(workdir, n_test, n_calibration, seed)
    if name == "ppocr_cls":
        return load_ppocr_cls(workdir, n_test or 200, n_calibration, seed)
    return load_ppocr_rec(workdir, n_test or 200, n_calibration, seed)


# ---------------------------------------------------------------------------------------
# digits: a numpy CNN on scikit-learn's 8x8 digits
# ---------------------------------------------------------------------------------------

DIGITS_VERSION = 1  # bump when the architecture or training changes: a new cache file


@dataclass
class DigitsTraining:
    """How the digits CNN is trained (Adam on softmax cross-entropy, He-normal init)."""

    seed: int = 0
    epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 3e-3
    test_fraction: float = 0.3


def digits_split(seed: int = 0, test_fraction: float = 0.3) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): N x 1 x 8 x 8 float32 in [0, 1], a seeded stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None, :, :]
    y = data.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return x_tr, y_tr, x_te, y_te


def _im2col3x3(x: np.ndarray) -> np.ndarray:
    """N x C x H x W -> N x (C*9) x (H*W): the 3x3 neighbourhoods of a stride-1, pad-1 conv."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.stack([xp[:, :, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=2)
    return cols.reshape(n, c * 9, h * w)


def _col2im3x3(cols: np.ndarray, shape: tuple[int, int, int, int]) -> np.ndarray:
    """The adjoint of ``_im2col3x3``: sums each column entry back into the input it came from."""
    n, c, h, w = shape
    cols = cols.reshape(n, c, 9, h, w)
    xp = np.zeros((n, c, h + 2, w + 2), cols.dtype)
    for k in range(9):
        i, j = divmod(k, 3)
        xp[:, :, i:i + h, j:j + w] += cols[:, :, k]
    return xp[:, :, 1:-1, 1:-1]


class DigitsCNN:
    """conv3x3(1->8) ReLU, conv3x3(8->16) ReLU, maxpool 2x2, flatten, dense(256->10), in numpy."""

    def __init__(self, rng: np.random.Generator):
        def he(shape, fan_in):
            return (rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(np.float32)

        self.params = {
            "w1": he((8, 1, 3, 3), 9), "b1": np.zeros(8, np.float32),
            "w2": he((16, 8, 3, 3), 72), "b2": np.zeros(16, np.float32),
            "w3": he((10, 256), 256), "b3": np.zeros(10, np.float32),
        }

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, dict]:
        """Logits (N x 10) and the activations ``backward`` needs."""
        p, n = self.params, len(x)
        c1 = _im2col3x3(x)
        a1 = np.maximum(p["w1"].reshape(8, -1) @ c1 + p["b1"][:, None], 0).reshape(n, 8, 8, 8)
        c2 = _im2col3x3(a1)
        a2 = np.maximum(p["w2"].reshape(16, -1) @ c2 + p["b2"][:, None], 0).reshape(n, 16, 8, 8)
        pooled = a2.reshape(n, 16, 4, 2, 4, 2).max(axis=(3, 5))
        flat = pooled.reshape(n, 256)
        logits = flat @ p["w3"].T + p["b3"]
        return logits, {"c1": c1, "a1": a1, "c2": c2, "a2": a2, "pooled": pooled, "flat": flat}

    def backward(self, dlogits: np.ndarray, cache: dict) -> dict:
        """Gradients of the loss for every parameter, given d loss / d logits."""
        p, n = self.params, len(dlogits)
        g = {"w3": dlogits.T @ cache["flat"], "b3": dlogits.sum(0)}
        dpooled = (dlogits @ p["w3"]).reshape(n, 16, 4, 1, 4, 1)
        a2 = cache["a2"].reshape(n, 16, 4, 2, 4, 2)
        winner = a2 == cache["pooled"].reshape(n, 16, 4, 1, 4, 1)
        da2 = (winner * dpooled).reshape(n, 16, 64) * (cache["a2"].reshape(n, 16, 64) > 0)
        g["w2"] = np.einsum("nop,nqp->oq", da2, cache["c2"]).reshape(p["w2"].shape)
        g["b2"] = da2.sum((0, 2))
        da1 = _col2im3x3(p["w2"].reshape(16, -1).T @ da2, (n, 8, 8, 8)).reshape(n, 8, 64)
        da1 = da1 * (cache["a1"].reshape(n, 8, 64) > 0)
        g["w1"] = np.einsum("nop,nqp->oq", da1, cache["c1"]).reshape(p["w1"].shape)
        g["b1"] = da1.sum((0, 2))
        return g

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The predicted digit for each sample of x (N x 1 x 8 x 8)."""
        return self.forward(x)[0].argmax(1)


def train_digits_cnn(x: np.ndarray, y: np.ndarray, opts: DigitsTraining) -> DigitsCNN:
    """A ``DigitsCNN`` trained on (x, y) with Adam; deterministic for a given ``opts.seed``."""
    rng = np.random.default_rng(opts.seed)
    net = DigitsCNN(rng)
    m = {k: np.zeros_like(w) for k, w in net.params.items()}  # Adam first moments
    v = {k: np.zeros_like(w) for k, w in net.params.items()}  # and second moments
    beta1, beta2, eps, step = 0.9, 0.999, 1e-8, 0
    for _ in range(opts.epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), opts.batch_size):
            idx = order[start:start + opts.batch_size]
            logits, cache = net.forward(x[idx])
            probs = np.exp(logits - logits.max(1, keepdims=True))
            probs /= probs.sum(1, keepdims=True)
            probs[np.arange(len(idx)), y[idx]] -= 1.0
            grads = net.backward(probs / len(idx), cache)
            step += 1
            for k, grad in grads.items():
                m[k] = beta1 * m[k] + (1 - beta1) * grad
                v[k] = beta2 * v[k] + (1 - beta2) * grad * grad
                m_hat = m[k] / (1 - beta1 ** step)
                v_hat = v[k] / (1 - beta2 ** step)
                net.params[k] = (net.params[k] - opts.learning_rate * m_hat / (np.sqrt(v_hat) + eps)).astype(np.float32)
    return net


def digits_onnx(net: DigitsCNN):
    """``net`` as an opset-17 ONNX model (Conv, Relu, MaxPool, Flatten, Gemm), batch dimension 'N'.

    Checked with ``onnx.checker``.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    p = net.params
    inits = [numpy_helper.from_array(p[k], k) for k in ("w1", "b1", "w2", "b2", "w3", "b3")]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["conv1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1"], ["relu1"]),
        helper.make_node("Conv", ["relu1", "w2", "b2"], ["conv2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv2"], ["relu2"]),
        helper.make_node("MaxPool", ["relu2"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pool"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "w3", "b3"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "digits_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8,
                              producer_name="kiln-int8-models")
    onnx.checker.check_model(model, full_check=True)
    return model


def _argmax_decode(out: np.ndarray) -> list:
    return [int(i) for i in out.reshape(len(out), -1).argmax(1)]


def load_digits_model(workdir: Path, n_test: int | None, n_calibration: int, seed: int) -> LabelledModel:
    """The digits CNN (trained on first use, then read from ``workdir``) and its held-out split.

    Training also checks that ONNX Runtime's test accuracy equals numpy's, else ``ModelError``.
    """
    import onnx

    opts = DigitsTraining(seed=seed)
    x_tr, y_tr, x_te, y_te = digits_split(seed, opts.test_fraction)
    path = workdir / f"digits_cnn_v{DIGITS_VERSION}_seed{seed}.onnx"
    meta_path = path.with_suffix(".json")
    if not (path.exists() and meta_path.exists()):
        net = train_digits_cnn(x_tr, y_tr, opts)
        numpy_acc = 100.0 * float(np.mean(net.predict(x_te) == y_te))
        model = digits_onnx(net)
        from compiler.reference import OnnxRuntimeReference

        ref = OnnxRuntimeReference(model, threads=1)
        ort_acc = 100.0 * float(np.mean(ref.session.run(None, {"input": x_te})[0].argmax(1) == y_te))
        if ort_acc != numpy_acc:
            raise ModelError(f"digits CNN: ONNX Runtime test accuracy {ort_acc:.2f}% differs from numpy's "
                             f"{numpy_acc:.2f}%: the ONNX export is wrong")
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        onnx.save(model, tmp)
        os.replace(tmp, path)  # atomic: a concurrent reader sees no half-written file
        meta_tmp = meta_path.with_suffix(f".tmp{os.getpid()}")
        meta_tmp.write_text(json.dumps({"numpy_test_accuracy": numpy_acc, "ort_test_accuracy": ort_acc,
                                        "training": opts.__dict__}, indent=2))
        os.replace(meta_tmp, meta_path)
        log.info("digits CNN trained: test accuracy %.2f%% (numpy = ONNX Runtime)", numpy_acc)
    trained = json.loads(meta_path.read_text())
    calib_idx = np.random.default_rng(seed).choice(len(x_tr), size=min(n_calibration, len(x_tr)), replace=False)
    n_test = len(x_te) if n_test is None else min(n_test, len(x_te))
    return LabelledModel(
        name="digits", onnx_path=path, input_name="input",
        calibration=np.ascontiguousarray(x_tr[np.sort(calib_idx)]),
        test_inputs=np.ascontiguousarray(x_te[:n_test]), test_labels=[int(v) for v in y_te[:n_test]],
        batch=1, decode=_argmax_decode,
        info={"data": "sklearn load_digits, stratified 70/30 split; calibration from the training part",
              **trained},
    )


# ---------------------------------------------------------------------------------------
# PP-OCR (rapidocr_onnxruntime): rendered text lines
# ---------------------------------------------------------------------------------------

CLS_SHAPE = (3, 48, 192)   # rapidocr config.yaml: Cls.cls_image_shape
REC_SHAPE = (3, 48, 320)   # rapidocr config.yaml: Rec.rec_img_shape

_CONSONANTS = "bcdfghjklmnprstvwz"
_VOWELS = "aeiou"


def rapidocr_model_path(filename: str) -> Path:
    """A model file shipped in the ``rapidocr_onnxruntime`` package; ``ToolMissingError`` without it."""
    try:
        import rapidocr_onnxruntime
    except ImportError:
        raise ToolMissingError("the PP-OCR models need the package rapidocr_onnxruntime: "
                               "pip install rapidocr-onnxruntime") from None
    path = Path(rapidocr_onnxruntime.__file__).parent / "models" / filename
    if not path.exists():
        raise ModelError(f"{path}: not in this rapidocr_onnxruntime install")
    return path


def static_rapidocr_model(filename: str, shape: tuple[int, ...], workdir: Path) -> Path:
    """A copy of rapidocr's ``filename`` under ``workdir`` with input 'x' fixed to ``shape`` and its
    run-time shape arithmetic folded (``compiler.shape_folding.freeze_input_shapes``), made once.

    kiln (TVM 0.27's importer) rejects the shipped files, whose Reshape targets are computed
    from ``Shape`` at run time; the frozen copy computes the same outputs at ``shape``.
    """
    import onnx

    from compiler.shape_folding import freeze_input_shapes

    source = rapidocr_model_path(filename)
    path = workdir / f"{Path(filename).stem}_{'x'.join(map(str, shape))}.onnx"
    if not path.exists() or path.stat().st_mtime < source.stat().st_mtime:
        frozen = freeze_input_shapes(onnx.load(str(source)), {"x": shape})
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        onnx.save(frozen, tmp)
        os.replace(tmp, path)
    return path


def _cv2():
    try:
        import cv2
    except ImportError:
        raise ToolMissingError("the PP-OCR preprocessing needs OpenCV (installed with rapidocr-onnxruntime): "
                               "pip install opencv-python") from None
    return cv2


def system_fonts() -> list[Path]:
    """TrueType fonts of this system with Latin glyphs (DejaVu / Liberation / Noto), sorted; may be empty."""
    found = set()
    for pattern in ("DejaVu*.ttf", "Liberation*.ttf", "NotoSans-*.ttf", "NotoSerif-*.ttf"):
        found.update(glob.glob(f"/usr/share/fonts/**/{pattern}", recursive=True))
    skip = ("ExtraLight", "MathTeX")  # hairlines, and a maths font
    return sorted(Path(f) for f in found if not any(s in f for s in skip))


def _font(fonts: Sequence[Path], index: int, size: int):
    from PIL import ImageFont

    if fonts:
        return ImageFont.truetype(str(fonts[index % len(fonts)]), size)
    return ImageFont.load_default(size=size)  # Pillow's built-in scalable font (FreeType builds)


def random_word(rng: np.random.Generator) -> str:
    """A seeded word: a pronounceable lower-case or capitalised pseudo-word, or a number."""
    kind = rng.integers(0, 4)
    if kind == 3:
        return str(rng.integers(10, 100000))
    syllables = "".join(rng.choice(list(_CONSONANTS)) + rng.choice(list(_VOWELS))
                        for _ in range(rng.integers(2, 5)))
    if rng.integers(0, 2):
        syllables += rng.choice(list(_CONSONANTS))
    return syllables.capitalize() if kind == 2 else syllables


def render_line(text: str, font, rng: np.random.Generator) -> np.ndarray:
    """``text`` drawn dark on a light background with a small margin: H x W x 3 uint8, BGR like cv2."""
    from PIL import Image, ImageDraw

    left, top, right, bottom = font.getbbox(text)
    pad_x, pad_y = int(rng.integers(4, 16)), int(rng.integers(3, 10))
    w, h = right - left + 2 * pad_x, bottom - top + 2 * pad_y
    background = tuple(int(c) for c in rng.integers(200, 256, size=3))
    ink = tuple(int(c) for c in rng.integers(0, 70, size=3))
    img = Image.new("RGB", (w, h), background)
    ImageDraw.Draw(img).text((pad_x - left, pad_y - top), text, font=font, fill=ink)
    return np.ascontiguousarray(np.asarray(img)[:, :, ::-1])


def cls_preprocess(img: np.ndarray) -> np.ndarray:
    """rapidocr's ``TextClassifier.resize_norm_img``: C x 48 x 192 float32 in [-1, 1], right-padded with 0."""
    return _resize_norm_pad(img, CLS_SHAPE)


def _resize_norm_pad(img: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Resize to the height keeping the aspect ratio (at most the width), scale to [-1, 1], pad right with 0."""
    cv2 = _cv2()
    img_c, img_h, img_w = shape
    h, w = img.shape[:2]
    ratio = w / float(h)
    resized_w = img_w if math.ceil(img_h * ratio) > img_w else int(math.ceil(img_h * ratio))
    resized = cv2.resize(img, (resized_w, img_h)).astype("float32").transpose((2, 0, 1)) / 255
    resized -= 0.5
    resized /= 0.5
    padded = np.zeros((img_c, img_h, img_w), dtype=np.float32)
    padded[:, :, :resized_w] = resized
    return padded


def rec_preprocess(img: np.ndarray) -> np.ndarray:
    """rapidocr's ``TextRecognizer.resize_norm_img`` for a batch of one: C x 48 x 320 float32.

    rapidocr widens the input past 320 for lines wider than 320/48; callers keep lines
    narrower than that (``InputError`` otherwise) so the shape stays fixed.
    """
    _, img_h, img_w = REC_SHAPE
    h, w = img.shape[:2]
    max_wh_ratio = max(img_w / img_h, w / float(h))
    if int(img_h * max_wh_ratio) != img_w:
        raise InputError(f"text line {w}x{h} is wider than {img_w}/{img_h}: rapidocr would widen the input")
    return _resize_norm_pad(img, REC_SHAPE)


@dataclass
class RenderedLines:
    """Rendered text lines (H x W x 3 uint8 BGR), what they say, and the font file of each."""

    images: list[np.ndarray]
    texts: list[str]
    fonts: list[str]


def render_lines(count: int, seed: int, max_ratio: float, words: tuple[int, int] = (1, 3),
                 exclude: Sequence[str] = ()) -> RenderedLines:
    """``count`` seeded text lines of ``words`` words, each no wider than ``max_ratio`` x its height.

    Texts are distinct and none is in ``exclude``. Lines too wide are redrawn with new text.
    The first k lines of a call are the k lines of the same call with ``count`` = k.
    """
    rng = np.random.default_rng(seed)
    fonts = system_fonts()
    images, texts, names, seen = [], [], [], set(exclude)
    while len(images) < count:
        text = " ".join(random_word(rng) for _ in range(rng.integers(words[0], words[1] + 1)))
        font_index, size = int(rng.integers(0, max(len(fonts), 1))), int(rng.integers(22, 44))
        img = render_line(text, _font(fonts, font_index, size), rng)
        if text in seen or img.shape[1] > max_ratio * img.shape[0]:
            continue
        seen.add(text)
        images.append(img)
        texts.append(text)
        names.append(fonts[font_index].name if fonts else "pillow-default")
    return RenderedLines(images, texts, names)


def load_ppocr_cls(workdir: Path, n_test: int, n_calibration: int, seed: int) -> LabelledModel:
    """The PP-OCR direction classifier on rendered lines: label 0 upright, 1 turned 180 degrees.

    Test and calibration lines come from two seeded streams, with no text in both; a smaller
    ``n_test`` gives a prefix of the larger test set. Labels alternate upright / turned.
    """
    source = "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    path = static_rapidocr_model(source, (1, *CLS_SHAPE), workdir)
    test = render_lines(n_test, seed=seed + 1000, max_ratio=6.0)
    calib = render_lines(n_calibration, seed=seed + 1001, max_ratio=6.0, exclude=test.texts)

    def samples(lines: RenderedLines) -> tuple[np.ndarray, list[int]]:
        labels = [i % 2 for i in range(len(lines.images))]
        x = [cls_preprocess(np.ascontiguousarray(img[::-1, ::-1]) if label else img)  # = cv2.ROTATE_180
             for img, label in zip(lines.images, labels)]
        return np.stack(x) if x else np.zeros((0, *CLS_SHAPE), np.float32), labels

    x_test, y_test = samples(test)
    x_calib, _ = samples(calib)
    return LabelledModel(
        name="ppocr_cls", onnx_path=path, input_name="x",
        calibration=x_calib, test_inputs=x_test, test_labels=y_test,
        batch=1, decode=_argmax_decode,
        info={"source_onnx": str(rapidocr_model_path(source)),
              "data": "Pillow-rendered lines of 1-3 seeded pseudo-words/numbers, system TTF fonts; "
                      "label 0 = upright, 1 = rotated 180 degrees; rapidocr TextClassifier preprocessing",
              "fonts": sorted(set(test.fonts)), "test_texts": test.texts, "calibration_texts": calib.texts},
    )


def rec_characters(path: Path) -> list[str]:
    """rapidocr's CTC alphabet for the model at ``path``: 'blank', the model's 'character' metadata, ' '."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    if "character" not in meta:
        raise ModelError(f"{path}: no 'character' metadata; not a rapidocr recognition model")
    return ["blank", *meta["character"].splitlines(), " "]


def ctc_decoder(characters: list[str], strip: bool = True) -> Callable[[np.ndarray], list]:
    """rapidocr's ``CTCLabelDecode`` (greedy: argmax, merge repeats, drop blank 0) for a B x T x C output.

    With ``strip`` the texts lose leading/trailing spaces (the model often reads the margin
    of a line as ' '; the labels have none), else they are exactly rapidocr's.
    """
    table = np.array(characters, dtype=object)

    def decode(out: np.ndarray) -> list:
        texts = []
        for idx in out.argmax(axis=2):
            keep = np.ones(len(idx), dtype=bool)
            keep[1:] = idx[1:] != idx[:-1]
            keep &= idx != 0
            text = "".join(table[idx[keep]])
            texts.append(text.strip(" ") if strip else text)
        return texts

    return decode


def load_ppocr_rec(workdir: Path, n_test: int, n_calibration: int, seed: int) -> LabelledModel:
    """The PP-OCRv4 recognizer on rendered single words; the label is the word, scored by exact match.

    Predictions are rapidocr's decoded text without leading/trailing spaces (``ctc_decoder``).
    """
    source = "ch_PP-OCRv4_rec_infer.onnx"
    path = static_rapidocr_model(source, (1, *REC_SHAPE), workdir)
    _, img_h, img_w = REC_SHAPE
    test = render_lines(n_test, seed=seed + 2000, max_ratio=img_w / img_h, words=(1, 1))
    calib = render_lines(n_calibration, seed=seed + 2001, max_ratio=img_w / img_h, words=(1, 1), exclude=test.texts)

    def samples(lines: RenderedLines) -> np.ndarray:
        x = [rec_preprocess(img) for img in lines.images]
        return np.stack(x) if x else np.zeros((0, *REC_SHAPE), np.float32)

    return LabelledModel(
        name="ppocr_rec", onnx_path=path, input_name="x",
        calibration=samples(calib), test_inputs=samples(test), test_labels=test.texts,
        batch=1, decode=ctc_decoder(rec_characters(path)),
        info={"source_onnx": str(rapidocr_model_path(source)),
              "data": "Pillow-rendered single seeded pseudo-words/numbers, system TTF fonts; "
                      "rapidocr TextRecognizer preprocessing and CTC decoding; exact match after "
                      "dropping leading/trailing spaces",
              "fonts": sorted(set(test.fonts)), "calibration_texts": calib.texts},
    )


# ---------------------------------------------------------------------------------------
# the light zoo: random weights, seeded uniform inputs
# ---------------------------------------------------------------------------------------

ZOO_MODELS = ("squeezenet", "resnet50")  # the example models the INT8 report and bench_requantize use


@dataclass
class ZooCase:
    """A light-zoo example model saved at opset 13, with seeded calibration and test inputs
    (uniform in [0, 1), one sample per row; the weights are random, so there are no labels)."""

    onnx_path: Path
    input_name: str
    input_shape: tuple[int, ...]
    calibration: np.ndarray
    test_inputs: np.ndarray


def zoo_case(name: str, workdir: Path, n_calibration: int, n_test: int = 20) -> ZooCase:
    """The example model ``name`` written to ``workdir``, and its inputs (same arguments, same data)."""
    import onnx
    import onnx.version_converter

    from compiler.examples import example_model

    # The light-zoo files are old opsets; ONNX Runtime's quantize_static needs 13 for
    # per-channel QDQ (kiln upgrades by itself, the same way). Newer models (``tiny``, opset 17)
    # stay as they are: the converter has no way down for some of their operators.
    model = example_model(name)
    if next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) < 13:
        model = onnx.version_converter.convert_version(model, 13)
    path = Path(workdir) / f"{name}.onnx"
    onnx.save(model, path)
    inp = model.graph.input[0]
    shape = tuple(d.dim_value for d in inp.type.tensor_type.shape.dim)
    rng = np.random.default_rng(0)
    calibration = rng.uniform(0.0, 1.0, (n_calibration, *shape[1:])).astype(np.float32)
    test = rng.uniform(0.0, 1.0, (n_test, *shape[1:])).astype(np.float32)
    return ZooCase(path, inp.name, shape, calibration, test)
