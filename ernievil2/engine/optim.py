"""AdamW with the usual exclusions, layer-wise lr decay, tower freezing, warmup + cosine."""
import math
import re

import paddle

TOWERS = {"image": "visual.", "text": "text_model."}
# Biases, norms, embeddings and the temperature carry no weight decay.
NO_DECAY = re.compile(r"(\.bias$|norm|\.ln\d?\.|(word|pos)_emb\.|class_embedding|positional_embedding|temperature_b|(^|[._])bn)")
_BLOCK = re.compile(r"^(visual\.blocks|text_model\.encoder_stack\.block)\.(\d+)\.")


def lr_at(step, base_lr, warmup_steps, total_steps, min_lr_ratio=0.0):
    """Linear warmup from 0 to ``base_lr`` over ``warmup_steps``, then cosine down to ``min_lr_ratio * base_lr``."""
    assert 0 <= step <= total_steps, f"step {step} outside [0, {total_steps}]"
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return base_lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def tower_depths(model):
    """Number of blocks per tower prefix, for layer-wise decay (0 for towers without blocks)."""
    depths = {}
    for name, _ in model.named_parameters():
        match = _BLOCK.match(name)
        if match:
            depths[match.group(1)] = max(depths.get(match.group(1), 0), int(match.group(2)) + 1)
    return depths


def layer_scale(name, depths, layer_decay):
    """lr multiplier: ``layer_decay ** (depth + 1 - layer)``; embeddings are layer 0, heads depth + 1."""
    if layer_decay == 1.0:
        return 1.0
    match = _BLOCK.match(name)
    if match:
        depth = depths[match.group(1)]
        return layer_decay ** (depth - int(match.group(2)))
    prefix = next((p for p in depths if name.startswith(p.split(".")[0] + ".")), None)
    if prefix is None:
        return 1.0  # the temperature
    embedding = any(k in name for k in ("patch_embed", "class_embedding", "positional_embedding", "norm_pre", "word_emb", "pos_emb", "text_model.ln."))
    return layer_decay ** (depths[prefix] + 1) if embedding else 1.0


def freeze_towers(model, towers):
    """Stop gradients of whole towers (LiT-style locking); returns the frozen parameter names."""
    frozen = []
    for tower in towers:
        if tower not in TOWERS:
            raise ValueError(f"Optimizer.freeze: unknown tower {tower!r}; use 'image' or 'text'")
        for name, param in model.named_parameters():
            if name.startswith(TOWERS[tower]):
                param.stop_gradient = True
                frozen.append(name)
    return frozen


def param_groups(model, weight_decay, layer_decay=1.0):
    """Parameter groups keyed by (lr multiplier, decay); frozen parameters are left out."""
    depths = tower_depths(model)
    groups = {}
    for name, param in model.named_parameters():
        if param.stop_gradient:
            continue
        decay = 0.0 if NO_DECAY.search(name) else weight_decay
        scale = layer_scale(name, depths, layer_decay)
        groups.setdefault((scale, decay), []).append(param)
    return [{"params": params, "learning_rate": scale, "weight_decay": decay} for (scale, decay), params in sorted(groups.items(), key=lambda kv: kv[0])]


def build_optimizer(model, section):
    """AdamW over ``model``'s trainable parameters from the ``Optimizer`` section."""
    freeze_towers(model, section["freeze"])
    groups = param_groups(model, section["weight_decay"], section["layer_decay"])
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
