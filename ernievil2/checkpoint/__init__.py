"""Checkpoints: the official/our layout, PaddleNLP's, strict loading, atomic writes."""
import os

from .paddlenlp import paddlenlp_to_official, read_paddlenlp_dir
from .released import resolve_weights
from .state import CheckpointMismatchError, atomic_save, load_state_strict, read_state

# A training checkpoint folder (ours) keeps the weights under this name.
MODEL_WEIGHTS = "model.pdparams"


def read_model_state(path):
    """Our/official-layout state dict from any supported source.

    Accepts: an official ``.pdparams`` (e.g. ``OPEN_ERNIE_VIL2_BASE_ViT.pdparams``)
    or ours; a PaddleNLP ``save_pretrained`` folder or its ``model_state.pdparams``;
    a training checkpoint folder of ours, or a training output folder (its latest checkpoint), or
    the ``latest`` pointer file of its ``checkpoints/`` (the checkpoint it names); a released
    model's name (``ernie_vil-2.0-base-zh``: downloaded into the cache on first use, see ``released.py``).
    """
    path = resolve_weights(path)
    if os.path.basename(path) == "latest" and os.path.isfile(path):
        path = latest_checkpoint(os.path.dirname(path)) or path
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, MODEL_WEIGHTS)):
            return read_state(os.path.join(path, MODEL_WEIGHTS))
        latest = latest_checkpoint(path)
        if latest:
            return read_state(os.path.join(latest, MODEL_WEIGHTS))
        return read_paddlenlp_dir(path)[1]
    state = read_state(path)
    if any(k.startswith("vision_model.") for k in state):
        return paddlenlp_to_official(state)
    return state


def latest_checkpoint(path):
    """The newest checkpoint under a training output folder (or its ``checkpoints/``), else None."""
    for root in (os.path.join(path, "checkpoints"), path):
        pointer = os.path.join(root, "latest")
        if os.path.isfile(pointer):
            with open(pointer) as f:
                folder = os.path.join(root, f.read().strip())
            if os.path.isfile(os.path.join(folder, MODEL_WEIGHTS)):
                return folder
    return None


def load_pretrained(model, path, allow_missing=()):
    """Load weights into ``model``, failing with every missing/unexpected/mis-shaped key named."""
    load_state_strict(model, read_model_state(path), source=path, allow_missing=allow_missing)


__all__ = [
    "CheckpointMismatchError",
    "atomic_save",
    "load_pretrained",
    "load_state_strict",
    "read_model_state",
    "MODEL_WEIGHTS",
]
