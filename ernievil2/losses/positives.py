"""Multiple positives: candidates of the row's own image (or caption) are not negatives.

A batch can hold two captions of one image, or one caption twice (for two
images). Plain InfoNCE treats every candidate but the row's own as a negative,
so it pushes apart pairs that belong together. ``Loss.positives`` changes
that, for every pair of the table and for the momentum queue:

- ``masked``: such candidates leave the softmax denominator; the target stays
  the row's own column;
- ``multi_positive``: the target is spread evenly over all the row's positives
  (its own column and every candidate sharing an identity with it).

Identities are int64 ids per row, one array per kind (``image``: the image id;
``caption``: a hash of the caption text); ``-1`` means unknown and matches
nothing. The row's own column is always a positive, whatever its ids.

Maths, for a row with logits ``z`` (``N`` candidates), own column ``y`` and
positive set ``P`` (``y`` in ``P``)::

    masked:          CE(z', y),   z'_j = -inf for j in P \\ {y}, else z_j
    multi_positive:  -Σ_{j∈P} log softmax(z)_j / |P|

With ``P = {y}`` both are the plain cross-entropy.
"""
from typing import NamedTuple, Optional

import paddle
import paddle.nn.functional as F

from ..registry import ConfigError
from ..validate import boolean, check_known_keys, one_of, require_keys

POSITIVE_MODES = ("masked", "multi_positive")
# The kinds of identity, with the keyword the loss takes and the batch array that holds them.
IDENTITY_INPUTS = {"image": ("image_ids", "image_id"), "caption": ("caption_ids", "caption_id")}


class PositivesConfig(NamedTuple):
    mode: str
    same_caption: bool = False

    @property
    def identities(self):
        """The id kinds that make a candidate a positive: always the image, the caption text optionally."""
        return ("image", "caption") if self.same_caption else ("image",)


SECTION = "positives"


def parse_positives(section):
    """Validate ``Loss.positives`` (``{mode, same_caption}``) into a :class:`PositivesConfig`; ``None`` stays off."""
    if section is None:
        return None
    if not isinstance(section, dict):
        raise ConfigError(SECTION, f"expected a mapping like {{mode: masked, same_caption: false}}, got {section!r}")
    check_known_keys(section, PositivesConfig._fields, SECTION)
    require_keys(section, ("mode",), SECTION)
    return PositivesConfig(
        mode=one_of(section["mode"], POSITIVE_MODES, f"{SECTION}.mode"),
        same_caption=boolean(section.get("same_caption", False), f"{SECTION}.same_caption"),
    )


class Positives(NamedTuple):
    """What the loss terms see: the mode and, per row, which candidates are positives."""

    mode: str
    in_batch: object  # [B, N] bool over the (gathered) candidates, the row's own column included
    queue: Optional[object] = None  # [B, K] bool over the queue's entries; None when the queue is not scored


def same_identity(row_ids, candidate_ids):
    """``[B, N]`` bool: candidate ``j`` has row ``i``'s id, and that id is known (>= 0)."""
    known = (row_ids >= 0).unsqueeze(1)
    return known & (row_ids.unsqueeze(1) == candidate_ids.unsqueeze(0))


def any_identity(row_ids, candidate_ids):
    """``[B, N]`` bool: candidates sharing any kind of id with the row (both dicts ``{kind: ids}``, same kinds)."""
    if sorted(row_ids) != sorted(candidate_ids):
        raise ValueError(f"row and candidate ids must have the same kinds, got {sorted(row_ids)} and {sorted(candidate_ids)}")
    masks = [same_identity(row_ids[kind], candidate_ids[kind]) for kind in sorted(row_ids)]
    out = masks[0]
    for mask in masks[1:]:
        out = out | mask
    return out


def own_columns(labels, candidates):
    """``[B, N]`` bool: each row's own column (its label)."""
    return F.one_hot(labels, candidates).astype("bool")


def positive_mask(row_ids, candidate_ids, labels):
    """``[B, N]`` bool: the row's own column and every candidate sharing an id with it."""
    return own_columns(labels, candidate_ids[next(iter(candidate_ids))].shape[0]) | any_identity(row_ids, candidate_ids)


def masked_logits(logits, labels, positives):
    """``logits`` with the row's positives other than its own column set to -inf."""
    others = positives & ~own_columns(labels, logits.shape[1])
    # where(), not adding -inf: its backward gives the dropped entries exactly zero.
    return paddle.where(others, paddle.full_like(logits, float("-inf")), logits)


def multi_positive_cross_entropy(logits, positives):
    """Mean over rows of the cross-entropy against targets spread evenly over each row's positives."""
    targets = positives.astype(logits.dtype)
    targets = targets / targets.sum(axis=1, keepdim=True)
    return -(targets * F.log_softmax(logits, axis=1)).sum(axis=1).mean()


def positive_accuracy(logits, positives):
    """Fraction of rows whose highest-scoring candidate is one of their positives."""
    best = paddle.argmax(logits, axis=1, keepdim=True)
    # take_along_axis has no bool kernel on CPU.
    return paddle.take_along_axis(positives.astype(logits.dtype), best, axis=1).mean()


def _check_mode(mode):
    if mode not in POSITIVE_MODES:
        raise ValueError(f"positives mode must be one of {', '.join(POSITIVE_MODES)}, got {mode!r}")


def accuracy_with_positives(logits, labels, positives, mode):
    """Top-1 accuracy as the mode scores it: a masked positive can never be the best candidate."""
    _check_mode(mode)
    if mode == "masked":
        logits = masked_logits(logits, labels, positives)
    return positive_accuracy(logits, positives)


def cross_entropy_with_positives(logits, labels, positives, mode):
    """``{"loss", "acc"}`` of one direction, ``mode`` masked or multi_positive (see the module docstring)."""
    _check_mode(mode)
    if mode == "masked":
        logits = masked_logits(logits, labels, positives)
        loss = F.cross_entropy(logits, labels)
    else:
        loss = multi_positive_cross_entropy(logits, positives)
    return {"loss": loss, "acc": positive_accuracy(logits, positives)}
