"""Loss terms: each reads some views and adds a loss to the total (``loss.py`` weighs and sums them).

A term is an object with

- ``views``: the views it reads; ``gathered_views``: those it wants from every rank, with gradient;
- ``ids``: the identity kinds it needs per row (``"image"``, ``"caption"``; see ``positives.py``);
- ``momentum``: the :class:`~ernievil2.losses.momentum.MomentumQueueConfig` of the momentum keys it
  needs, or None;
- ``teacher``: the :class:`~ernievil2.losses.distill.TeacherNeeds` of the frozen teacher whose embeddings
  it reads, or None;
- ``uses_logit_scale``: whether it reads the model's temperature;
- ``logs``: ``{logged key: console label}`` of the values the training log line shows besides the
  ``loss/...`` ones;
- ``__call__(inputs)``: a dict of tensors, ``loss`` (its unweighted loss; absent from a term that only
  changes others) among them, the rest logged as they are.

:class:`Term` gives the defaults. :class:`LossInputs` is what every term gets. Built in
here: :class:`InfoNCEPairs`, the table of view pairs, and :class:`MomentumQueueTerm`,
BriVL's queue (whose keys and entries come from ``momentum.py``); both honour
``Loss.positives`` (candidates of the row's own image or caption are not negatives,
``positives.py``). A term that scores view pairs is one function ``pair_loss(a, b,
logit_scale, a_all, b_all, rank) -> scalar`` made a builder by :func:`pairwise_term`.
"""
import numbers
from typing import NamedTuple, Optional

import paddle
import paddle.nn.functional as F

from ..registry import ConfigError, did_you_mean
from ..validate import is_real_number
from ..views import KEY_VIEWS, KNOWN_VIEWS, VIEW_MODALITY
from .contrastive import symmetric_info_nce
from .momentum import extra_negative_info_nce, parse_momentum_queue, queue_info_nce


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
    extra_negatives: bool  # whether the pair tables score the queue's entries too
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
    teacher: Optional[object] = None  # distill.TeacherBatch: the frozen teacher's unit rows of this step


def check_view(where, view):
    """A ConfigError keyed ``where`` unless ``view`` is a known view's name."""
    if not isinstance(view, str):
        raise ConfigError(where, f"a view name must be a string, got {view!r}")
    if view not in KNOWN_VIEWS:
        raise ConfigError(where, f"unknown view {view!r}; known: {', '.join(KNOWN_VIEWS)}" + did_you_mean(view, KNOWN_VIEWS))


def check_weight(weight, where="weight"):
    """A positive finite number (a pair's or a term's weight), as a float."""
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
        raise ConfigError(where, f"weight must be a number, got {weight!r} ({type(weight).__name__})")
    if not (is_real_number(weight) and weight > 0):
        raise ConfigError(where, f"weight must be a positive finite number, got {weight!r}")
    return float(weight)


def parse_view_pairs(pairs):
    """Validate a ``pairs`` table and return it as a tuple of :class:`ViewPair`.

    Errors are :class:`ConfigError` keyed ``pairs[i]``, which the registry puts
    under the term's key (``Loss.terms[0].pairs[1]``).
    """
    if not isinstance(pairs, (list, tuple)) or not pairs:
        raise ConfigError("pairs", f"expected a non-empty list of [view_a, view_b, weight], got {pairs!r}")
    seen = {}
    parsed = []
    for index, entry in enumerate(pairs):
        where = f"pairs[{index}]"
        if not isinstance(entry, (list, tuple)) or len(entry) != 3:
            raise ConfigError(where, f"expected [view_a, view_b, weight], got {entry!r}")
        view_a, view_b, weight = entry
        check_view(where, view_a)
        check_view(where, view_b)
        if view_a == view_b:
            raise ConfigError(where, f"view {view_a!r} is paired with itself")
        check_weight(weight, where)
        # The loss is symmetric, so [b, a] repeats [a, b].
        key = frozenset((view_a, view_b))
        if key in seen:
            raise ConfigError(where, f"[{view_a}, {view_b}] duplicates pairs[{seen[key]}]")
        seen[key] = index
        parsed.append(ViewPair(view_a, view_b, float(weight)))
    return tuple(parsed)


def views_of(pairs):
    return frozenset(v for pair in pairs for v in (pair.view_a, pair.view_b))


class Term:
    """What a term declares, as most terms have it (see the module's docstring)."""

    views = gathered_views = frozenset()
    ids = ()
    momentum = None
    teacher = None
    uses_logit_scale = True
    logs = {}


class InfoNCEPairs(Term):
    """``sum(weight * symmetric InfoNCE)`` over a table of view pairs; logs ``loss/<a>-<b>`` and ``acc/<a>-<b>``.

    With a momentum queue in extra-negatives mode, each direction also scores
    the queue's entries of the other view's modality.
    """

    def __init__(self, pairs):
        self.pairs = self.check(pairs)
        self.views = self.gathered_views = views_of(self.pairs)

    @staticmethod
    def check(pairs):
        return parse_view_pairs(pairs)

    def __call__(self, inputs):
        queue = inputs.queue
        with_queue = queue is not None and queue.share > 0 and queue.extra_negatives
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


class MomentumQueueTerm(Term):
    """BriVL's momentum queue: its negatives join the pair tables (``extra_negatives``), its own InfoNCE of the
    key views against the queue is a loss (``brivl``), or both. Logs ``queue/share``, and ``loss/brivl``,
    ``acc/brivl`` with the brivl loss. The keys and the queue come from
    :class:`~ernievil2.losses.momentum.MomentumQueue`, which the trainer builds for the ``momentum`` this
    term declares."""

    gathered_views = frozenset()

    def __init__(self, size, mode, momentum=0.99, temperature="shared", warmup_steps=0, ramp_steps=0, mask_same_image=False, positives=None):
        self.momentum = self.check(size, mode, momentum, temperature, warmup_steps, ramp_steps, mask_same_image, positives)
        brivl = self.momentum.brivl
        self.views = frozenset(KEY_VIEWS.values()) if brivl else frozenset()
        self.ids = ("image",) if mask_same_image else ()
        # Read only by the brivl loss at the shared temperature; a fixed one is its own.
        self.uses_logit_scale = brivl and self.momentum.temperature is None

    @staticmethod
    def check(size, mode, momentum=0.99, temperature="shared", warmup_steps=0, ramp_steps=0, mask_same_image=False, positives=None):
        """The :class:`MomentumQueueConfig`; ``positives``: ``Loss.positives`` (parsed), which decides the queue's
        same-image entries itself."""
        if positives is not None and mask_same_image:
            raise ConfigError("mask_same_image", "Loss.positives already decides the queue's entries of the row's own image; drop mask_same_image")
        return parse_momentum_queue(
            {"size": size, "mode": mode, "momentum": momentum, "temperature": temperature,
             "warmup_steps": warmup_steps, "ramp_steps": ramp_steps, "mask_same_image": mask_same_image}
        )

    def __call__(self, inputs):
        queue = inputs.queue
        out = {"queue/share": paddle.to_tensor(queue.share)}
        if not self.momentum.brivl:
            return out
        scale = inputs.logit_scale if self.momentum.temperature is None else 1.0 / self.momentum.temperature
        image_query, text_query = inputs.local[KEY_VIEWS["image"]], inputs.local[KEY_VIEWS["text"]]
        keys, entries = inputs.keys, queue.queue.entries
        i2t = queue_info_nce(image_query, F.normalize(keys["text"], axis=-1), entries("text"), scale, queue.mask, queue.share, inputs.positives)
        t2i = queue_info_nce(text_query, F.normalize(keys["image"], axis=-1), entries("image"), scale, queue.mask, queue.share, inputs.positives)
        out["loss/brivl"] = out["loss"] = (i2t["loss"] + t2i["loss"]) / 2
        out["acc/brivl"] = (i2t["acc"] + t2i["acc"]) / 2
        return out


class PairwiseTerm(Term):
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
    build.check = parse_view_pairs
    return build
