"""Loss terms: each reads some views and adds a loss to the total (``loss.py`` weighs and sums them).

A term is an object with

- ``views``: the views it reads; ``gathered_views``: those it wants from every rank, with gradient;
- ``ids``: the identity kinds it needs per row (``"image"``, ``"caption"``; see ``positives.py``);
- ``momentum``: the :class:`~ernievil2.losses.momentum.MomentumQueueConfig` of the momentum queue it
  needs, or None;
- ``teacher``: the :class:`~ernievil2.losses.distill.TeacherNeeds` of the frozen teacher whose embeddings
  it reads, or None;
- ``uses_logit_scale``: whether it reads the model's temperature;
- ``logs``: ``{logged key: console label}`` of the values the training log line shows besides the
  ``loss/...`` ones;
- ``__call__(inputs)``: a dict of tensors, ``loss`` (its unweighted loss; absent from a term that only
  changes others) among them, the rest logged as they are.

:class:`Term` gives the defaults. :class:`LossInputs` is what every term gets. Built in
here: :class:`InfoNCEPairs`, the table of view pairs, which honours ``Loss.positives``
(candidates of the row's own image or caption are not negatives, ``positives.py``). A
term that scores view pairs is one function ``pair_loss(a, b, logit_scale, a_all,
b_all, rank) -> scalar`` made a builder by :func:`pairwise_term`.
"""
import numbers
from typing import NamedTuple, Optional

from ..registry import ConfigError, did_you_mean
from ..validate import is_real_number
from ..views import KNOWN_VIEWS
from .contrastive import symmetric_info_nce


class ViewPair(NamedTuple):
    view_a: str
    view_b: str
    weight: float

    @property
    def name(self):
        return f"{self.view_a}-{self.view_b}"


class LossInputs(NamedTuple):
    local: dict  # view -> this rank's rows, L2-normalised
    gathered: dict  # view -> every rank's rows, with gradient (empty on one process)
    logit_scale: object
    rank: int  # the rank whose rows ``local`` holds, among ``gathered``
    ids: Optional[dict] = None  # {kind: int64 [B]}: this rank's rows' ids of the kinds the terms read
    positives: Optional[object] = None  # positives.Positives: candidates of the row's own image/caption
    teacher: Optional[object] = None  # distill.TeacherBatch: the frozen teacher's unit rows of this step
    momentum: Optional[object] = None  # momentum.MomentumBatch: the momentum queue's keys and entries this step


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

    With a momentum queue that adds negatives this step (``momentum.py``), each
    direction also scores its entries of the other view's modality.
    """

    def __init__(self, pairs):
        self.pairs = self.check(pairs)
        self.views = self.gathered_views = views_of(self.pairs)

    @staticmethod
    def check(pairs):
        return parse_view_pairs(pairs)

    def __call__(self, inputs):
        momentum = inputs.momentum
        out = {}
        total = 0.0
        for pair in self.pairs:
            if momentum is not None and momentum.adds_negatives:
                terms = momentum.pair_loss(inputs, pair.view_a, pair.view_b)
            else:
                terms = self._plain(inputs, pair)
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
