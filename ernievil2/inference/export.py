"""Dygraph dual encoder -> two Paddle Inference static graphs (or two ONNX files) plus their deploy config.

Each tower is traced with ``paddle.jit.to_static`` and saved with
``paddle.jit.save`` (Paddle 3 writes ``inference.json`` + ``inference.pdiparams``).
The batch axis is dynamic for both towers, and the sequence axis for the text
tower, so one export serves any batch size and any text length up to the
model's position table. The folder layout is described in :mod:`.deploy`.
The ONNX format converts those programs with paddle2onnx and, for int8,
quantises them with ONNX Runtime (:mod:`.onnx_export`).
"""
import datetime
import os
import shutil
import tempfile

import numpy as np
import paddle
import paddle.nn as nn
from paddle.static import InputSpec

from ..checkpoint import load_pretrained
from ..checkpoint.released import released_name
from ..models import build_model
from ..resource_files import resolve_resource
from .deploy import (
    DEPLOY_FILE,
    FORMAT_VERSION,
    SUPPORTED_INTERPOLATION,
    TOWERS,
    VOCAB_FILE,
    check_runtime,
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


def deploy_config(config, model, weights, files, fmt="paddle", precision="fp32"):
    """The deploy config: everything inference needs, taken from the training config and the model."""
    preprocess = config["Preprocess"]
    tokenizer = config["Tokenizer"]
    image_model, image_params = tower_files("image", fmt)
    text_model, text_params = tower_files("text", fmt)
    return {
        "format_version": FORMAT_VERSION,
        "runtime": {"format": fmt, "precision": precision},
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
            # A released model's name stays the name: its cache path differs from machine to machine.
            "weights": None if weights is None else (released_name(weights) or os.path.abspath(weights)),
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


def save_paddle_towers(model, config, folder):
    # Traced in eval mode, or dropout would be baked into the inference program.
    model.eval()
    specs = input_specs(config["Preprocess"]["image_size"])
    for tower, layer in (("image", ImageEmbedding(model)), ("text", TextEmbedding(model))):
        prefix = os.path.join(folder, tower_files(tower)[0][: -len(".json")])
        save_tower(layer, specs[tower], prefix)


def finish_export(folder, config, model, weights, fmt, precision):
    """The vocabulary and, last, ``deploy.yaml`` with the digest of every file; returns the deploy config."""
    shutil.copyfile(resolve_resource(config["Tokenizer"]["vocab_file"], config), os.path.join(folder, VOCAB_FILE))
    relatives = [path for tower in TOWERS for path in tower_files(tower, fmt) if path] + [VOCAB_FILE]
    files = {relative: file_digest(os.path.join(folder, relative)) for relative in relatives}
    deploy = deploy_config(config, model, weights, files, fmt, precision)
    write_deploy(folder, deploy)
    return deploy


def export_model(model, config, weights, output_dir, overwrite=False, fmt="paddle", precision="fp32",
                 calibration=None):
    """Export both towers of ``model`` (built from ``config``, loaded from ``weights``) to ``output_dir``.

    ``weights`` is recorded in the deploy config as the source checkpoint; ``None`` means random weights.
    ``fmt`` is ``paddle`` or ``onnx``; ``precision`` one its runtime runs (:data:`.deploy.RUNTIMES`).
    int8 needs ``calibration``: ``(images, texts)``, RGB uint8 arrays and strings from the user's data
    (:func:`.onnx_export.read_calibration`).

    Returns the deploy config, written last.
    """
    check_runtime(fmt, precision, "export")
    if precision == "int8" and not calibration:
        raise ExportError("int8 needs calibration data (--calib-data): images and captions of your own data")
    prepare_output(output_dir, overwrite)
    if fmt == "paddle":
        # bf16 files are the fp32 program: oneDNN converts it when the predictor loads.
        save_paddle_towers(model, config, output_dir)
        return finish_export(output_dir, config, model, weights, fmt, precision)
    from .onnx_export import convert_towers, quantize_export

    with tempfile.TemporaryDirectory() as staging:
        paddle_dir, fp32_dir = os.path.join(staging, "paddle"), os.path.join(staging, "fp32")
        save_paddle_towers(model, config, paddle_dir)
        if precision == "fp32":
            convert_towers(paddle_dir, output_dir)
            return finish_export(output_dir, config, model, weights, fmt, precision)
        convert_towers(paddle_dir, fp32_dir)
        finish_export(fp32_dir, config, model, weights, fmt, "fp32")
        quantize_export(fp32_dir, output_dir, calibration)
    return finish_export(output_dir, config, model, weights, fmt, precision)


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


def parity_check(model, exported, images=None, ids=None):
    """Largest absolute difference between the dygraph towers and the exported ones, per tower.

    By default on random inputs; an int8 export is checked on the user's data it was calibrated
    on (``images`` [N, 3, S, S] float32, ``ids`` [N, L] int64), since noise is not what it was tuned for.
    """
    if images is None or ids is None:
        images, ids = parity_inputs(exported.image_size, model.text_model.word_emb.weight.shape[0])
    with paddle.no_grad():
        image_ref = model.encode_image(paddle.to_tensor(images)).numpy()
        text_ref = model.encode_text(paddle.to_tensor(ids)).numpy()
    return {
        "image": float(np.abs(exported.encode_pixels(images) - image_ref).max()),
        "text": float(np.abs(exported.encode_ids(ids) - text_ref).max()),
    }


__all__ = ["load_model", "export_model", "parity_check", "deploy_config", "input_specs", "DEPLOY_FILE", "ExportError"]
