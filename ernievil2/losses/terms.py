"""Loss terms: each reads some views and adds a weighted loss to the total.

A term is an object with ``views`` (the views it reads), ``gathered_views``
(those it wants from every rank, with gradient) and ``__call__(inputs)``
returning a dict of tensors, ``loss`` (its weighted contribution) among them,
the rest logged as they are. :class:`LossInputs` is what every term gets.

Two terms are built in: :class:`InfoNCEPairs`, the table of view pairs
(``Loss.pairs``), and :class:`MomentumQueueTerm`, the BriVL queue
(``Loss.momentum_queue``); both honour ``Loss.positives`` (candidates of the
row's own image or caption are not negatives, ``positives.py``). Further terms are listed under ``Loss.terms`` as
``{name: ..., **options}`` and built from :data:`LOSS_TERMS`; a term that
scores view pairs is one function ``pair_loss(a, b, logit_scale, a_all,
b_all, rank) -> scalar`` made a builder by :func:`pairwise_term`.
"""
import numbers
from typing import NamedTuple, Optional

import paddle
import paddle.nn.functional as F

from ..registry import Registry, did_you_mean
from ..validate import is_real_number
from ..views import KEY_VIEWS, KNOWN_VIEWS, VIEW_MODALITY
from .contrastive import symmetric_info_nce
from .momentum import extra_negative_info_nce, queue_info_nce


class ViewPair(NamedTuple):
    view_a: str
    view_b: str
    weight: float

    @property
    def name(self):
        return f"{self.view_a}-{self.view_b}"


class QueueState(NamedTuple):
    """The momentum queue as this step sees it."""

    queue: object  # CrossModalQueue
    config: object  # MomentumQueueConfig
    share: float  # the queue's share of the softmax denominator (0: not used yet)
    mask: Optional[object]  # [B, size] bool, queue entries of the query's own image


class LossInputs(NamedTuple):
    local: dict  # view -> this rank's rows, L2-normalised
    gathered: dict  # view -> every rank's rows, with gradient (empty on one process)
    logit_scale: object
    rank: int  # the rank whose rows ``local`` holds, among ``gathered``
    queue: Optional[QueueState] = None
    keys: Optional[dict] = None  # {"image", "text"}: the momentum copy's features
    positives: Optional[object] = None  # positives.Positives: candidates of the row's own image/caption


def _check_view(where, view):
    if not isinstance(view, str):
        raise ValueError(f"{where}: a view name must be a string, got {view!r}")
    if view not in KNOWN_VIEWS:
        raise ValueError(f"{where}: unknown view {view!r}; known: {', '.join(KNOWN_VIEWS)}" + did_you_mean(view, KNOWN_VIEWS))


def _check_weight(where, weight):
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
        raise ValueError(f"{where}: weight must be a number, got {weight!r} ({type(weight).__name__})")
    if not (is_real_number(weight) and weight > 0):
        raise ValueError(f"{where}: weight must be a positive finite number, got {weight!r}")


def parse_view_pairs(entries, allow_empty=False):
    """Validate a ``pairs`` table and return it as a tuple of :class:`ViewPair`.

    Errors are ``ValueError`` naming ``pairs[i]`` and the offending value, for
    the config loader to prefix with the section's key path. An empty table
    is allowed only where another term carries the loss (the brivl queue).
    """
    if not isinstance(entries, (list, tuple)) or not (entries or allow_empty):
        raise ValueError(f"pairs: expected a non-empty list of [view_a, view_b, weight], got {entries!r}")
    seen = {}
    pairs = []
    for index, entry in enumerate(entries):
        where = f"pairs[{index}]"
        if not isinstance(entry, (list, tuple)) or len(entry) != 3:
            raise ValueError(f"{where}: expected [view_a, view_b, weight], got {entry!r}")
        view_a, view_b, weight = entry
        _check_view(where, view_a)
        _check_view(where, view_b)
        if view_a == view_b:
            raise ValueError(f"{where}: view {view_a!r} is paired with itself")
        _check_weight(where, weight)
        # The loss is symmetric, so [b, a] repeats [a, b].
        key = frozenset((view_a, view_b))
        if key in seen:
            raise ValueError(f"{where}: [{view_a}, {view_b}] duplicates pairs[{seen[key]}]")
        seen[key] = index
        pairs.append(ViewPair(view_a, view_b, float(weight)))
    return tuple(pairs)


def views_of(pairs):
    return frozenset(v for pair in pairs for v in (pair.view_a, pair.view_b))


class InfoNCEPairs:
    """``sum(weight * symmetric InfoNCE)`` over a table of view pairs; logs ``loss/<a>-<b>`` and ``acc/<a>-<b>``.

    With a momentum queue in extra-negatives mode, each direction also scores
    the queue's entries of the other view's modality.
    """

    def __init__(self, pairs, allow_empty=False):
        """``allow_empty``: an empty table, where the brivl queue term carries the loss."""
        self.pairs = parse_view_pairs(pairs, allow_empty)
        self.views = self.gathered_views = views_of(self.pairs)

    def __call__(self, inputs):
        queue = inputs.queue
        with_queue = queue is not None and queue.share > 0 and queue.config.extra_negatives
        out = {}
        total = 0.0
        for pair in self.pairs:
            terms = self._with_queue(inputs, pair) if with_queue else self._plain(inputs, pair)
            out[f"loss/{pair.name}"] = terms["loss"]
            out[f"acc/{pair.name}"] = (terms["acc_a2b"] + terms["acc_b2a"]) / 2
            total = total + pair.weight * terms["loss"]
        out["loss"] = total
        return out

    @staticmethod
    def _plain(inputs, pair):
        local, gathered = inputs.local, inputs.gathered
        return symmetric_info_nce(
            local[pair.view_a],
            local[pair.view_b],
            inputs.logit_scale,
            gathered.get(pair.view_a),
            gathered.get(pair.view_b),
            inputs.rank,
            inputs.positives,
        )

    @staticmethod
    def _with_queue(inputs, pair):
        local, gathered, queue = inputs.local, inputs.gathered, inputs.queue
        a, b = pair.view_a, pair.view_b
        rank = inputs.rank if gathered else 0
        a2b = extra_negative_info_nce(
            local[a], gathered.get(b, local[b]), queue.queue.entries(VIEW_MODALITY[b]), inputs.logit_scale, rank, queue.mask, queue.share, inputs.positives
        )
        b2a = extra_negative_info_nce(
            local[b], gathered.get(a, local[a]), queue.queue.entries(VIEW_MODALITY[a]), inputs.logit_scale, rank, queue.mask, queue.share, inputs.positives
        )
        return {"loss": (a2b["loss"] + b2a["loss"]) / 2, "acc_a2b": a2b["acc"], "acc_b2a": b2a["acc"]}


class MomentumQueueTerm:
    """Logs the queue's share; with the brivl mode, adds ``weight *`` BriVL's queue InfoNCE of the key views."""

    gathered_views = frozenset()

    def __init__(self, config):
        self.config = config
        self.views = frozenset(KEY_VIEWS.values()) if config.brivl else frozenset()

    def __call__(self, inputs):
        queue = inputs.queue
        out = {"queue/share": paddle.to_tensor(queue.share)}
        if not self.config.brivl:
            return out
        scale = inputs.logit_scale if self.config.temperature is None else 1.0 / self.config.temperature
        image_query, text_query = inputs.local[KEY_VIEWS["image"]], inputs.local[KEY_VIEWS["text"]]
        keys, entries = inputs.keys, queue.queue.entries
        i2t = queue_info_nce(image_query, F.normalize(keys["text"], axis=-1), entries("text"), scale, queue.mask, queue.share, inputs.positives)
        t2i = queue_info_nce(text_query, F.normalize(keys["image"], axis=-1), entries("image"), scale, queue.mask, queue.share, inputs.positives)
        out["loss/brivl"] = (i2t["loss"] + t2i["loss"]) / 2
        out["acc/brivl"] = (i2t["acc"] + t2i["acc"]) / 2
        out["loss"] = self.config.weight * out["loss/brivl"]
        return out


class PairwiseTerm:
    """``sum(weight * pair_loss)`` over a table of view pairs; logs ``loss/<term>/<a>-<b>``."""

    def __init__(self, name, pair_loss, pairs):
        self.name, self.pair_loss = name, pair_loss
        self.pairs = parse_view_pairs(pairs)
        self.views = self.gathered_views = views_of(self.pairs)

    def __call__(self, inputs):
        out = {}
        total = 0.0
        for pair in self.pairs:
            a, b = pair.view_a, pair.view_b
            loss = self.pair_loss(
                inputs.local[a], inputs.local[b], inputs.logit_scale, inputs.gathered.get(a), inputs.gathered.get(b), inputs.rank
            )
            out[f"loss/{self.name}/{pair.name}"] = loss
            total = total + pair.weight * loss
        out["loss"] = total
        return out


def pairwise_term(name, pair_loss):
    """A :data:`LOSS_TERMS` builder: ``{name: <name>, pairs: [[view_a, view_b, weight], ...]}`` -> a term.

    ``pair_loss(a, b, logit_scale, a_all, b_all, rank)`` gets two views' local
    rows (L2-normalised), the logit scale, and the rows of every rank (``None``
    on one process); it returns a scalar tensor.
    """

    def build(pairs):
        return PairwiseTerm(name, pair_loss, pairs)

    build.__name__ = f"{name}_term"
    return build


# Terms listed under ``Loss.terms``, by name (``Loss.pairs`` is short for an info_nce term).
# A project adds one with ``LOSS_TERMS.register("name", pairwise_term("name", pair_loss))``.
LOSS_TERMS = Registry("loss term", {"info_nce": InfoNCEPairs})
