"""ERNIE-ViL 2.0's multi-view contrastive loss, driven by a table of view pairs.

Each ``[view_a, view_b, weight]`` entry adds ``weight * symmetric_info_nce``
between two views. The total is the plain weighted sum, not divided by the sum
of weights: a weight means the same thing whatever else is in the table, and a
one-pair table with weight ``w`` gives ``w`` times the CLIP loss.

An optional BriVL momentum queue (``momentum.py``) adds queue negatives to
every pair, a BriVL term, or both.
"""
import difflib
import math
import numbers
from typing import NamedTuple

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .contrastive import symmetric_info_nce
from .distributed import check_equal_local_batch, gather_with_grad
from .momentum import (
    CrossModalQueue,
    extra_negative_info_nce,
    parse_momentum_queue,
    queue_info_nce,
    queue_share,
    same_image_mask,
)

KNOWN_VIEWS = ("image_v1", "image_v2", "text_v1", "text_v2", "tag")
VIEW_MODALITY = {"image_v1": "image", "image_v2": "image", "text_v1": "text", "text_v2": "text", "tag": "text"}
# The brivl term's queries; the momentum copy encodes these views' inputs as the keys.
KEY_VIEWS = {"image": "image_v1", "text": "text_v1"}


class ViewPair(NamedTuple):
    view_a: str
    view_b: str
    weight: float

    @property
    def name(self):
        return f"{self.view_a}-{self.view_b}"


def _check_view(where, view):
    if not isinstance(view, str):
        raise ValueError(f"{where}: a view name must be a string, got {view!r}")
    if view in KNOWN_VIEWS:
        return
    message = f"{where}: unknown view {view!r}; known: {', '.join(KNOWN_VIEWS)}"
    close = difflib.get_close_matches(view, KNOWN_VIEWS, n=1)
    if close:
        message += f"; did you mean {close[0]!r}?"
    raise ValueError(message)


def _check_weight(where, weight):
    # bool is an int in Python, and PyYAML reads `1e-3` (no dot) as a string.
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
        raise ValueError(f"{where}: weight must be a number, got {weight!r} ({type(weight).__name__})")
    if not (weight > 0 and math.isfinite(weight)):
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


class MultiViewContrastiveLoss(nn.Layer):
    """Weighted sum of symmetric InfoNCE losses over a table of view pairs.

    ``forward(features, logit_scale)`` takes ``{view: (B, D) tensor}``, raw or
    already normalised (rows are L2-normalised here; normalising twice changes
    nothing), and the scalar logit scale owned by the model. It returns
    ``loss`` (the weighted sum) and, per pair, ``loss/<a>-<b>`` and
    ``acc/<a>-<b>`` (mean of both directions' in-batch top-1 accuracy), all
    tensors. With ``gather`` and ``world_size > 1`` negatives come from every
    rank, each view gathered once, with gradient (see ``distributed.py``).

    ``momentum_queue`` (a config mapping, see :func:`parse_momentum_queue`)
    adds a :class:`CrossModalQueue` of ``embed_dim``-wide keys; ``forward``
    then also takes ``keys``, ``image_ids`` and ``step``, returns
    ``queue/share`` (and ``loss/brivl``, ``acc/brivl`` with the brivl
    term), and ``enqueue`` must follow each optimizer step (the call sequence
    is at the top of ``momentum.py``). Without it nothing changes.
    """

    def __init__(self, pairs, rank=0, world_size=1, gather=True, momentum_queue=None, embed_dim=None):
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.queue_config = None if momentum_queue is None else parse_momentum_queue(momentum_queue)
        brivl_alone = self.queue_config is not None and self.queue_config.mode == "brivl"
        self.pairs = parse_view_pairs(pairs, allow_empty=brivl_alone)
        self.rank = rank
        self.world_size = world_size
        self.gather = gather
        self.queue = self._build_queue(embed_dim)

    def _build_queue(self, embed_dim):
        if self.queue_config is None:
            if embed_dim is not None:
                raise ValueError("embed_dim is the momentum queue's width; without momentum_queue it is unused")
            return None
        if embed_dim is None:
            raise ValueError("momentum_queue needs embed_dim, the width of the keys it stores")
        return CrossModalQueue(
            embed_dim, self.queue_config.size, views=tuple(KEY_VIEWS), track_ids=self.queue_config.mask_same_image
        )

    @property
    def pair_views(self):
        """The views the pair table uses."""
        return frozenset(v for pair in self.pairs for v in (pair.view_a, pair.view_b))

    @property
    def required_views(self):
        """The views the loss uses: the only ones the model must compute."""
        if self.queue_config is not None and self.queue_config.brivl:
            return self.pair_views | frozenset(KEY_VIEWS.values())
        return self.pair_views

    def forward(self, features, logit_scale, keys=None, image_ids=None, step=None):
        share = self._queue_share(keys, image_ids, step)
        local = self._normalised_views(features)
        gathered = self._gathered_views({v: local[v] for v in self.pair_views})
        mask = self._same_image_mask(image_ids, share)
        with_queue = share > 0 and self.queue_config.extra_negatives
        out = {}
        total = 0.0
        for pair in self.pairs:
            if with_queue:
                terms = self._pair_with_queue(local, gathered, pair, logit_scale, mask, share)
            else:
                terms = symmetric_info_nce(
                    local[pair.view_a],
                    local[pair.view_b],
                    logit_scale,
                    gathered.get(pair.view_a),
                    gathered.get(pair.view_b),
                    self.rank,
                )
            out[f"loss/{pair.name}"] = terms["loss"]
            out[f"acc/{pair.name}"] = (terms["acc_a2b"] + terms["acc_b2a"]) / 2
            total = total + pair.weight * terms["loss"]
        if self.queue_config is not None:
            out["queue/share"] = paddle.to_tensor(share)
            if self.queue_config.brivl:
                terms = self._brivl_term(local, keys, logit_scale, mask, share)
                out["loss/brivl"], out["acc/brivl"] = terms["loss"], terms["acc"]
                total = total + self.queue_config.weight * terms["loss"]
        out["loss"] = total
        return out

    def enqueue(self, keys, image_ids=None):
        """Push this step's momentum keys (``{"image", "text"}``, local rows) from every rank into the queues."""
        if self.queue is None:
            raise ValueError("enqueue needs a momentum_queue in the loss config")
        self.queue.enqueue(keys, image_ids, world_size=self.world_size)

    def _queue_share(self, keys, image_ids, step):
        if self.queue_config is None:
            if any(x is not None for x in (keys, image_ids, step)):
                raise ValueError("keys, image_ids and step feed the momentum queue, which is not configured")
            return 0.0
        if isinstance(step, bool) or not isinstance(step, int):
            raise ValueError(f"step (optimizer steps taken) is required with momentum_queue, got {step!r}")
        if self.queue_config.brivl and (keys is None or sorted(keys) != sorted(KEY_VIEWS)):
            got = None if keys is None else sorted(keys)
            raise ValueError(f"the brivl term needs keys {sorted(KEY_VIEWS)} from the momentum encoder, got {got}")
        if self.queue_config.mask_same_image and image_ids is None:
            raise ValueError("mask_same_image needs image_ids (int64, -1 where unknown)")
        cfg = self.queue_config
        return queue_share(step, cfg.warmup_steps, cfg.ramp_steps, self.queue.is_full)

    def _same_image_mask(self, image_ids, share):
        if share == 0 or not self.queue_config.mask_same_image:
            return None
        return same_image_mask(image_ids.astype("int64"), self.queue.ids)

    def _pair_with_queue(self, local, gathered, pair, logit_scale, mask, share):
        a, b = pair.view_a, pair.view_b
        rank = self.rank if gathered else 0
        a2b = extra_negative_info_nce(
            local[a], gathered.get(b, local[b]), self.queue.entries(VIEW_MODALITY[b]), logit_scale, rank, mask, share
        )
        b2a = extra_negative_info_nce(
            local[b], gathered.get(a, local[a]), self.queue.entries(VIEW_MODALITY[a]), logit_scale, rank, mask, share
        )
        return {
            "loss": (a2b["loss"] + b2a["loss"]) / 2,
            "acc_a2b": a2b["acc"],
            "acc_b2a": b2a["acc"],
        }

    def _brivl_term(self, local, keys, logit_scale, mask, share):
        scale = logit_scale if self.queue_config.temperature is None else 1.0 / self.queue_config.temperature
        image_query, text_query = local[KEY_VIEWS["image"]], local[KEY_VIEWS["text"]]
        i2t = queue_info_nce(
            image_query, F.normalize(keys["text"], axis=-1), self.queue.entries("text"), scale, mask, share
        )
        t2i = queue_info_nce(
            text_query, F.normalize(keys["image"], axis=-1), self.queue.entries("image"), scale, mask, share
        )
        return {"loss": (i2t["loss"] + t2i["loss"]) / 2, "acc": (i2t["acc"] + t2i["acc"]) / 2}

    def _normalised_views(self, features):
        missing = sorted(self.required_views - set(features))
        if missing:
            raise ValueError(
                f"features lack views required by the loss pairs: {missing}; got {sorted(features)}"
            )
        rows = {v: features[v].shape[0] for v in sorted(self.required_views)}
        if len(set(rows.values())) > 1:
            raise ValueError(f"all views must have the same number of rows, got {rows}")
        return {v: F.normalize(features[v], axis=-1) for v in self.required_views}

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
