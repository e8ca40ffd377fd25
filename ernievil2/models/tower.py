"""What the trainer asks of a tower, after timm's model interface.

A tower is a ``paddle.nn.Layer`` with an ``out_dim`` (the feature width) whose
``forward`` maps a batch (images, or text ids) to ``[B, out_dim]`` features.
Beyond that it says for itself, by optional methods (names are the tower's own
parameter names, without the ``visual.`` / ``text_model.`` prefix):

- ``no_weight_decay()``: the parameters that carry no weight decay. A tower
  without it gets :func:`norms_and_biases`.
- ``layer_groups()``: its parameter names in groups from the input (group 0,
  the embeddings) to the output (the last group, the head), for layer-wise
  learning-rate decay. Every trainable parameter is in exactly one group.
- ``set_grad_checkpointing(enable=True)``: recompute its blocks in backward.
- ``forward_patch_dropout(images, keep)`` (image towers): the features of
  ``images`` seen through a random ``round(N * keep)`` of each image's N patches,
  ``0 < keep <= 1``, in training mode; all of them in eval mode (FLIP's patch
  dropout, ``Train.patch_keep``). A tower of patch tokens (the ViT) can; a
  convolutional one cannot.

A tower without ``layer_groups``, ``set_grad_checkpointing`` or ``forward_patch_dropout`` cannot be
trained with the option that needs it; :func:`capability` turns that into an
error when the model is built, never a silent no-op.
"""
import paddle.nn as nn

# Layers whose every parameter (scale and shift) is exempt from weight decay.
NORM_LAYERS = (nn.LayerNorm, nn.BatchNorm, nn.BatchNorm1D, nn.BatchNorm2D, nn.BatchNorm3D, nn.GroupNorm)


class TowerCapabilityError(ValueError):
    """A tower lacks a method that a training option needs."""


def capability(tower, method, purpose):
    """``tower``'s bound ``method``, or a :class:`TowerCapabilityError` saying what it is needed for."""
    bound = getattr(tower, method, None)
    if not callable(bound):
        raise TowerCapabilityError(f"the {type(tower).__name__} tower has no {method}(), so it cannot {purpose}")
    return bound


def norms_and_biases(layer):
    """Names of every bias and of every parameter of a normalisation layer."""
    names = set()
    for prefix, sublayer in layer.named_sublayers(include_self=True):
        is_norm = isinstance(sublayer, NORM_LAYERS)
        for name, _ in sublayer.named_parameters(include_sublayers=False):
            if is_norm or name == "bias":
                names.add(f"{prefix}.{name}" if prefix else name)
    return names


def no_weight_decay(tower):
    """The names ``tower`` exempts from weight decay (biases and norms when it does not say)."""
    declared = getattr(tower, "no_weight_decay", None)
    return set(declared()) if callable(declared) else norms_and_biases(tower)


def groups_by_prefix(layer, prefix_groups):
    """``layer``'s parameter names grouped by name prefix: one list per tuple of prefixes, in order."""
    names = [name for name, _ in layer.named_parameters()]
    return [[name for name in names if name.startswith(prefixes)] for prefixes in prefix_groups]


def layer_scales(tower, layer_decay):
    """lr multiplier per parameter name: ``layer_decay ** (last group - group)``, so the head keeps 1.

    Raises :class:`TowerCapabilityError` when ``layer_decay`` is not 1 and the
    tower has no ``layer_groups``, and ``ValueError`` when its groups leave a
    trainable parameter out or name one twice.
    """
    names = [name for name, param in tower.named_parameters() if not param.stop_gradient]
    if layer_decay == 1.0 or not names:
        return dict.fromkeys(names, 1.0)
    groups = capability(tower, "layer_groups", "decay its learning rate by layer")()
    scales = {}
    for index, group in enumerate(groups):
        for name in group:
            if name in scales:
                raise ValueError(f"{type(tower).__name__}.layer_groups() puts {name!r} in two groups")
            scales[name] = layer_decay ** (len(groups) - 1 - index)
    left_out = [name for name in names if name not in scales]
    if left_out:
        raise ValueError(f"{type(tower).__name__}.layer_groups() leaves out {left_out[:5]}")
    # Locked layers (Optimizer.<tower>.unlocked_layers) keep their place in the decay, but no lr.
    return {name: scales[name] for name in names}
