"""BriVL's cross-modal momentum queue, all of it: the loss term, the EMA key encoder and its queues as one object, the queue InfoNCE.

:class:`MomentumQueueTerm` is the ``{name: momentum_queue, ...}`` entry of ``Loss.terms``
(``loss.py`` registers it); :class:`MomentumQueue` is what the trainer holds when a term
declares a ``momentum``. The loss hands the step's :class:`MomentumBatch` to every term
as ``inputs.momentum``; an ``info_nce`` term asks it for the pair losses with the queue's
extra negatives (:meth:`MomentumBatch.pair_loss`). One step, in MoCo's order (score against the queue as it
stands, step, then enqueue this step's keys)::

    momentum = MomentumQueue(model, loss_fn.needs.momentum, model.embed_dim, loss_fn.needs.ids)
    batch = momentum.keys_for(micro_batches, step)   # the keys, the queue and its share this step
    out = loss_fn(features, logit_scale, momentum=batch, **ids)
    out["loss"].backward(); optimizer.step(); optimizer.clear_grad()
    momentum.after_step(model)                       # EMA update, then enqueue the step's keys and ids

``step`` counts the optimizer steps already taken (0 on the first batch).
The keys are the momentum copy's features of the ``image_v1`` and ``text_v1``
inputs (no gradient); image ids are int64 ``[B_local]``, -1 where unknown, kept
only when the loss reads them. Enqueueing before ``backward`` is an error: the
write is in place and Paddle refuses a backward through a tensor modified after
use (``set_value`` would instead corrupt the gradient silently, so it is not
used here). Checkpoints keep ``momentum.state_dict()`` (the copy's weights, the
queues, ids, pointer and fill count); it restores with ``set_state_dict``.

Maths (rows L2-normalised, ``s`` the logit scale, ``Q`` a queue, ``w`` the
queue's share from the warm-up/ramp schedule)::

    brivl, image -> text:  [s·q·k⁺ | s·q·Q_textᵀ + log w]   target column 0
    extra negatives a->b:  [s·a·b_allᵀ | s·a·Q_mod(b)ᵀ + log w]   target rank·B + i

``w`` scales the queue's share of the softmax denominator: ``w = 0`` drops the
queue columns (the plain loss, exactly), ``w = 1`` is the full queue. Queue
entries of the query's own image (when ids are known) are dropped (-inf).
"""
import copy
import math
from typing import NamedTuple, Optional

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..registry import ConfigError
from ..validate import boolean, check_known_keys, integer_at_least, number_in, one_of, positive_number
from ..views import KEY_VIEWS, VIEW_MODALITY, text_source
from .contrastive import contrastive_labels, contrastive_logits, in_batch_accuracy
from .distributed import all_gather_rows, check_equal_local_batch
from .positives import accuracy_with_positives, any_identity, cross_entropy_with_positives, same_identity
from .terms import Term

QUEUE_MODES = ("extra_negatives", "brivl", "both")


# ---------------------------------------------------------------- EMA copies


@paddle.no_grad()
def ema_update_(target_params, source_params, momentum):
    """In place: ``target = momentum * target + (1 - momentum) * source``, pairwise."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
    target_params, source_params = list(target_params), list(source_params)
    if len(target_params) != len(source_params):
        raise ValueError(f"{len(target_params)} targets but {len(source_params)} sources")
    for index, (target, source) in enumerate(zip(target_params, source_params)):
        if list(target.shape) != list(source.shape):
            raise ValueError(f"tensor {index}: target shape {list(target.shape)} but source {list(source.shape)}")
        if not target.is_floating_point():
            raise TypeError(f"tensor {index}: EMA needs floating tensors, got {target.dtype}")
        paddle.assign(momentum * target + (1.0 - momentum) * source, output=target)


def _unwrapped(model):
    # DataParallel prefixes every name with `_layers.`; the copy is of the bare model.
    return model._layers if isinstance(model, paddle.DataParallel) else model


def _named_state(layer):
    return list(layer.named_parameters()) + list(layer.named_buffers())


class MomentumEncoder(nn.Layer):
    """A frozen deep copy of a model that follows it by EMA and encodes keys.

    Every parameter of the copy has ``stop_gradient=True`` and the copy is not
    a sublayer of the online model, so no optimizer built from the online
    model's parameters sees it. Calls run under ``no_grad``.

    The copy always runs in eval mode (dropout off), whatever ``train()`` was
    called on: keys are targets and negatives, and dropout there only adds
    noise; the online text tower's dropout already makes the text views. MoCo
    keeps its key encoder in train mode for BatchNorm's batch statistics; the
    ViT and ERNIE towers have LayerNorm only, and a BatchNorm tower's running
    statistics are buffers, which ``update`` averages like the parameters.
    """

    def __init__(self, model):
        super().__init__()
        self.model = copy.deepcopy(_unwrapped(model))
        for param in self.model.parameters():
            param.stop_gradient = True

    def forward(self, *args, **kwargs):
        # Set per call, not once: a parent's train() switches every sublayer.
        for layer in self.model.sublayers(include_self=True):
            layer.training = False
        with paddle.no_grad():
            return self.model(*args, **kwargs)

    def update(self, online_model, momentum):
        """Move every parameter and buffer of the copy towards ``online_model``'s."""
        targets = _named_state(self.model)
        sources = _named_state(_unwrapped(online_model))
        target_names, source_names = [n for n, _ in targets], [n for n, _ in sources]
        if target_names != source_names:
            differ = sorted(set(target_names) ^ set(source_names)) or ["(same names, other order)"]
            raise ValueError(f"online model does not match the momentum copy: {differ[:10]}")
        ema_update_([t for _, t in targets], [s for _, s in sources], momentum)


# ---------------------------------------------------------------- the queues


def _write_rows_(buffer, positions, rows):
    # assign(output=) bumps the tensor's version, so a backward through a
    # loss scored against the old contents fails loudly instead of using these.
    paddle.assign(paddle.scatter(buffer, positions, rows, overwrite=True), output=buffer)


class CrossModalQueue(nn.Layer):
    """One FIFO of L2-normalised keys per view (modality), written round-robin.

    Buffers, all persistable (saved by ``state_dict``): ``queue_<view>``
    ``[size, dim]``, ``ids`` ``[size]`` int64 image ids (with ``track_ids``;
    -1 = unknown), ``caption_ids`` ``[size]`` int64 caption-text ids (with
    ``track_caption_ids``), ``ptr`` (next row to write) and ``filled`` (rows
    written so far, capped at ``size``). The queues start as zeros and are not used for
    scoring until ``filled == size`` (see :func:`queue_share`), so no made-up
    negatives ever enter the loss.
    """

    def __init__(self, dim, size, views=("image", "text"), track_ids=True, track_caption_ids=False):
        super().__init__()
        for name, value in (("dim", dim), ("size", size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        views = tuple(views)
        names_ok = all(isinstance(v, str) and v.isidentifier() for v in views)
        if not views or len(set(views)) != len(views) or not names_ok:
            raise ValueError(f"views must be distinct identifiers, got {views!r}")
        if track_caption_ids and not track_ids:
            raise ValueError("track_caption_ids needs track_ids: caption ids count beside the image ids")
        self.dim, self.size, self.views, self.track_ids = dim, size, views, track_ids
        self.track_caption_ids = track_caption_ids
        for view in views:
            self.register_buffer(f"queue_{view}", paddle.zeros([size, dim]), persistable=True)
        if track_ids:
            self.register_buffer("ids", paddle.full([size], -1, dtype="int64"), persistable=True)
        if track_caption_ids:
            self.register_buffer("caption_ids", paddle.full([size], -1, dtype="int64"), persistable=True)
        self.register_buffer("ptr", paddle.zeros([1], dtype="int64"), persistable=True)
        self.register_buffer("filled", paddle.zeros([1], dtype="int64"), persistable=True)

    def entries(self, view):
        """The ``[size, dim]`` queue of ``view`` (a buffer: do not modify)."""
        return getattr(self, f"queue_{view}")

    @property
    def is_full(self):
        return int(self.filled.item()) == self.size

    def identities(self):
        """``{kind: [size] int64}``: the ids stored with the entries (``image``, and ``caption`` when tracked)."""
        out = {"image": self.ids} if self.track_ids else {}
        if self.track_caption_ids:
            out["caption"] = self.caption_ids
        return out

    @paddle.no_grad()
    def enqueue(self, keys, ids=None, world_size=1, group=None, caption_ids=None):
        """Gather ``keys`` (``{view: [B, dim]}``), ``ids`` and ``caption_ids`` from every rank and write them at the pointer.

        Rows go in rank order and wrap around the end, so ``size`` need not be
        a multiple of the global batch; a global batch larger than ``size`` is
        refused (it would overwrite its own rows). Every rank ends with the
        same queue.
        """
        local = self._checked_local(keys, ids, caption_ids)
        if world_size > 1:
            check_equal_local_batch(local, group)
        rows = world_size * local
        if rows > self.size:
            raise ValueError(
                f"a global batch of {rows} keys ({world_size} x {local}) does not fit a queue of "
                f"{self.size}; make momentum_queue.size at least the global batch"
            )
        positions = (self.ptr + paddle.arange(rows, dtype="int64")) % self.size
        for view in self.views:
            normalised = F.normalize(keys[view].detach(), axis=-1).astype(self.entries(view).dtype)
            _write_rows_(self.entries(view), positions, all_gather_rows(normalised, world_size, group))
        if self.track_ids:
            _write_rows_(self.ids, positions, all_gather_rows(ids.astype("int64"), world_size, group))
        if self.track_caption_ids:
            _write_rows_(self.caption_ids, positions, all_gather_rows(caption_ids.astype("int64"), world_size, group))
        paddle.assign((self.ptr + rows) % self.size, output=self.ptr)
        paddle.assign(paddle.clip(self.filled + rows, max=self.size), output=self.filled)

    def _checked_local(self, keys, ids, caption_ids=None):
        if sorted(keys) != sorted(self.views):
            raise ValueError(f"keys must have exactly the views {list(self.views)}, got {sorted(keys)}")
        shapes = {v: list(keys[v].shape) for v in self.views}
        local = shapes[self.views[0]][0]
        if any(s != [local, self.dim] for s in shapes.values()):
            raise ValueError(f"every key view must be [B, {self.dim}] with the same B, got {shapes}")
        if self.track_ids != (ids is not None):
            raise ValueError("image ids are required when the queue tracks ids, and refused otherwise")
        if self.track_caption_ids != (caption_ids is not None):
            raise ValueError("caption ids are required when the queue tracks them, and refused otherwise")
        for name, given in (("ids", ids), ("caption_ids", caption_ids)):
            if given is not None and list(given.shape) != [local]:
                raise ValueError(f"{name} must be [{local}] (one per key row), got {list(given.shape)}")
        return local


# ---------------------------------------------------------------- the maths


def same_image_mask(query_ids, queue_ids):
    """``[B, K]`` bool: queue entries showing the query's own image (ids >= 0)."""
    return same_identity(query_ids, queue_ids)


def queue_share(step, warmup_steps, ramp_steps, queue_full):
    """The queue's share of the loss: 0 until warm-up is over and the queue full, then a linear ramp to 1.

    ``step`` counts optimizer steps already taken; the ramp counts from
    ``warmup_steps``, so at ``step = warmup_steps + i`` the share is
    ``min(1, (i + 1) / ramp_steps)`` (1 at once when ``ramp_steps`` is 0).
    """
    if step < 0 or warmup_steps < 0 or ramp_steps < 0:
        raise ValueError(f"steps must be >= 0, got step={step}, warmup={warmup_steps}, ramp={ramp_steps}")
    if step < warmup_steps or not queue_full:
        return 0.0
    if ramp_steps == 0:
        return 1.0
    return min(1.0, (step - warmup_steps + 1) / ramp_steps)


def _append_queue_logits(logits, query, queue, logit_scale, negative_mask, share):
    """``logits`` followed by the query's scaled similarities to the queue (none when ``share`` is 0)."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"queue share must be in [0, 1], got {share!r}")
    if share == 0.0:
        # Not a zero-row queue: paddle 3.3.1's matmul backward fails on empty inputs.
        return logits
    queue_logits = contrastive_logits(query, queue.astype(query.dtype), logit_scale)
    if share < 1.0:
        queue_logits = queue_logits + math.log(share)
    if negative_mask is not None:
        # where(), not adding -inf: its backward gives masked entries exactly zero.
        queue_logits = paddle.where(negative_mask, paddle.full_like(queue_logits, float("-inf")), queue_logits)
    return paddle.concat([logits, queue_logits], axis=1)


def _with_queue_positives(in_batch, positives, share):
    """The positives over ``[in-batch | queue]`` columns (the queue's only when it is scored)."""
    if share == 0.0:
        return in_batch
    if positives.queue is None:
        raise ValueError("the queue is scored (share > 0) but positives.queue is None")
    return paddle.concat([in_batch, positives.queue], axis=1)


def queue_info_nce(query, positive_key, queue, logit_scale, negative_mask=None, queue_share=1.0, positives=None):
    """MoCo/BriVL InfoNCE: each query row against its own key (positive) and the queue (negatives).

    ``query`` ``[B, D]`` carries the gradient; ``positive_key`` ``[B, D]`` and
    ``queue`` ``[K, D]`` are constants; ``negative_mask`` ``[B, K]`` drops
    entries. Returns ``loss`` (mean over rows) and ``acc`` (fraction of rows
    whose positive outscores every kept queue entry). ``positives`` (a
    :class:`~ernievil2.losses.positives.Positives`; its ``queue`` part is read)
    replaces ``negative_mask``: queue entries of the query's identity are
    masked or become further targets, per its mode.
    """
    if positives is not None and negative_mask is not None:
        raise ValueError("give negative_mask or positives, not both")
    positive = logit_scale * (query * positive_key.astype(query.dtype)).sum(axis=1, keepdim=True)
    logits = _append_queue_logits(positive, query, queue, logit_scale, negative_mask, queue_share)
    labels = paddle.zeros([query.shape[0]], dtype="int64")
    if positives is not None:
        own = paddle.ones([query.shape[0], 1], dtype="bool")
        return cross_entropy_with_positives(logits, labels, _with_queue_positives(own, positives, queue_share), positives.mode)
    return {"loss": F.cross_entropy(logits, labels), "acc": in_batch_accuracy(logits, labels)}


def extra_negative_info_nce(a_local, b_all, queue_b, logit_scale, rank=0, negative_mask=None, queue_share=1.0, positives=None):
    """One direction of the pair loss, ``a -> b``, with the queue as extra negatives.

    The positive and the in-batch negatives are ``b_all``'s rows (gathered
    with gradient, or the local rows with ``rank=0``); the queue of ``b``'s
    modality adds constant negatives. ``acc`` is the in-batch accuracy, as in
    :func:`symmetric_info_nce`, so logs compare with and without the queue.
    ``positives`` (both parts read) replaces ``negative_mask``, as in
    :func:`queue_info_nce`.
    """
    if positives is not None and negative_mask is not None:
        raise ValueError("give negative_mask or positives, not both")
    labels = contrastive_labels(a_local.shape[0], rank)
    in_batch = contrastive_logits(a_local, b_all, logit_scale)
    logits = _append_queue_logits(in_batch, a_local, queue_b, logit_scale, negative_mask, queue_share)
    if positives is not None:
        every = _with_queue_positives(positives.in_batch, positives, queue_share)
        loss = cross_entropy_with_positives(logits, labels, every, positives.mode)["loss"]
        return {"loss": loss, "acc": accuracy_with_positives(in_batch, labels, positives.in_batch, positives.mode)}
    return {"loss": F.cross_entropy(logits, labels), "acc": in_batch_accuracy(in_batch, labels)}


# ---------------------------------------------------------------- the config


class MomentumQueueConfig(NamedTuple):
    size: int
    mode: str
    momentum: float = 0.99
    # None: the model's (shared) logit scale; a number: the fixed BriVL temperature.
    temperature: Optional[float] = None
    warmup_steps: int = 0
    ramp_steps: int = 0
    mask_same_image: bool = False

    @property
    def extra_negatives(self):
        return self.mode in ("extra_negatives", "both")

    @property
    def brivl(self):
        return self.mode in ("brivl", "both")


def _parse_temperature(value):
    if value == "shared":
        return None
    if not isinstance(value, dict):
        raise ConfigError("temperature", f"expected 'shared' or a mapping {{init: 0.07}}, got {value!r}")
    check_known_keys(value, ("init", "learnable"), "temperature")
    if "init" not in value:
        raise ConfigError("temperature", "missing key 'init'")
    if value.get("learnable", False) is not False:
        raise ConfigError(
            "temperature.learnable",
            f"must be false, got {value['learnable']!r}: a learnable queue temperature would live in the "
            "loss, outside DataParallel's gradient sync; use 'temperature: shared' to learn it with the model's scale",
        )
    return positive_number(value["init"], "temperature.init")


def parse_momentum_queue(options):
    """The momentum queue term's options (every key given) as a :class:`MomentumQueueConfig`.

    Errors are :class:`ConfigError` keyed inside the term (``size``, ``temperature.init``);
    a temperature the chosen mode would ignore is refused.
    """
    one_of(options["mode"], QUEUE_MODES, "mode")
    if options["mode"] == "extra_negatives" and options["temperature"] != "shared":
        raise ConfigError("temperature", "only the brivl loss uses it; with mode extra_negatives the pairs use the model's scale")
    return MomentumQueueConfig(
        size=integer_at_least(options["size"], "size", 1),
        mode=options["mode"],
        momentum=number_in(options["momentum"], "momentum", 0.0, 1.0),
        temperature=_parse_temperature(options["temperature"]),
        warmup_steps=integer_at_least(options["warmup_steps"], "warmup_steps", 0),
        ramp_steps=integer_at_least(options["ramp_steps"], "ramp_steps", 0),
        mask_same_image=boolean(options["mask_same_image"], "mask_same_image"),
    )


def check_queue_terms(entries, declared):
    """At most one momentum queue (``declared``: what each entry of ``Loss.terms`` declares, its
    :class:`MomentumQueueConfig` for the queue); its extra negatives go to an info_nce term, and without the
    brivl loss it has no loss for a weight to scale."""
    listed = [(index, queue) for index, queue in enumerate(declared) if isinstance(queue, MomentumQueueConfig)]
    if len(listed) > 1:
        raise ConfigError(f"Loss.terms[{listed[1][0]}]", "a second momentum_queue: list one")
    if not listed:
        return
    index, queue = listed[0]
    if queue.extra_negatives and "info_nce" not in [entry.get("name") for entry in entries]:
        raise ConfigError(f"Loss.terms[{index}].mode", f"{queue.mode}: the queue's negatives join the info_nce terms, and none is listed")
    if not queue.brivl and "weight" in entries[index]:
        raise ConfigError(f"Loss.terms[{index}].weight", "only the brivl loss uses it; mode extra_negatives adds no loss of its own")


# ---------------------------------------------------------------- the trainer's object


class MomentumBatch(NamedTuple):
    """What the loss reads of the momentum queue for one step (the terms get it as ``inputs.momentum``)."""

    keys: dict  # {"image", "text"}: the momentum copy's features of the key views, [B, D]
    queue: CrossModalQueue
    share: float  # the queue's share of the softmax denominator (0: not used yet), see queue_share
    config: MomentumQueueConfig

    @property
    def adds_negatives(self):
        """Whether the info_nce pairs score the queue's entries this step."""
        return self.share > 0 and self.config.extra_negatives

    def scored(self, inputs):
        """``(mask, positives)`` of the loss's rows against the queue: the entries of the row's own image to drop
        (``mask_same_image``), and ``Loss.positives`` with its part over the queue; both only while it is scored."""
        active = self.share > 0
        mask = same_image_mask(inputs.ids["image"], self.queue.ids) if active and self.config.mask_same_image else None
        positives = inputs.positives
        if positives is not None and active:
            positives = positives._replace(queue=any_identity(inputs.ids, self.queue.identities()))
        return mask, positives

    def pair_loss(self, inputs, view_a, view_b):
        """One pair of an info_nce table, each direction with the queue of the other view's modality as extra
        negatives: ``{"loss", "acc_a2b", "acc_b2a"}``, as ``symmetric_info_nce`` gives them."""
        mask, positives = self.scored(inputs)
        local, gathered = inputs.local, inputs.gathered
        rank = inputs.rank if gathered else 0

        def one_way(a, b):
            entries = self.queue.entries(VIEW_MODALITY[b])
            return extra_negative_info_nce(local[a], gathered.get(b, local[b]), entries, inputs.logit_scale, rank, mask, self.share, positives)

        a2b, b2a = one_way(view_a, view_b), one_way(view_b, view_a)
        return {"loss": (a2b["loss"] + b2a["loss"]) / 2, "acc_a2b": a2b["acc"], "acc_b2a": b2a["acc"]}


class MomentumQueue(nn.Layer):
    """The EMA copy of the model and the queues of its keys; the trainer calls :meth:`keys_for` before the loss
    and :meth:`after_step` after the optimizer.

    ``config``: the term's :class:`MomentumQueueConfig`; ``embed_dim``: the keys' width;
    ``id_inputs``: ``{loss keyword: batch array}`` of the ids the loss reads (``image_ids``,
    ``caption_ids``), which the queue stores beside the keys.
    """

    def __init__(self, model, config, embed_dim, id_inputs=None, world_size=1):
        super().__init__()
        self.config, self.world_size = config, world_size
        self.id_inputs = dict(id_inputs or {})
        self.encoder = MomentumEncoder(model)
        self.queue = CrossModalQueue(
            embed_dim,
            config.size,
            views=tuple(KEY_VIEWS),
            track_ids="image_ids" in self.id_inputs,
            track_caption_ids="caption_ids" in self.id_inputs,
        )
        self._pending = None  # this step's keys and ids, enqueued after the optimizer step

    def keys_for(self, micro_batches, step, tags_as_text=False):
        """This step's :class:`MomentumBatch`: the copy's keys of every micro-batch, the queue and its share.

        One encoder call per micro-batch: each is trimmed to its own text length, so their
        ids cannot be stacked, and the activations stay those of one micro-batch.
        """
        image_view, text_view = KEY_VIEWS["image"], text_source(KEY_VIEWS["text"], tags_as_text)
        outs = [self.encoder(images=b[image_view], input_ids=b[text_view]) for b in micro_batches]
        keys = {key: paddle.concat([out[key] for out in outs]) for key in ("image", "text")}
        ids = {kw: paddle.concat([b[key] for b in micro_batches]) for kw, key in self.id_inputs.items()}
        return self.batch(keys, step, **ids)

    def batch(self, keys, step, image_ids=None, caption_ids=None):
        """The :class:`MomentumBatch` of given keys (``{"image", "text"}``, local rows); they and the ids are
        enqueued by the next :meth:`after_step`."""
        if isinstance(step, bool) or not isinstance(step, int):
            raise ValueError(f"step (optimizer steps taken) must be an integer, got {step!r}")
        self._pending = (keys, image_ids, caption_ids)
        cfg = self.config
        return MomentumBatch(keys, self.queue, queue_share(step, cfg.warmup_steps, cfg.ramp_steps, self.queue.is_full), cfg)

    def after_step(self, model):
        """Move the copy towards ``model`` and enqueue the keys and ids of the step just taken."""
        if self._pending is None:
            raise ValueError("after_step follows a step: keys_for (or batch) was not called since the last one")
        keys, image_ids, caption_ids = self._pending
        self._pending = None
        self.encoder.update(model, self.config.momentum)
        self.queue.enqueue(keys, image_ids, world_size=self.world_size, caption_ids=caption_ids)


def current_layout(extra):
    """A checkpoint's extra state as today's trainer writes it: the queue's encoder and queues under ``momentum``.

    Checkpoints written before the queue was one object kept the encoder under ``momentum_model`` and the
    queues in the loss's state (``queue.*``); they are moved to where :class:`MomentumQueue` keeps them.
    """
    if "momentum_model" not in extra:
        return extra
    loss = extra.get("loss", {})
    queues = {key: value for key, value in loss.items() if key.startswith("queue.")}
    encoder = {f"encoder.{key}": value for key, value in extra["momentum_model"].items()}
    rest = {key: value for key, value in extra.items() if key not in ("loss", "momentum_model")}
    return {**rest, "loss": {key: value for key, value in loss.items() if key not in queues}, "momentum": {**encoder, **queues}}


# ---------------------------------------------------------------- the loss term


class MomentumQueueTerm(Term):
    """BriVL's momentum queue: its negatives join the pair tables (``extra_negatives``), its own InfoNCE of the
    key views against the queue is a loss (``brivl``), or both. Logs ``queue/share``, and ``loss/brivl``,
    ``acc/brivl`` with the brivl loss. The keys and the queue come from :class:`MomentumQueue`, which the
    trainer builds for the ``momentum`` this term declares."""

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
        batch = inputs.momentum
        out = {"queue/share": paddle.to_tensor(batch.share)}
        if not self.momentum.brivl:
            return out
        mask, positives = batch.scored(inputs)
        scale = inputs.logit_scale if self.momentum.temperature is None else 1.0 / self.momentum.temperature
        image_query, text_query = inputs.local[KEY_VIEWS["image"]], inputs.local[KEY_VIEWS["text"]]
        keys, entries = batch.keys, batch.queue.entries
        i2t = queue_info_nce(image_query, F.normalize(keys["text"], axis=-1), entries("text"), scale, mask, batch.share, positives)
        t2i = queue_info_nce(text_query, F.normalize(keys["image"], axis=-1), entries("image"), scale, mask, batch.share, positives)
        out["loss/brivl"] = out["loss"] = (i2t["loss"] + t2i["loss"]) / 2
        out["acc/brivl"] = (i2t["acc"] + t2i["acc"]) / 2
        return out
