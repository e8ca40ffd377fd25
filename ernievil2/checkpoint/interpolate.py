"""Weight-space interpolation of two models of one architecture (WiSE-FT, Wortsman et al. 2022).

``alpha`` is the weight of the fine-tuned (``end``) model: 0 gives the start
(pretrained) model back, 1 the fine-tuned one, values between ensemble them in
weight space, which keeps much of what the start model knew at little cost to
what fine-tuning taught.
"""
import os

import numpy as np
import paddle

from . import MODEL_WEIGHTS, read_model_state
from .state import atomic_save, load_state_strict


def _is_float(value):
    if isinstance(value, paddle.Tensor):
        return paddle.is_floating_point(value)
    return np.issubdtype(np.asarray(value).dtype, np.floating)


def _equal(a, b):
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))


def check_alpha(alpha):
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"the mixing weight alpha must be in [0, 1], got {alpha!r}")


def interpolate_states(start, end, alpha):
    """``{key: (1 - alpha) * start[key] + alpha * end[key]}`` of two state dicts of one model.

    Floating tensors (Paddle) or arrays (numpy) are mixed, in ``end``'s type and dtype;
    integer ones (step counters, ids) must be equal on both sides and are taken as they
    are. At ``alpha`` 0 and 1 each side comes back bitwise (``-0.0`` and NaN included,
    which the formula alone would not keep). A key missing on one side, a shape that
    differs, or an integer value that differs is a ValueError naming the keys.
    """
    check_alpha(alpha)
    only_start, only_end = sorted(set(start) - set(end)), sorted(set(end) - set(start))
    if only_start or only_end:
        raise ValueError(
            "the two models have different keys: "
            + "; ".join(f"only in the {side}: {', '.join(keys)}" for side, keys in (("start", only_start), ("end", only_end)) if keys)
        )
    shapes = [f"{k} {list(start[k].shape)} vs {list(end[k].shape)}" for k in sorted(start) if list(start[k].shape) != list(end[k].shape)]
    if shapes:
        raise ValueError(f"the two models differ in shape: {'; '.join(shapes)}")
    mixed, differing = {}, []
    for key, value in end.items():
        other = start[key]
        if not (_is_float(value) and _is_float(other)):
            if not _equal(other, value):
                differing.append(key)
            mixed[key] = value
        elif alpha in (0.0, 1.0):
            mixed[key] = value if alpha == 1.0 else _like(other, value)
        else:
            mixed[key] = (1.0 - alpha) * _like(other, value) + alpha * value
    if differing:
        raise ValueError(f"integer values differ between the two models (they cannot be mixed): {', '.join(sorted(differing))}")
    return mixed


def _like(value, reference):
    """``value`` as the kind (Paddle tensor or numpy array) and dtype of ``reference``."""
    if isinstance(reference, paddle.Tensor):
        tensor = value if isinstance(value, paddle.Tensor) else paddle.to_tensor(np.asarray(value))
        return tensor if tensor.dtype == reference.dtype else tensor.astype(reference.dtype)
    array = value.numpy() if isinstance(value, paddle.Tensor) else np.asarray(value)
    return array.astype(reference.dtype, copy=False)


def interpolate_into(model, start_path, alpha, output_dir, log=print):
    """WiSE-FT at the end of training: ``model`` (the fine-tuned weights) mixed with the weights at
    ``start_path``, loaded into ``model`` and written atomically as ``<output_dir>/model.pdparams``,
    which :func:`~ernievil2.checkpoint.read_model_state` reads for the folder; returns its path."""
    mixed = interpolate_states(read_model_state(start_path), model.state_dict(), alpha)
    load_state_strict(model, mixed, source=f"the interpolation with {start_path}")
    path = os.path.join(output_dir, MODEL_WEIGHTS)
    atomic_save(model.state_dict(), path)
    log(f"final model: {alpha:g} x the fine-tuned weights + {1 - alpha:g} x {start_path} (Train.wise_ft_alpha) -> {path}")
    return path


def remove_final_model(output_dir, log=print):
    """Remove a ``<output_dir>/model.pdparams`` left by an earlier run: read_model_state prefers it to the
    checkpoints, so it would stand for this run's model until this run writes its own (or for good)."""
    path = os.path.join(output_dir, MODEL_WEIGHTS)
    if os.path.isfile(path):
        os.remove(path)
        log(f"removed {path}, an earlier run's final model (eval, export and infer would have read it instead of this run's)")
