"""``Loss`` section -> loss layer, with validation that names the key."""
import copy

from ..registry import ConfigError, did_you_mean
from ..validate import boolean, check_known_keys, positive_number
from .momentum import parse_momentum_queue
from .multiview import MultiViewContrastiveLoss
from .positives import parse_positives
from .terms import LOSS_TERMS, parse_view_pairs

LOSS_NAMES = ("MultiViewContrastive",)
TEMPERATURE_KEYS = {"init": 0.07, "learnable": True, "max_logit_scale": 100.0}
LOSS_KEYS = ("name", "temperature", "pairs", "momentum_queue", "terms", "positives")


def _located(err, prefix):
    message = str(err)
    key, _, rest = message.partition(": ")
    return ConfigError(f"{prefix}.{key}", rest or message)


def check_temperature(section):
    """Defaults filled in; unknown keys and bad values are ConfigErrors naming ``Loss.temperature.<key>``."""
    section = {} if section is None else section
    if not isinstance(section, dict):
        raise ConfigError("Loss.temperature", f"expected a mapping like {TEMPERATURE_KEYS}, got {section!r}")
    check_known_keys(section, TEMPERATURE_KEYS, "Loss.temperature")
    merged = {**TEMPERATURE_KEYS, **section}
    boolean(merged["learnable"], "Loss.temperature.learnable")
    for key in ("init", "max_logit_scale"):
        positive_number(merged[key], f"Loss.temperature.{key}")
    if 1.0 / merged["init"] > merged["max_logit_scale"]:
        raise ConfigError("Loss.temperature.init", f"1/init = {1 / merged['init']:.1f} exceeds max_logit_scale {merged['max_logit_scale']}")
    return merged


def check_loss_config(section, global_batch=1):
    """Validate a ``Loss`` section; returns the parsed pairs.

    The terms are built once to check their options; ``global_batch`` stands in for the
    trainer's (the config alone does not know the number of ranks).
    """
    if not isinstance(section, dict):
        raise ConfigError("Loss", f"expected a mapping, got {section!r}")
    check_known_keys(section, LOSS_KEYS, "Loss")
    name = section.get("name")
    if name not in LOSS_NAMES:
        raise ConfigError("Loss.name", f"unknown loss {name!r}; known: {', '.join(LOSS_NAMES)}" + did_you_mean(name, LOSS_NAMES))
    check_temperature(section.get("temperature"))
    terms = build_terms(section.get("terms"), global_batch)
    try:
        positives = parse_positives(section.get("positives"))
        queue = None if section.get("momentum_queue") is None else parse_momentum_queue(section["momentum_queue"])
        if positives is not None and queue is not None and queue.mask_same_image:
            raise ConfigError(
                "momentum_queue.mask_same_image",
                "Loss.positives already decides the queue's entries of the row's own image; drop mask_same_image",
            )
        # Another term may carry the loss alone: the brivl queue, or a term of Loss.terms (sigmoid).
        return parse_view_pairs(section.get("pairs", []), allow_empty=bool(terms) or (queue is not None and queue.mode == "brivl"))
    except ValueError as err:
        raise _located(err, "Loss") from None


def build_terms(entries, global_batch=None):
    """The terms of ``Loss.terms``, a list of ``{name: <registered term>, **options}``.

    ``global_batch`` (rows a step's loss sees, over micro-batches and ranks) goes to the terms that take it.
    """
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise ConfigError("Loss.terms", f"expected a list of {{name: ..., ...}}, got {entries!r}")
    terms = []
    for index, entry in enumerate(entries):
        key = f"Loss.terms[{index}]"
        try:
            terms.append(LOSS_TERMS.build(entry, key, context={"global_batch": global_batch} if global_batch else None))
        except ConfigError:
            raise
        except ValueError as err:
            raise _located(err, key) from None
    return terms


def build_loss(section, rank=0, world_size=1, embed_dim=None, global_batch=None):
    """The loss layer; ``embed_dim`` (the model's) sizes the momentum queue when one is configured.

    ``global_batch``: the rows one step's loss sees (per-rank batch x micro-batches x ranks).
    """
    section = copy.deepcopy(section)
    pairs = check_loss_config(section)
    queue = section.get("momentum_queue")
    return MultiViewContrastiveLoss(
        [list(p) for p in pairs],
        rank=rank,
        world_size=world_size,
        momentum_queue=queue,
        embed_dim=embed_dim if queue is not None else None,
        terms=build_terms(section.get("terms"), global_batch),
        positives=section.get("positives"),
    )
