"""ERNIE-ViL 2.0's multi-view contrastive loss, driven by a table of view pairs.

Each ``[view_a, view_b, weight]`` entry adds ``weight * symmetric_info_nce``
between two views. The total is the plain weighted sum, not divided by the sum
of weights: a weight means the same thing whatever else is in the table, and a
one-pair table with weight ``w`` gives ``w`` times the CLIP loss.

An optional BriVL momentum queue (``momentum.py``) adds queue negatives to
every pair, a BriVL term, or both. Optional positives (``positives.py``) stop
candidates of the row's own image (or caption) from being its negatives.
"""
import paddle.nn as nn
import paddle.nn.functional as F

from ..views import KEY_VIEWS
from .distributed import all_gather_rows, check_equal_local_batch, gather_with_grad
from .momentum import CrossModalQueue, parse_momentum_queue, queue_share, same_image_mask
from .contrastive import contrastive_labels
from .positives import IDENTITY_INPUTS, Positives, any_identity, parse_positives, positive_mask
from .terms import InfoNCEPairs, LossInputs, MomentumQueueTerm, QueueState


class MultiViewContrastiveLoss(nn.Layer):
    """The sum of loss terms (``terms.py``): the pair table, the momentum queue, and any further terms.

    ``forward(features, logit_scale)`` takes ``{view: (B, D) tensor}``, raw or
    already normalised (rows are L2-normalised here; normalising twice changes
    nothing), and the scalar logit scale owned by the model. It returns
    ``loss`` (the sum of the terms' weighted losses) and, per pair,
    ``loss/<a>-<b>`` and ``acc/<a>-<b>`` (mean of both directions' in-batch
    top-1 accuracy), all tensors. With ``gather`` and ``world_size > 1``
    negatives come from every rank, each view gathered once, with gradient
    (see ``distributed.py``).

    ``momentum_queue`` (a config mapping, see :func:`parse_momentum_queue`)
    adds a :class:`CrossModalQueue` of ``embed_dim``-wide keys; ``forward``
    then also takes ``keys``, ``image_ids`` and ``step``, returns
    ``queue/share`` (and ``loss/brivl``, ``acc/brivl`` with the brivl
    term), and ``enqueue`` must follow each optimizer step (the call sequence
    is at the top of ``momentum.py``). Without it nothing changes.

    ``terms``: further built terms (from ``LOSS_TERMS``), added after these;
    with any, the pair table may be empty (``pairs: []``: those terms carry the loss).

    ``positives`` (a config mapping, see :func:`parse_positives`): candidates
    sharing the row's image id (and, with ``same_caption``, its caption id)
    are masked or become further targets, in the pair table and the queue.
    ``forward`` then takes ``image_ids`` (and ``caption_ids``), int64
    ``[B]``, -1 where unknown; ``id_inputs`` maps those keywords to the batch
    arrays that hold them. The ids are gathered from every rank (no gradient)
    with the features.
    """

    def __init__(self, pairs, rank=0, world_size=1, gather=True, momentum_queue=None, embed_dim=None, terms=(), positives=None):
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.positives = parse_positives(positives)
        self.queue_config = None if momentum_queue is None else parse_momentum_queue(momentum_queue)
        if self.positives is not None and self.queue_config is not None and self.queue_config.mask_same_image:
            raise ValueError("momentum_queue.mask_same_image: positives already decide the queue's same-image entries; drop it")
        brivl_alone = self.queue_config is not None and self.queue_config.mode == "brivl"
        pair_table = InfoNCEPairs(pairs, allow_empty=brivl_alone or bool(terms))
        self.pairs = pair_table.pairs
        queue_terms = [] if self.queue_config is None else [MomentumQueueTerm(self.queue_config)]
        self.added_terms = tuple(terms)
        self.terms = [pair_table, *queue_terms, *terms]
        # Terms with parameters of their own (the sigmoid term's scale and bias) are
        # sub-layers: they go into state_dict (checkpoints) and parameters() (the optimizer).
        self.term_layers = nn.LayerList([term for term in terms if isinstance(term, nn.Layer)])
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
            embed_dim,
            self.queue_config.size,
            views=tuple(KEY_VIEWS),
            track_ids=self.queue_config.mask_same_image or self.positives is not None,
            track_caption_ids=self.positives is not None and self.positives.same_caption,
        )

    @property
    def uses_logit_scale(self):
        """Whether any term reads the model's logit scale (the InfoNCE temperature).

        With none (the sigmoid term alone, which has its own scale), the temperature
        gets no gradient and must not be trained: DataParallel would wait for it.
        """
        cfg = self.queue_config
        brivl_reads_it = cfg is not None and cfg.brivl and cfg.temperature is None
        return bool(self.pairs) or brivl_reads_it or any(getattr(term, "uses_logit_scale", True) for term in self.added_terms)

    @property
    def required_views(self):
        """The views the loss uses: the only ones the model must compute."""
        return frozenset().union(*(term.views for term in self.terms))

    @property
    def id_inputs(self):
        """``{forward keyword: batch array}`` of the ids this loss needs (none without positives or a masking queue)."""
        kinds = self.positives.identities if self.positives is not None else ()
        if not kinds and self.queue_config is not None and self.queue_config.mask_same_image:
            kinds = ("image",)
        return dict(IDENTITY_INPUTS[kind] for kind in kinds)

    def forward(self, features, logit_scale, keys=None, image_ids=None, step=None, caption_ids=None):
        ids = self._checked_ids(image_ids, caption_ids)
        share = self._queue_share(keys, image_ids, step)
        local = self._normalised_views(features)
        gathered_views = frozenset().union(*(term.gathered_views for term in self.terms))
        gathered = self._gathered_views({v: local[v] for v in gathered_views})
        queue = None
        if self.queue_config is not None:
            queue = QueueState(self.queue, self.queue_config, share, self._same_image_mask(image_ids, share))
        positives = self._positives(ids, bool(gathered), share)
        inputs = LossInputs(local, gathered, logit_scale, self.rank, queue, keys, positives)
        out = {}
        total = 0.0
        for term in self.terms:
            terms = term(inputs)
            if "loss" in terms:
                total = total + terms.pop("loss")
            out.update(terms)
        out["loss"] = total
        return out

    def enqueue(self, keys, image_ids=None, caption_ids=None):
        """Push this step's momentum keys (``{"image", "text"}``, local rows) and ids from every rank into the queues."""
        if self.queue is None:
            raise ValueError("enqueue needs a momentum_queue in the loss config")
        self.queue.enqueue(keys, image_ids, world_size=self.world_size, caption_ids=caption_ids)

    def _checked_ids(self, image_ids, caption_ids):
        """``{kind: int64 [B]}`` of the positives' identities (empty without positives)."""
        wanted = self.positives.identities if self.positives is not None else ()
        given = {"image": image_ids, "caption": caption_ids}
        if caption_ids is not None and "caption" not in wanted:
            raise ValueError("caption_ids feed Loss.positives with same_caption, which is not configured")
        for kind in wanted:
            if given[kind] is None:
                raise ValueError(f"Loss.positives needs {IDENTITY_INPUTS[kind][0]} (int64 [B], -1 where unknown)")
        return {kind: given[kind].astype("int64") for kind in wanted}

    def _positives(self, ids, gathered, share):
        """The :class:`Positives` of this batch's rows among the (gathered) candidates and the queue."""
        if self.positives is None:
            return None
        candidates = {kind: self._gathered_ids(x) for kind, x in sorted(ids.items())} if gathered else ids
        local_batch = next(iter(ids.values())).shape[0]
        labels = contrastive_labels(local_batch, self.rank if gathered else 0)
        in_batch = positive_mask(ids, candidates, labels)
        queue = None
        if share > 0:
            queue = any_identity(ids, self.queue.identities())
        return Positives(self.positives.mode, in_batch, queue)

    def _gathered_ids(self, ids):
        # No gradient to carry: ids only decide which candidates are positives.
        return all_gather_rows(ids, self.world_size)

    def _queue_share(self, keys, image_ids, step):
        if self.queue_config is None:
            # With positives, image ids are theirs; without, only the queue would read them.
            fed = (keys, step) if self.positives is not None else (keys, image_ids, step)
            if any(x is not None for x in fed):
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
