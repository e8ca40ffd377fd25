"""Dygraph dual encoder -> two Paddle Inference static graphs plus their deploy config.

Each tower is traced with ``paddle.jit.to_static`` and saved with
``paddle.jit.save`` (Paddle 3 writes ``inference.json`` + ``inference.pdiparams``).
The batch axis is dynamic for both towers, and the sequence axis for the text
tower, so one export serves any batch size and any text length up to the
model's position table. The folder layout is described in :mod:`.deploy`.
"""
import datetime
import os
import shutil

import numpy as np
import paddle
import paddle.nn as nn
from paddle.static import InputSpec

from ..checkpoint import load_pretrained
from ..resource_files import resolve_resource
from ..models import build_model
from .deploy import (
    DEPLOY_FILE,
    FORMAT_VERSION,
    SUPPORTED_INTERPOLATION,
    VOCAB_FILE,
    file_digest,
    tower_files,
    write_deploy,
)
from .errors import ExportError

IMAGE_INPUT = "images"
TEXT_INPUT = "input_ids"


class ImageEmbedding(nn.Layer):
    """The traced image entry point: images -> L2-normalised embeddings."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        return self.model.encode_image(images)


class TextEmbedding(nn.Layer):
    """The traced text entry point: token ids -> L2-normalised embeddings."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model.encode_text(input_ids)


def input_specs(image_size):
    """Dynamic batch for both towers; dynamic sequence length for text."""
    return {
        "image": InputSpec([None, 3, image_size, image_size], "float32", name=IMAGE_INPUT),
        "text": InputSpec([None, None], "int64", name=TEXT_INPUT),
    }


def save_tower(layer, spec, prefix):
    """Trace ``layer`` for ``spec`` and write ``prefix.json`` + ``prefix.pdiparams``."""
    static = paddle.jit.to_static(layer, input_spec=[spec], full_graph=True)
    paddle.jit.save(static, prefix)


def count_parameters(layer):
    return int(sum(p.size for p in layer.parameters()))


def deploy_config(config, model, weights, files):
    """The deploy config: everything inference needs, taken from the training config and the model."""
    preprocess = config["Preprocess"]
    tokenizer = config["Tokenizer"]
    image_model, image_params = tower_files("image")
    text_model, text_params = tower_files("text")
    return {
        "format_version": FORMAT_VERSION,
        "embed_dim": int(model.embed_dim),
        "logit_scale": float(model.logit_scale()),
        "image": {
            "model_file": image_model,
            "params_file": image_params,
            "input_name": IMAGE_INPUT,
            "preprocess": {
                "image_size": int(preprocess["image_size"]),
                "resize_short": int(preprocess["resize_short"]),
                "mean": [float(v) for v in preprocess["mean"]],
                "std": [float(v) for v in preprocess["std"]],
                "interpolation": SUPPORTED_INTERPOLATION,
                "channel_order": "RGB",
                "layout": "CHW",
            },
        },
        "text": {
            "model_file": text_model,
            "params_file": text_params,
            "input_name": TEXT_INPUT,
            "vocab_file": VOCAB_FILE,
            "max_len": int(tokenizer["max_len"]),
            "max_position_embeddings": int(model.text_model.max_position_embeddings),
            "do_lower_case": bool(tokenizer["do_lower_case"]),
        },
        "files": files,
        "architecture": {
            "name": config["Arch"]["name"],
            "image_tower": dict(config["Arch"]["image_tower"]),
            "text_tower": dict(config["Arch"]["text_tower"]),
            "parameters": {"image": count_parameters(model.visual), "text": count_parameters(model.text_model)},
        },
        "source": {
            # None: random initialisation (benchmarks, tests).
            "weights": None if weights is None else os.path.abspath(weights),
            "config": config.get("_source_"),
            "paddle_version": paddle.__version__,
            "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
    }


def prepare_output(output_dir, overwrite):
    """An empty output folder; an existing non-empty one only with ``overwrite``."""
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        if not overwrite:
            raise ExportError(f"{output_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
        shutil.rmtree(output_dir)
    os.makedirs(output_dir, exist_ok=True)


def load_model(config, weights):
    """The dual encoder of ``config`` with ``weights``, in eval mode.

    ``weights`` is anything :func:`ernievil2.checkpoint.load_pretrained` reads:
    an official ``.pdparams``, a PaddleNLP folder, or a training checkpoint of ours.
    """
    model = build_model(config["Arch"])
    load_pretrained(model, weights)
    model.eval()
    return model


def export_model(model, config, weights, output_dir, overwrite=False):
    """Export both towers of ``model`` (built from ``config``, loaded from ``weights``) to ``output_dir``.

    ``weights`` is recorded in the deploy config as the source checkpoint; ``None`` means random weights.

    Returns the deploy config, written last.
    """
    # Traced in eval mode, or dropout would be baked into the inference program.
    model.eval()
    vocab = resolve_resource(config["Tokenizer"]["vocab_file"], config)
    prepare_output(output_dir, overwrite)
    specs = input_specs(config["Preprocess"]["image_size"])
    for tower, layer in (("image", ImageEmbedding(model)), ("text", TextEmbedding(model))):
        prefix = os.path.join(output_dir, tower_files(tower)[0][: -len(".json")])
        save_tower(layer, specs[tower], prefix)
    shutil.copyfile(vocab, os.path.join(output_dir, VOCAB_FILE))
    files = {
        relative: file_digest(os.path.join(output_dir, relative))
        for tower in ("image", "text")
        for relative in tower_files(tower)
    }
    files[VOCAB_FILE] = file_digest(os.path.join(output_dir, VOCAB_FILE))
    deploy = deploy_config(config, model, weights, files)
    write_deploy(output_dir, deploy)
    return deploy


def parity_inputs(image_size, vocab_size, seed=0):
    """A small image batch, and token ids of two lengths padded into one batch."""
    rng = np.random.RandomState(seed)
    images = rng.randn(2, 3, image_size, image_size).astype(np.float32)
    ids = np.zeros((2, 12), np.int64)
    ids[:, 0] = 1
    ids[0, 1:11] = rng.randint(4, vocab_size, 10)
    ids[0, 11] = 2
    ids[1, 1:5] = rng.randint(4, vocab_size, 4)
    ids[1, 5] = 2
    return images, ids


def parity_check(model, exported):
    """Largest absolute difference between the dygraph towers and the exported ones, per tower."""
    images, ids = parity_inputs(exported.image_size, model.text_model.word_emb.weight.shape[0])
    with paddle.no_grad():
        image_ref = model.encode_image(paddle.to_tensor(images)).numpy()
        text_ref = model.encode_text(paddle.to_tensor(ids)).numpy()
    return {
        "image": float(np.abs(exported.encode_pixels(images) - image_ref).max()),
        "text": float(np.abs(exported.encode_ids(ids) - text_ref).max()),
    }


__all__ = ["load_model", "export_model", "parity_check", "deploy_config", "input_specs", "DEPLOY_FILE", "ExportError"]
