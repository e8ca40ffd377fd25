"""The library in one call: ``ernievil2.load(...)`` -> a :class:`Model` that encodes images and texts.

    import ernievil2
    model = ernievil2.load("output/demo/train")
    img = model.encode_image(["a.jpg", pil_image, rgb_array])
    txt = model.encode_text(["一只橘色的猫", "一辆摩托车"])
    probs = model.similarity(img, txt).softmax(-1)

One object over two backends: the dygraph model (a training output folder, a checkpoint
folder, a ``.pdparams`` with its config, a PaddleNLP folder), or an export folder run by its
predictors (Paddle Inference or ONNX Runtime). Both give the same embeddings for the same
weights; the gallery helpers (:func:`build_gallery`, :func:`load_gallery`, :func:`search`)
reuse the service's index code. ``docs/python_api.md`` is the user's guide; its examples run
in ``tests/test_python_api.py``.
"""
import dataclasses
import os

import numpy as np
import paddle

from .checkpoint import MODEL_WEIGHTS, latest_checkpoint, load_pretrained
from .checkpoint.paddlenlp import PADDLENLP_WEIGHTS, read_paddlenlp_dir
from .checkpoint.released import not_found_message, released_name, resolve_weights
from .config import default_config, load_config
from .data.errors import SkipCounter
from .data.image_ops import EvalTransform
from .data.readers import IMAGE_EXTENSIONS, decode_image_bytes
from .data.sources import DESCRIPTIONS, data_spec, seen_format
from .data.tokenizer import build_tokenizer, trim_padding
from .inference.deploy import DEPLOY_FILE
from .inference.errors import DeviceUnavailableError
from .inference.galleries import build_galleries, save_galleries
from .inference.index import load_gallery
from .inference.inputs import iter_image_files, iter_pair_images
from .inference.predictor import ExportedModel, PredictorOptions, length_sorted_batches
from .models import build_model

# A training output folder keeps the config it was trained with under this name.
TRAIN_CONFIG = "config.yaml"


class ModelSourceError(ValueError):
    """What was passed to :func:`load` is not a model it can read; the message says what to pass."""


def default_device():
    """``gpu`` where this Paddle is a CUDA build and sees a GPU, else ``cpu``."""
    if paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0:
        return "gpu"
    return "cpu"


def check_device(device):
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    if device == "gpu" and not paddle.device.is_compiled_with_cuda():
        raise DeviceUnavailableError("device='gpu' needs a CUDA build of Paddle (paddlepaddle-gpu); this one is CPU-only")


@dataclasses.dataclass(frozen=True)
class Source:
    """What :func:`resolve_source` found: an export folder, or a config and weights for the dygraph model."""

    kind: str  # "export" | "dygraph"
    path: str
    config: object = None  # dygraph: a config file path or a loaded config dict


def _config_near(weights_dir):
    """The training config of a checkpoint folder (``OUT/checkpoints/step_N``) or training output folder."""
    for folder in (weights_dir, os.path.dirname(os.path.dirname(os.path.abspath(weights_dir)))):
        candidate = os.path.join(folder, TRAIN_CONFIG)
        if os.path.isfile(candidate):
            return candidate
    return None


def _needs_config(path):
    return ModelSourceError(
        f"{path}: weights without a config; pass the config they were trained with, "
        f"e.g. ernievil2.load({path!r}, config='configs/ernievil2_base_vit16.yaml')"
    )


def resolve_source(source, config=None):
    """Decide how to load ``source`` (see :func:`load`); raises :class:`ModelSourceError` naming what to pass."""
    path = os.fspath(source)
    if not os.path.exists(path):
        if released_name(path) is None:
            raise ModelSourceError(not_found_message(path))
        path = resolve_weights(path)
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, DEPLOY_FILE)):
        if config is not None:
            raise ModelSourceError(f"{path} is an export: it carries its own settings ({DEPLOY_FILE}); do not pass config")
        return Source("export", path)
    if os.path.isdir(path):
        is_paddlenlp = os.path.isfile(os.path.join(path, PADDLENLP_WEIGHTS))
        has_weights = os.path.isfile(os.path.join(path, MODEL_WEIGHTS)) or latest_checkpoint(path)
        if not (has_weights or is_paddlenlp):
            raise ModelSourceError(
                f"{path} holds no model: expected an export ({DEPLOY_FILE}), a training output folder with a "
                f"checkpoint, a checkpoint folder ({MODEL_WEIGHTS}) or a PaddleNLP folder ({PADDLENLP_WEIGHTS})"
            )
        if config is None and not is_paddlenlp:
            config = _config_near(path)
            if config is None:
                raise _needs_config(path)
        return Source("dygraph", path, config)
    if config is None:
        config = _config_near(os.path.dirname(os.path.abspath(path)))
        if config is None:
            raise _needs_config(path)
    return Source("dygraph", path, config)


def _dygraph_config(source):
    if isinstance(source.config, dict):
        return source.config
    if source.config is not None:
        return load_config(os.fspath(source.config))
    # A PaddleNLP folder: its Arch, and the official preprocessing and tokenizer (the defaults).
    config = default_config()
    config["Arch"] = read_paddlenlp_dir(source.path)[0]
    return config


def _as_items(inputs, single_types):
    """(list, was one item): one input of ``single_types`` becomes a list of one."""
    if isinstance(inputs, single_types) or _is_pil(inputs):
        return [inputs], True
    if isinstance(inputs, np.ndarray) and inputs.ndim <= 3:
        return [inputs], True
    return list(inputs), False


def _is_pil(image):
    return type(image).__module__.startswith("PIL.") and hasattr(image, "convert")


def to_rgb(image):
    """An RGB uint8 HWC array from a path, encoded bytes, a PIL image or an array (HW, HWC with 1, 3 or 4 channels)."""
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if os.path.isdir(path):
            raise IsADirectoryError(f"{path} is a folder: pass image files (build_gallery takes folders)")
        with open(path, "rb") as f:
            return decode_image_bytes(f.read(), path)
    if isinstance(image, (bytes, bytearray)):
        return decode_image_bytes(bytes(image), "(image bytes)")
    if _is_pil(image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"an image array must be uint8 RGB (HWC), got dtype {image.dtype}")
        if image.ndim == 2:
            return np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim == 3 and image.shape[2] in (1, 3, 4):
            return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[:, :, :3]
        raise ValueError(f"an image array must be HW or HWC with 1, 3 or 4 channels, got shape {image.shape}")
    raise TypeError(f"cannot read an image from {type(image).__name__}: pass a path, bytes, a PIL image or an RGB uint8 array")


def _progress(total, unit, enabled):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit=unit)


@dataclasses.dataclass(frozen=True)
class Hit:
    """One search result: the gallery item's id, its cosine similarity to the query, its text or caption."""

    id: str
    score: float
    text: object = None


class Model:
    """Encodes images and texts with one model's towers; made by :func:`load`.

    ``encode_image`` / ``encode_text`` return L2-normalised ``paddle.Tensor`` s ``[N, D]``;
    ``similarity`` the logits ``[N_images, N_texts]`` with the model's own scale.
    """

    def __init__(self, kind, encode_pixels, encode_ids, tokenizer, transform, embed_dim, logit_scale, device,
                 model_id=None, batch_size=16):
        self.kind = kind
        self._encode_pixels = encode_pixels
        self._encode_ids = encode_ids
        self.tokenizer = tokenizer
        self.transform = transform
        self.embed_dim = embed_dim
        self.logit_scale = logit_scale
        self.device = device
        self.model_id = model_id
        self.batch_size = batch_size

    def __repr__(self):
        return f"Model({self.kind}, {self.embed_dim}-d, logit_scale={self.logit_scale:.2f}, device={self.device})"

    def preprocess(self, image):
        """The model input (float32 ``[3, S, S]``) of one image of any accepted kind."""
        return self.transform(to_rgb(image))

    def encode_images(self, images, batch_size=None, progress=False):
        """Unit-length embeddings (numpy ``[N, D]``) of a list of images; decoded one batch at a time."""
        images = list(images)
        batch_size = batch_size or self.batch_size
        out = np.zeros((len(images), self.embed_dim), np.float32)
        bar = _progress(len(images), "image", progress)
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            out[start : start + len(chunk)] = self._encode_pixels(np.stack([self.preprocess(im) for im in chunk]))
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        return out

    def encode_texts(self, texts, batch_size=None, progress=False):
        """Unit-length embeddings (numpy ``[N, D]``) of a list of texts, batching texts of similar length."""
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"text {i} is a {type(text).__name__}, not a str")
        out = np.zeros((len(texts), self.embed_dim), np.float32)
        if not texts:
            return out
        ids = self.tokenizer.encode(texts)
        bar = _progress(len(texts), "text", progress)
        for rows in length_sorted_batches((ids != self.tokenizer.pad_id).sum(axis=1), batch_size or 4 * self.batch_size):
            out[rows] = self._encode_ids(ids[rows])
            if bar is not None:
                bar.update(len(rows))
        if bar is not None:
            bar.close()
        return out

    def encode_image(self, images, batch_size=None, progress=False):
        """``[N, D]`` tensor of one image or a list (paths, bytes, PIL images, RGB uint8 arrays, mixed)."""
        items, _ = _as_items(images, (str, os.PathLike, bytes, bytearray))
        return paddle.to_tensor(self.encode_images(items, batch_size, progress))

    def encode_text(self, texts, batch_size=None, progress=False):
        """``[N, D]`` tensor of one text or a list of texts."""
        items, _ = _as_items(texts, (str,))
        return paddle.to_tensor(self.encode_texts(items, batch_size, progress))

    def similarity(self, image_features, text_features):
        """``logit_scale * cos``: ``[N_images, N_texts]`` tensor; ``.softmax(-1)`` gives each image's text probabilities."""
        image = paddle.nn.functional.normalize(_as_tensor(image_features), axis=-1)
        text = paddle.nn.functional.normalize(_as_tensor(text_features), axis=-1)
        return self.logit_scale * paddle.matmul(image, text, transpose_y=True)


def _as_tensor(features):
    if isinstance(features, paddle.Tensor):
        return features.astype("float32")
    return paddle.to_tensor(np.asarray(features, np.float32))


def _dygraph_model(source, device, max_len, batch_size):
    config = _dygraph_config(source)
    if max_len is not None:
        config["Tokenizer"]["max_len"] = int(max_len)
    network = build_model(config["Arch"])
    load_pretrained(network, source.path)
    network.eval()
    place = paddle.CUDAPlace(0) if device == "gpu" else paddle.CPUPlace()
    network.to(device="gpu:0" if device == "gpu" else "cpu")

    @paddle.no_grad()
    def encode_pixels(pixels):
        return network.encode_image(paddle.to_tensor(pixels, place=place)).numpy()

    tokenizer = build_tokenizer(config)

    @paddle.no_grad()
    def encode_ids(ids):
        return network.encode_text(paddle.to_tensor(trim_padding(ids, tokenizer.pad_id), place=place)).numpy()

    return Model(
        "dygraph", encode_pixels, encode_ids, tokenizer, EvalTransform.from_config(config["Preprocess"]),
        int(network.embed_dim), float(network.logit_scale()), device, batch_size=batch_size,
    )


def _export_model(path, device, max_len, batch_size):
    exported = ExportedModel(path, PredictorOptions(device=device), max_len=max_len)
    return Model(
        "export", exported.encode_pixels, exported.encode_ids, exported.tokenizer, exported.transform,
        exported.embed_dim, exported.logit_scale, device, exported.model_id, batch_size,
    )


def load(source, config=None, device=None, max_len=None, batch_size=16):
    """A :class:`Model` from ``source``:

    - a training output folder (its ``config.yaml`` and latest checkpoint), or a checkpoint folder in it;
    - a ``.pdparams`` (ours or the official release), with ``config=`` (a yaml path or a loaded config)
      unless a training ``config.yaml`` lies beside it;
    - a PaddleNLP ``save_pretrained`` folder;
    - an export folder (``tools/export_model.py``; Paddle or ONNX).

    ``device``: ``cpu`` or ``gpu``; by default the GPU where this Paddle has one (an ONNX export runs on CPU).
    ``max_len`` caps the text length (default: the model's); ``batch_size`` images per call of the
    image tower (texts go four times as many).
    """
    found = resolve_source(source, config)
    if device is None:
        device = default_device()
        if found.kind == "export" and device == "gpu" and _export_format(found.path) == "onnx":
            device = "cpu"
    check_device(device)
    if found.kind == "export":
        return _export_model(found.path, device, max_len, batch_size)
    return _dygraph_model(found, device, max_len, batch_size)


def _export_format(folder):
    from .inference.deploy import read_deploy, runtime_of

    return runtime_of(read_deploy(folder))[0]


def _gallery_items(images, counter):
    """Image items from a folder of images, image files, or one pair file or folder of any format (captioned)."""
    paths = [os.fspath(images)] if isinstance(images, (str, os.PathLike)) else [os.fspath(p) for p in images]
    if len(paths) == 1 and not paths[0].lower().endswith(IMAGE_EXTENSIONS) and os.path.exists(paths[0]):
        if seen_format(paths[0], "test") in DESCRIPTIONS:
            return iter_pair_images(data_spec(paths[0]), counter)
    return iter_image_files(paths)


def build_gallery(model, images, output=None, batch_size=None, on_error="raise"):
    """An image :class:`~ernievil2.inference.index.Gallery` of ``images``: a folder of images, image files,
    or pairs in any format (an official TSV, a JSONL, a Chinese-CLIP folder's ``test`` split).

    Ids are the file paths (the pairs' image ids); the first caption of each image is kept as its text.
    ``output``: also save it there, with the captions' own gallery (``texts/``), as ``tools/build_index.py``
    does, for ``tools/serve.py``. ``on_error="skip"`` leaves out what does not decode.
    """
    counter = SkipCounter(on_error)
    image_gallery, text_gallery = build_galleries(
        model, _gallery_items(images, counter), batch_size or model.batch_size, counter, with_texts=output is not None
    )
    if output is not None:
        save_galleries(os.fspath(output), image_gallery, text_gallery)
    return image_gallery


def search(model, gallery, queries, k=5):
    """The ``k`` best :class:`Hit` s in ``gallery`` for one query (a text or an image), or a list of them per query."""
    items, one = _as_items(queries, (str, os.PathLike, bytes, bytearray))
    gallery.check_model(model.model_id, model.embed_dim)
    is_text = [isinstance(q, str) and not os.path.isfile(q) for q in items]
    if any(is_text) and not all(is_text):
        raise ValueError("queries must be all texts or all images")
    embeddings = model.encode_texts(items) if all(is_text) else model.encode_images(items)
    scores, positions = gallery.search(embeddings, k)
    hits = [
        [Hit(gallery.ids[p], float(s), gallery.text(p)) for s, p in zip(row_scores, row_positions) if p >= 0]
        for row_scores, row_positions in zip(scores, positions)
    ]
    return hits[0] if one else hits


__all__ = ["Hit", "Model", "ModelSourceError", "build_gallery", "load", "load_gallery", "search", "to_rgb"]
