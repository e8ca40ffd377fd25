"""The deploy config of an export folder: what a deployed model needs, and nothing from training.

An export folder holds::

    image/inference.json  image/inference.pdiparams   images [N, 3, S, S] float32 -> [N, D]
    text/inference.json   text/inference.pdiparams    input_ids [N, L] int64 -> [N, D]
    vocab.txt
    deploy.yaml

or, for the ONNX format, ``image/model.onnx`` and ``text/model.onnx`` (weights inside,
``params_file`` null) in place of the Paddle programs. ``runtime`` in ``deploy.yaml``
names the format and the precision (``paddle`` fp32 or bf16, ``onnx`` fp32 or int8);
the predictor reads it, so every export loads without further flags. Version 1
folders have no ``runtime``: they are Paddle fp32.

Both towers return L2-normalised embeddings. ``deploy.yaml`` is written last,
so a folder without it is an export that did not finish. It records the size
and SHA-256 of every other file, which is how a truncated or overwritten
weight file is caught before Paddle reads it.
"""
import hashlib
import os

import yaml

from ..files import atomic_text_file, file_digest
from .errors import ExportError

DEPLOY_FILE = "deploy.yaml"
FORMAT_VERSION = 2
# Version 1 is version 2 without ``runtime`` (always Paddle fp32).
READABLE_VERSIONS = (1, 2)
# Precisions each format can run on CPU. bf16 is applied by the predictor (oneDNN rewrites the
# fp32 program at load time); int8 is baked into the file by post-training quantisation.
RUNTIMES = {"paddle": ("fp32", "bf16"), "onnx": ("fp32", "int8")}
DEFAULT_RUNTIME = {"format": "paddle", "precision": "fp32"}
VOCAB_FILE = "vocab.txt"
TOWERS = ("image", "text")
# Only the official resize is implemented by EvalTransform (cv2 INTER_LINEAR).
SUPPORTED_INTERPOLATION = "linear"

REQUIRED_KEYS = {
    "": ("format_version", "embed_dim", "logit_scale", "image", "text", "files", "architecture", "source"),
    "image": ("model_file", "params_file", "input_name", "preprocess"),
    "image.preprocess": ("image_size", "resize_short", "mean", "std", "interpolation"),
    "text": ("model_file", "params_file", "input_name", "vocab_file", "max_len", "max_position_embeddings",
             "do_lower_case"),
}


def tower_files(tower, fmt="paddle"):
    """Relative paths of a tower's program and weights (an ONNX file holds both: weights None)."""
    if fmt == "onnx":
        return f"{tower}/model.onnx", None
    return f"{tower}/inference.json", f"{tower}/inference.pdiparams"


def check_runtime(fmt, precision, where="runtime"):
    """Raise :class:`ExportError` unless ``fmt`` can run ``precision``."""
    if fmt not in RUNTIMES:
        raise ExportError(f"{where}: format must be one of {tuple(RUNTIMES)}, got {fmt!r}")
    if precision not in RUNTIMES[fmt]:
        others = [f for f, precisions in RUNTIMES.items() if precision in precisions]
        hint = f"; {precision} is available with format {others[0]}" if others else ""
        raise ExportError(
            f"{where}: format {fmt} runs precision {' or '.join(RUNTIMES[fmt])}, not {precision!r}{hint}"
        )


def runtime_of(deploy):
    """``(format, precision)`` of an export."""
    runtime = deploy.get("runtime", DEFAULT_RUNTIME)
    return runtime["format"], runtime["precision"]


def model_id(deploy):
    """A short fingerprint of the exported weights, stored with galleries to catch model mix-ups.

    bf16 shares the fp32 files and so the fp32 galleries (their embeddings differ by bf16
    rounding only); an int8 file is another model.
    """
    weights = sorted(deploy[tower]["params_file"] or deploy[tower]["model_file"] for tower in TOWERS)
    digests = "".join(deploy["files"][path]["sha256"] for path in weights)
    return hashlib.sha256(digests.encode()).hexdigest()[:16]


def write_deploy(folder, deploy):
    path = os.path.join(folder, DEPLOY_FILE)
    with atomic_text_file(path) as f:
        yaml.safe_dump(deploy, f, allow_unicode=True, sort_keys=False)
    return path


def _lookup(deploy, dotted):
    node = deploy
    for part in filter(None, dotted.split(".")):
        node = node[part]
    return node


def check_deploy_keys(deploy, path):
    """Raise :class:`ExportError` naming the first missing key (by its dotted path)."""
    if not isinstance(deploy, dict):
        raise ExportError(f"{path}: expected a mapping, got {type(deploy).__name__}")
    for section, keys in REQUIRED_KEYS.items():
        node = _lookup(deploy, section)
        if not isinstance(node, dict):
            raise ExportError(f"{path}: {section} must be a mapping")
        for key in keys:
            if key not in node:
                raise ExportError(f"{path}: missing key {section + '.' if section else ''}{key}")
    if deploy["format_version"] not in READABLE_VERSIONS:
        raise ExportError(
            f"{path}: format_version {deploy['format_version']!r} is not supported (this code reads "
            f"{' and '.join(map(str, READABLE_VERSIONS))}); re-export the model with tools/export_model.py"
        )
    runtime = deploy.get("runtime", DEFAULT_RUNTIME)
    if not isinstance(runtime, dict) or set(runtime) != {"format", "precision"}:
        raise ExportError(f"{path}: runtime must be a mapping with format and precision, got {runtime!r}")
    check_runtime(runtime["format"], runtime["precision"], f"{path}: runtime")
    interpolation = deploy["image"]["preprocess"]["interpolation"]
    if interpolation != SUPPORTED_INTERPOLATION:
        raise ExportError(f"{path}: image.preprocess.interpolation {interpolation!r} is not supported; "
                          f"only {SUPPORTED_INTERPOLATION!r}")


def read_deploy(folder):
    """Read and check ``folder/deploy.yaml``; raises :class:`ExportError` with the reason."""
    if not os.path.isdir(folder):
        raise ExportError(f"export folder not found: {folder}")
    path = os.path.join(folder, DEPLOY_FILE)
    if not os.path.isfile(path):
        raise ExportError(
            f"{folder} is not a complete export: {DEPLOY_FILE} is missing "
            "(it is written last; re-run tools/export_model.py)"
        )
    with open(path, encoding="utf-8") as f:
        try:
            deploy = yaml.safe_load(f)
        except yaml.YAMLError as err:
            raise ExportError(f"{path}: cannot parse: {err}") from None
    check_deploy_keys(deploy, path)
    return deploy


def verify_files(folder, deploy):
    """Check that every file listed in the deploy config exists with the recorded size and SHA-256."""
    for relative, expected in deploy["files"].items():
        path = os.path.join(folder, relative)
        if not os.path.isfile(path):
            raise ExportError(f"{path} is missing from the export")
        size = os.path.getsize(path)
        if size != expected["bytes"]:
            raise ExportError(f"{path} is corrupt: {size} bytes, the export wrote {expected['bytes']}")
        found = file_digest(path)["sha256"]
        if found != expected["sha256"]:
            raise ExportError(
                f"{path} is corrupt: SHA-256 {found[:12]}..., the export wrote {expected['sha256'][:12]}..."
            )
