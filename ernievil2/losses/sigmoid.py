"""The sigmoid (SigLIP) pair loss, with its own learnable scale and bias.

Every (row, candidate) pair is an independent binary question, "is this the
positive?": for unit rows ``a_i``, ``b_j`` of two views, the scale ``t`` and
the bias ``c``::

    z_ij = t · a_i·b_j + c        y_ij = +1 if i == j else -1
    loss = -(1/N) Σ_i Σ_j log σ(y_ij · z_ij)          (N rows in the global batch)

The loss is a sum over pairs, so it splits into chunks of candidates: no
softmax ties a row to every other candidate at once. That is what lets the
distributed form avoid the all-gather. Rank ``r`` keeps its ``a`` rows; the
``b`` rows pass round a ring (rank ``r`` sends to ``r+1`` and receives from
``r-1``, ``R - 1`` times), and each rank scores its ``a`` rows against every
chunk as it arrives. Rank ``r``'s loss is ``(1/B) Σ_{i on r} Σ_j``, so the
mean of the rank losses is the global loss above (equal local batches).

The gradient: the ring shift is an autograd op whose backward shifts the
gradient the other way (to ``r-1``). A chunk's gradient thus follows it back
to its owner, hop by hop, collecting what each rank's loss sent it, so rank
``r``'s own ``b`` rows end with ``Σ_s dL_s/db_r``, and its ``a`` rows with
``dL_r/da_r``: ``R`` times the global loss's gradient, the same contract as
:func:`~ernievil2.losses.distributed.gather_with_grad`, which DataParallel's
average turns into the exact gradient. The scale and bias belong to the loss
(not the model, whose state keeps the official layout): each rank's gradient
is ``dL_r/dt``, and their mean (``ernievil2.engine.steps.average_gradients``,
called by the trainer) is ``dL/dt``.

Initialisation: ``t = 10`` (stored as ``log t``) as in SigLIP, and ``c =
-ln(global batch)`` (``bias_init: auto``, the default), so that a row's one
positive and its many negatives start in balance and the first steps are not
spent pushing the negatives down; SigLIP's ``c = -10`` is that value for its
batch of 32k. The scale is clamped to ``[1, max_logit_scale]``
like the InfoNCE temperature (:func:`~ernievil2.models.dual_encoder.clamp_logit_scale`).
"""
import math

import paddle
import paddle.distributed as dist
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.autograd import PyLayer

from ..models.dual_encoder import clamp_logit_scale
from ..registry import ConfigError
from ..validate import is_real_number
from .distributed import check_equal_local_batch
from .terms import Term, parse_view_pairs, views_of


def sigmoid_logits(a, b, scale, bias):
    """``scale * a @ b.T + bias``: the logits of every (row of ``a``, row of ``b``) pair."""
    return scale * paddle.matmul(a, b, transpose_y=True) + bias


def sigmoid_block_loss(a, b, scale, bias, positives):
    """``-Σ log σ(y·z)`` over one block of pairs (a sum, not a mean).

    ``positives``: whether ``b`` is ``a``'s own chunk, whose diagonal holds the
    positives (``y = +1``); every other pair is a negative (``y = -1``).
    """
    logits = sigmoid_logits(a, b, scale, bias)
    signs = -paddle.ones_like(logits)
    if positives:
        if a.shape[0] != b.shape[0]:
            raise ValueError(f"paired views need the same number of rows, got {a.shape[0]} and {b.shape[0]}")
        signs = signs + 2 * paddle.eye(a.shape[0], dtype=logits.dtype)
    return -F.log_sigmoid(signs * logits).sum()


def chunked_sigmoid_loss(a, b_chunks, scale, bias, own=0):
    """This rank's SigLIP loss: ``a``'s rows against every chunk of candidates, over ``len(a)``.

    ``b_chunks``: the candidate rows in chunks, ``b_chunks[own]`` being the
    rows paired with ``a`` row by row. With ``[b]`` it is the single-process
    loss; with every rank's chunk, the mean over ranks is the global loss.
    """
    if not 0 <= own < len(b_chunks):
        raise ValueError(f"own chunk {own} is not among the {len(b_chunks)} chunks")
    total = 0.0
    for index, chunk in enumerate(b_chunks):
        total = total + sigmoid_block_loss(a, chunk, scale, bias, positives=index == own)
    return total / a.shape[0]


# Process groups of neighbouring ranks, {world size: [group of ranks (r, r+1) for each r]}.
_NEIGHBOUR_GROUPS = {}


def _neighbour_groups():
    """One two-rank process group per link of the ring, made on first use (every rank makes every group, in order).

    Gloo tags each message with a counter of its process group's operations, so a
    send and its receive match only if both ranks have issued as many operations on
    that group. On the global group the ring's sends and receives cannot line up for
    an odd number of ranks; on a group of its own, each link's two ranks count only
    that link's messages.
    """
    world = dist.get_world_size()
    if world not in _NEIGHBOUR_GROUPS:
        _NEIGHBOUR_GROUPS[world] = [dist.new_group(sorted({r, (r + 1) % world})) for r in range(world)]
    return _NEIGHBOUR_GROUPS[world]


def _exchange(x, forward):
    """Send ``x`` one step round the ring (to ``r+1``, or to ``r-1`` when not ``forward``) and receive the rows coming in.

    Even ranks send first and odd ranks receive first: gloo's send blocks until
    it is matched, so a ring where every rank sends first deadlocks, while this
    order always leaves some rank receiving (any world size >= 2).
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    groups = _neighbour_groups()
    before, after = (rank - 1) % world, (rank + 1) % world
    # Link r joins ranks r and r+1.
    send_to, send_link, receive_from, receive_link = (
        (after, groups[rank], before, groups[before]) if forward else (before, groups[before], after, groups[rank])
    )
    x = x.contiguous()
    received = paddle.empty_like(x)
    if rank % 2 == 0:
        dist.send(x, send_to, group=send_link)
        dist.recv(received, receive_from, group=receive_link)
    else:
        dist.recv(received, receive_from, group=receive_link)
        dist.send(x, send_to, group=send_link)
    return received


class _RingShift(PyLayer):
    """Forward: rank r's rows go to rank r+1. Backward: the gradient goes back to rank r-1."""

    @staticmethod
    def forward(ctx, x):
        return _exchange(x, forward=True)

    @staticmethod
    def backward(ctx, grad):
        return _exchange(grad, forward=False)


def ring_shift(x):
    """Rank ``r-1``'s ``x`` (every rank passes the same shape), with the gradient sent back to it."""
    return _RingShift.apply(x)


def ring_sigmoid_loss(a, b, scale, bias):
    """This rank's SigLIP loss, ``b`` passed round the ring of all ranks; on one process the plain loss.

    Chunk ``k`` (after ``k`` shifts) is rank ``r-k``'s ``b``; only chunk 0 holds
    ``a``'s positives. Each chunk is scored as it arrives: at most two chunks of
    ``b`` and one ``B x B`` block of logits are needed at a time in forward
    (autograd keeps the blocks' inputs for backward, as the gathered InfoNCE does).
    """
    world = dist.get_world_size()
    if world == 1:
        return chunked_sigmoid_loss(a, [b], scale, bias)
    check_equal_local_batch(a.shape[0])
    total = sigmoid_block_loss(a, b, scale, bias, positives=True)
    chunk = b
    for _ in range(world - 1):
        chunk = ring_shift(chunk)
        total = total + sigmoid_block_loss(a, chunk, scale, bias, positives=False)
    return total / a.shape[0]


def auto_bias(global_batch):
    """``-ln(global_batch)``: the sigmoid bias at which a row's one positive and its negatives start in balance."""
    if isinstance(global_batch, bool) or not isinstance(global_batch, int) or global_batch < 1:
        raise ValueError(f"bias_init: auto needs the global batch size (a positive integer), got {global_batch!r}")
    return -math.log(global_batch)


def _check_init(name, value, positive=False):
    if isinstance(value, bool) or not is_real_number(value) or (positive and value <= 0):
        raise ConfigError(name, f"expected a {'positive ' if positive else ''}finite number, got {value!r}")


class SigmoidPairs(nn.Layer, Term):
    """``sum(weight * SigLIP loss)`` over a table of view pairs, with one learnable scale and bias.

    A loss term (``terms.py``): ``{name: sigmoid, pairs: [[view_a, view_b,
    weight], ...], scale_init, bias_init, max_logit_scale}``. The pairs share
    the term's scale and bias. ``bias_init: auto`` (the default) starts the bias
    at ``-ln(global_batch)``, the log-odds of one positive among the global batch
    (``global_batch`` comes from the trainer: rows per rank and micro-batch x
    micro-batches x ranks); SigLIP's -10 is that value for its batch of 32k. On
    the demo -10 fell 8-17 MeanRecall behind it at batches 16-128 (docs/ablation.md).
    ``view_a`` stays on its rank, ``view_b`` passes round the ring (the loss is
    symmetric in the two). Logs
    ``loss/sigmoid/<a>-<b>``, ``sigmoid/scale`` and ``sigmoid/bias``.
    It reads only local rows: no view is gathered for it.
    """

    gathered_views = frozenset()
    uses_logit_scale = False  # the model's InfoNCE temperature: this term has its own scale
    logs = {"sigmoid/scale": "sigmoid_scale", "sigmoid/bias": "sigmoid_bias"}

    def __init__(self, pairs, scale_init=10.0, bias_init="auto", max_logit_scale=100.0, global_batch=None):
        super().__init__()
        self.pairs = self.check(pairs, scale_init, bias_init, max_logit_scale)
        self.views = views_of(self.pairs)
        if bias_init == "auto":
            bias_init = auto_bias(global_batch)
        self.max_logit_scale = float(max_logit_scale)
        self.logit_scale_b = self.create_parameter(
            [1], dtype="float32", default_initializer=nn.initializer.Constant(math.log(scale_init))
        )
        self.bias = self.create_parameter([1], dtype="float32", default_initializer=nn.initializer.Constant(float(bias_init)))

    @staticmethod
    def check(pairs, scale_init=10.0, bias_init="auto", max_logit_scale=100.0):
        """The pairs, parsed; the other options checked (``auto`` needs the trainer's batch, checked when built)."""
        pairs = parse_view_pairs(pairs)
        _check_init("scale_init", scale_init, positive=True)
        if bias_init != "auto":
            _check_init("bias_init", bias_init)
        _check_init("max_logit_scale", max_logit_scale, positive=True)
        if not 1 <= scale_init <= max_logit_scale:
            raise ConfigError("scale_init", f"{scale_init} is outside the clamp [1, max_logit_scale={max_logit_scale}]")
        return pairs

    def scale(self):
        return clamp_logit_scale(self.logit_scale_b, self.max_logit_scale).squeeze()

    def forward(self, inputs):
        scale, bias = self.scale(), self.bias.squeeze()
        out = {}
        total = 0.0
        for pair in self.pairs:
            a, b = inputs.local[pair.view_a], inputs.local[pair.view_b]
            loss = ring_sigmoid_loss(a, b, scale.astype(a.dtype), bias.astype(a.dtype))
            out[f"loss/sigmoid/{pair.name}"] = loss
            total = total + pair.weight * loss
        out["sigmoid/scale"] = scale.detach()
        out["sigmoid/bias"] = bias.detach()
        out["loss"] = total
        return out
