"""AdamW with per-tower settings, layer-wise lr decay, tower and layer locking, warmup + cosine.

What carries weight decay and how a tower's layers group is the tower's own
answer (``ernievil2/models/tower.py``); this module only turns the answers and
the ``Optimizer`` section into parameter groups.
"""
import math

import paddle

from ..models.tower import TowerCapabilityError, capability, layer_scales
from ..registry import ConfigError, did_you_mean

# Keys of Optimizer.image / Optimizer.text; null takes the section's own value.
TOWER_KEYS = ("lr", "weight_decay", "layer_decay")


def lr_at(step, base_lr, warmup_steps, total_steps, min_lr_ratio=0.0):
    """Linear warmup from 0 to ``base_lr`` over ``warmup_steps``, then cosine down to ``min_lr_ratio * base_lr``."""
    assert 0 <= step <= total_steps, f"step {step} outside [0, {total_steps}]"
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return base_lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def tower_settings(section, kind):
    """``{lr, weight_decay, layer_decay}`` of one tower: its own values, else the section's."""
    own = section.get(kind) or {}
    return {key: section[key] if own.get(key) is None else own[key] for key in TOWER_KEYS}


def freeze_towers(model, towers):
    """Stop gradients of whole towers (LiT-style locking); returns the frozen parameter names."""
    frozen = []
    known = model.towers()
    for kind in towers:
        if kind not in known:
            raise ConfigError(
                "Optimizer.freeze", f"unknown tower {kind!r}; use {' or '.join(map(repr, known))}" + did_you_mean(kind, known)
            )
        for name, param in known[kind].named_parameters():
            param.stop_gradient = True
            frozen.append(model.tower_prefix(kind) + name)
    return frozen


def lock_layers(model, section):
    """Train only the last ``Optimizer.<tower>.unlocked_layers`` layer groups of each tower that sets it
    (its ``layer_groups()``: the head last, the embeddings first; 0 locks the whole tower); returns the
    locked parameter names."""
    locked = []
    for kind, tower in model.towers().items():
        count = (section.get(kind) or {}).get("unlocked_layers")
        if count is None:
            continue
        key = f"Optimizer.{kind}.unlocked_layers"
        try:
            groups = capability(tower, "layer_groups", "unlock its layers by count")()
        except TowerCapabilityError as err:
            raise ConfigError(key, f"{err}; leave it null (or lock the whole tower with Optimizer.freeze)") from None
        if count > len(groups):
            raise ConfigError(key, f"{count} is more than the {len(groups)} layer groups of the {type(tower).__name__} tower "
                              "(embeddings, blocks, head); null trains them all")
        params = dict(tower.named_parameters())
        prefix = model.tower_prefix(kind)
        for group in groups[: len(groups) - count]:
            for name in group:
                params[name].stop_gradient = True
                locked.append(prefix + name)
    return locked


def param_settings(model, section):
    """``{full parameter name: (lr multiplier, weight decay)}`` of every trainable parameter.

    The multiplier is the tower's lr over ``Optimizer.lr`` times its layer scale;
    parameters outside the towers (the temperature) keep 1 and the section's decay.
    """
    no_decay = model.no_weight_decay()
    settings = {}
    for kind, tower in model.towers().items():
        own = tower_settings(section, kind)
        try:
            scales = layer_scales(tower, own["layer_decay"])
        except TowerCapabilityError as err:
            raise ConfigError(f"Optimizer.{kind}.layer_decay", f"{err}; leave it at 1.0") from None
        prefix = model.tower_prefix(kind)
        for name, scale in scales.items():
            settings[prefix + name] = (own["lr"] / section["lr"] * scale, own["weight_decay"])
    for name, param in model.named_parameters():
        if not param.stop_gradient:
            settings.setdefault(name, (1.0, section["weight_decay"]))
    return {name: (lr, 0.0 if name in no_decay else decay) for name, (lr, decay) in settings.items()}


def param_groups(model, section):
    """Parameter groups keyed by (lr multiplier, decay), in that order; frozen parameters are left out."""
    settings = param_settings(model, section)
    groups = {}
    for name, param in model.named_parameters():
        if name in settings:
            groups.setdefault(settings[name], []).append(param)
    return [{"params": params, "learning_rate": lr, "weight_decay": decay} for (lr, decay), params in sorted(groups.items(), key=lambda kv: kv[0])]


def build_optimizer(model, section, loss=None):
    """AdamW over ``model``'s trainable parameters from the ``Optimizer`` section.

    ``loss``: a loss layer whose own parameters (the sigmoid term's scale and
    bias) train too, at the base lr and without weight decay, like the temperature.
    """
    freeze_towers(model, section["freeze"])
    lock_layers(model, section)
    groups = param_groups(model, section)
    loss_params = [] if loss is None else [p for p in loss.parameters() if not p.stop_gradient]
    if loss_params:
        groups.append({"params": loss_params, "learning_rate": 1.0, "weight_decay": 0.0})
    if not groups:
        raise ValueError("Optimizer: every parameter is frozen; nothing to train")
    clip = paddle.nn.ClipGradByGlobalNorm(section["grad_clip"]) if section["grad_clip"] else None
    return paddle.optimizer.AdamW(
        learning_rate=section["lr"],
        parameters=groups,
        beta1=section["beta1"],
        beta2=section["beta2"],
        epsilon=section["epsilon"],
        weight_decay=section["weight_decay"],
        grad_clip=clip,
    )
