"""The ``Loss`` section: one list of terms, weighed and summed, and the layer that runs them.

::

    Loss:
      temperature: {init: 0.07, learnable: true, max_logit_scale: 100}   # the model's InfoNCE temperature
      positives: {mode: masked}                                          # optional, read by every term
      terms:
        - {name: info_nce, weight: 1.0, pairs: [[image_v1, text_v1, 1.0], [image_v1, image_v2, 0.5]]}
        - {name: momentum_queue, weight: 1.0, size: 4096, mode: both}
        - {name: sigmoid, pairs: [[image_v1, text_v1, 1.0]]}
        - {name: distill, weight: 1.0, mode: similarity, views: [image_v1, text_v1], teacher: null}

Each term is ``{name: <a LOSS_TERMS entry>, weight: <default 1>, <its own keys>}``;
the total is ``sum(weight * term loss)``, not divided by the sum of weights: a
weight means the same thing whatever else is listed. The config loader checks
the section once (:func:`check_loss_section`, no term is built); the trainer
builds it once (:func:`build_loss`) and asks the layer two things: what it
:attr:`~Loss.needs` and what it :attr:`~Loss.logs`.
"""
from typing import NamedTuple, Optional

import paddle.nn as nn
import paddle.nn.functional as F

from ..registry import ConfigError, Registry
from ..validate import boolean, check_known_keys, positive_number
from .contrastive import contrastive_labels
from .distill import DistillTerm
from .distributed import all_gather_rows, check_equal_local_batch, gather_with_grad
from .momentum import MomentumQueueTerm, check_queue_terms
from .positives import IDENTITY_INPUTS, Positives, parse_positives, positive_mask
from .sigmoid import SigmoidPairs
from .terms import InfoNCEPairs, LossInputs, check_weight

# The terms ``Loss.terms`` names. A project adds its own with ``LOSS_TERMS.register(name, builder)``.
LOSS_TERMS = Registry(
    "loss term", {"info_nce": InfoNCEPairs, "momentum_queue": MomentumQueueTerm, "sigmoid": SigmoidPairs, "distill": DistillTerm}
)

TEMPERATURE_KEYS = {"init": 0.07, "learnable": True, "max_logit_scale": 100.0}
LOSS_KEYS = ("temperature", "positives", "terms")
# Arguments the loss gives the terms that take them; a config cannot set them.
CONTEXT_KEYS = ("global_batch", "positives")


class Needs(NamedTuple):
    """What the trainer must give the loss."""

    views: frozenset  # the views the model computes
    ids: dict  # {loss keyword: batch array} of the ids the terms read
    momentum: Optional[object]  # the MomentumQueueConfig of the momentum keys a term reads, or None
    logit_scale: bool  # whether a term reads the model's temperature (else it is not trained)
    teacher: Optional[object] = None  # the distill term's TeacherNeeds (the frozen teacher to run), or None


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


def _migration(section):
    """The one-line error for a section of the old form (``name``, ``pairs``, ``momentum_queue`` beside ``terms``)."""
    terms = []
    if section.get("pairs"):
        terms.append({"name": "info_nce", "pairs": section["pairs"]})
    queue = section.get("momentum_queue")
    if isinstance(queue, dict):
        terms.append({"name": "momentum_queue", **queue})
    terms += section.get("terms") or []
    old = [key for key in ("name", "pairs", "momentum_queue") if key in section]
    rest = {key: section[key] for key in ("temperature", "positives") if key in section}
    new = _flow({**rest, "terms": terms})
    return ConfigError(
        f"Loss.{old[0]}",
        f"the loss is one list of terms now ({', '.join(old)} go); write  Loss: {new}  "
        "(a momentum_queue's weight is its term's weight; docs/config.md#loss)",
    )


def _flow(value):
    """``value`` in yaml flow style on one line."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    return "true" if value is True else "false" if value is False else str(value)


def _entries(section):
    if not isinstance(section, dict):
        raise ConfigError("Loss", f"expected a mapping with terms: [...], got {section!r}")
    if any(key in section for key in ("name", "pairs", "momentum_queue")):
        raise _migration(section)
    check_known_keys(section, LOSS_KEYS, "Loss")
    entries = section.get("terms")
    if not isinstance(entries, list) or not entries:
        raise ConfigError("Loss.terms", f"expected a non-empty list of {{name: ..., weight: ..., ...}}, got {entries!r}")
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(f"Loss.terms[{index}]", f"expected a mapping with a 'name' of a loss term, got {entry!r}")
    return entries


def _positives(section):
    try:
        return parse_positives(section.get("positives"))
    except ConfigError as err:
        raise err.under("Loss") from None


def _weight_and_options(entry, key):
    options = dict(entry)
    return check_weight(options.pop("weight", 1.0), f"{key}.weight"), options


def check_loss_section(section):
    """Check a ``Loss`` section when the config loads, building nothing; errors name the key."""
    entries = _entries(section)
    check_temperature(section.get("temperature"))
    context = {"global_batch": None, "positives": _positives(section)}
    declared = []
    for index, entry in enumerate(entries):
        key = f"Loss.terms[{index}]"
        _, options = _weight_and_options(entry, key)
        declared.append(LOSS_TERMS.check(options, key, context))
    check_queue_terms(entries, declared)
    _check_teachers([entry.get("name") == "distill" for entry in entries])


def _check_teachers(distills):
    """At most one distill term (``distills``: whether each term is one): one teacher per run."""
    listed = [index for index, distill in enumerate(distills) if distill]
    if len(listed) > 1:
        raise ConfigError(f"Loss.terms[{listed[1]}]", "a second distill term: list one (one teacher, one mode)")


def build_loss(section, rank=0, world_size=1, global_batch=None):
    """The :class:`Loss` of a ``Loss`` section, each term built once from :data:`LOSS_TERMS`.

    ``global_batch``: the rows one step's loss sees (per-rank batch x micro-batches x ranks),
    given to the terms that take it.
    """
    entries = _entries(section)
    context = {"global_batch": global_batch, "positives": _positives(section)}
    terms, weights = [], []
    for index, entry in enumerate(entries):
        key = f"Loss.terms[{index}]"
        weight, options = _weight_and_options(entry, key)
        terms.append(LOSS_TERMS.build(options, key, context))
        weights.append(weight)
    check_queue_terms(entries, [term.momentum for term in terms])
    _check_teachers([term.teacher is not None for term in terms])
    return Loss(terms, weights, rank, world_size, positives=context["positives"])


class Loss(nn.Layer):
    """``sum(weight * term loss)`` over its terms (``terms.py``), on features of the views they read.

    ``forward(features, logit_scale, image_ids=None, caption_ids=None, momentum=None, teacher=None)``
    takes ``{view: (B, D) tensor}``, raw or already normalised (rows are
    L2-normalised here; normalising twice changes nothing), and the scalar logit
    scale owned by the model. It returns ``loss`` and what each term logs, all
    tensors. With ``gather`` and ``world_size > 1`` negatives come from every
    rank, each view gathered once, with gradient (see ``distributed.py``).

    ``positives`` (a :class:`~ernievil2.losses.positives.PositivesConfig`):
    candidates sharing the row's image id (and, with ``same_caption``, its
    caption id) are masked or become further targets, in every term.
    ``image_ids`` / ``caption_ids`` (int64 ``[B]``, -1 where unknown) feed them
    and the momentum queue's same-image mask; they are gathered from every rank
    (no gradient) with the features. ``momentum``: the step's
    :class:`~ernievil2.losses.momentum.MomentumBatch`, when a term reads the queue;
    the terms get it as it is.
    ``teacher``: the step's :class:`~ernievil2.losses.distill.TeacherBatch` (the frozen
    teacher's rows of the same samples), when a distill term reads it; its rows are
    gathered (no gradient) where the term scores every rank's.

    Terms with parameters of their own (the sigmoid term's scale and bias) are
    sub-layers: they go into ``state_dict`` (checkpoints) and ``parameters()``
    (the optimizer, whose gradients the trainer averages over ranks).
    """

    def __init__(self, terms, weights=None, rank=0, world_size=1, gather=True, positives=None):
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.terms = list(terms)
        self.weights = [1.0] * len(self.terms) if weights is None else [float(w) for w in weights]
        if len(self.weights) != len(self.terms):
            raise ValueError(f"{len(self.terms)} terms but {len(self.weights)} weights")
        self.term_layers = nn.LayerList([term for term in self.terms if isinstance(term, nn.Layer)])
        self.positives = positives
        self.rank, self.world_size, self.gather = rank, world_size, gather
        queues = [term.momentum for term in self.terms if term.momentum is not None]
        self.momentum_config = queues[0] if queues else None
        teachers = [term for term in self.terms if term.teacher is not None]
        self.teacher_needs = teachers[0].teacher if teachers else None
        # The teacher's views a term scores against every rank's rows.
        self.teacher_gathered = frozenset().union(*(term.gathered_views for term in teachers))

    @property
    def needs(self):
        """The views, ids, momentum keys and teacher the terms read, and whether one reads the model's temperature."""
        kinds = set(self.positives.identities if self.positives is not None else ())
        for term in self.terms:
            kinds.update(term.ids)
        return Needs(
            views=frozenset().union(*(term.views for term in self.terms)),
            ids=dict(IDENTITY_INPUTS[kind] for kind in ("image", "caption") if kind in kinds),
            momentum=self.momentum_config,
            logit_scale=any(term.uses_logit_scale for term in self.terms),
            teacher=self.teacher_needs,
        )

    @property
    def logs(self):
        """``{logged key: console label}``: the values the training log line shows besides the ``loss/...`` ones."""
        return {key: label for term in self.terms for key, label in term.logs.items()}

    def forward(self, features, logit_scale, image_ids=None, caption_ids=None, momentum=None, teacher=None):
        needs = self.needs
        ids = self._checked_ids(needs.ids, image_ids, caption_ids)
        self._check_momentum(momentum)
        local = self._normalised_views(features, needs.views)
        gathered = self._gathered_views({v: local[v] for v in frozenset().union(*(t.gathered_views for t in self.terms))})
        positives = self._positives(ids, bool(gathered))
        inputs = LossInputs(local, gathered, logit_scale, self.rank, ids, positives, self._teacher(teacher, bool(gathered)), momentum)
        out = {}
        total = 0.0
        for term, weight in zip(self.terms, self.weights):
            terms = term(inputs)
            if "loss" in terms:
                total = total + weight * terms.pop("loss")
            out.update(terms)
        out["loss"] = total
        return out

    def _teacher(self, teacher, gathered):
        """The step's :class:`TeacherBatch`, its rows normalised and, when the student's are, gathered (no gradient)."""
        if (teacher is None) != (self.teacher_needs is None):
            raise ValueError(
                "teacher (the step's TeacherBatch) goes with a distill term, and only with one"
                if teacher is not None else "the distill term needs the teacher's embeddings of the step (teacher=)"
            )
        if teacher is None:
            return None
        features = self._normalised_views(teacher.features, self.teacher_needs.views)
        rows = {v: all_gather_rows(features[v], self.world_size) for v in sorted(self.teacher_gathered)} if gathered else None
        return teacher._replace(features=features, gathered=rows)

    def _checked_ids(self, wanted, image_ids, caption_ids):
        """``{kind: int64 [B]}`` of the ids the terms read."""
        given = {"image_ids": image_ids, "caption_ids": caption_ids}
        for keyword, value in given.items():
            if value is not None and keyword not in wanted:
                raise ValueError(f"{keyword}: no term reads them (Loss.positives, with same_caption for caption ids, or a momentum_queue with mask_same_image)")
            if value is None and keyword in wanted:
                raise ValueError(f"the loss needs {keyword} (int64 [B], -1 where unknown)")
        return {kind: given[keyword].astype("int64") for kind, (keyword, _) in IDENTITY_INPUTS.items() if keyword in wanted}

    def _check_momentum(self, momentum):
        if (momentum is None) != (self.momentum_config is None):
            raise ValueError(
                "momentum (the step's MomentumBatch) goes with a momentum_queue term, and only with one"
                if momentum is not None else "the momentum_queue term needs the step's MomentumBatch (momentum=)"
            )

    def _positives(self, ids, gathered):
        """The :class:`Positives` of this batch's rows among the (gathered) candidates (the momentum queue adds
        its part itself)."""
        if self.positives is None:
            return None
        ids = {kind: ids[kind] for kind in self.positives.identities}
        candidates = {kind: all_gather_rows(x, self.world_size) for kind, x in sorted(ids.items())} if gathered else ids
        local_batch = next(iter(ids.values())).shape[0]
        labels = contrastive_labels(local_batch, self.rank if gathered else 0)
        return Positives(self.positives.mode, positive_mask(ids, candidates, labels))

    @staticmethod
    def _normalised_views(features, views):
        missing = sorted(views - set(features))
        if missing:
            raise ValueError(f"features lack views required by the loss pairs: {missing}; got {sorted(features)}")
        rows = {v: features[v].shape[0] for v in sorted(views)}
        if len(set(rows.values())) > 1:
            raise ValueError(f"all views must have the same number of rows, got {rows}")
        return {v: F.normalize(features[v], axis=-1) for v in views}

    def _gathered_views(self, local):
        if not self.gather or self.world_size == 1 or not local:
            return {}
        local_batch = next(iter(local.values())).shape[0]
        check_equal_local_batch(local_batch)
        # Sorted: set order follows the per-process string hash seed, and ranks
        # issuing the gathers in different orders would swap views silently.
        gathered = {v: gather_with_grad(x) for v, x in sorted(local.items())}
        rows = next(iter(gathered.values())).shape[0]
        if rows != self.world_size * local_batch:
            raise ValueError(
                f"gathered {rows} rows from {local_batch} local ones, but world_size is "
                f"{self.world_size}; pass the process group's world size"
            )
        return gathered
