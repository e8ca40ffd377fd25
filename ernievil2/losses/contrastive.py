"""Contrastive (InfoNCE) maths as pure tensor functions.

Rank is passed in as data, never read from a process group, so every function
here runs (and is tested) in a single process.

Notation: ``a_local``/``b_local`` are this rank's ``B`` rows of two views, paired
row by row and L2-normalised; ``a_all``/``b_all`` are the same views gathered
from every rank (``R * B`` rows, rank ``r``'s rows at ``r*B : (r+1)*B``).

``symmetric_info_nce`` is the "local loss" form: only the local rows are scored,
against the global candidates. Each rank's loss is a mean over its ``B`` rows;
every rank holds the same number of rows, so the mean of the rank losses is
exactly the mean over the ``R * B`` rows of the global batch. Unequal local
batches would need per-rank weights and label offsets; instead they are
rejected (see ``ernievil2.losses.distributed.check_equal_local_batch``).
"""
import paddle
import paddle.nn.functional as F

from .positives import cross_entropy_with_positives


def contrastive_logits(a, b, logit_scale):
    """``logit_scale * a @ b.T``: scaled cosine similarities of unit rows."""
    return logit_scale * paddle.matmul(a, b, transpose_y=True)


def contrastive_labels(local_batch, rank=0):
    """Column of each local row's positive among the gathered candidates."""
    return paddle.arange(local_batch, dtype="int64") + rank * local_batch


def in_batch_accuracy(logits, labels):
    """Fraction of rows whose highest-scoring candidate is the positive."""
    hits = paddle.argmax(logits, axis=1) == labels
    return hits.astype(logits.dtype).mean()


def check_gathered(a_local, b_local, a_all, b_all, rank):
    """A ValueError unless the paired rows match and the gathered ones (both or neither) hold them at ``rank``."""
    if (a_all is None) != (b_all is None):
        raise ValueError("a_all and b_all must be given together (both gathered or neither)")
    if a_local.shape[0] != b_local.shape[0]:
        raise ValueError(
            f"paired views need the same number of rows, got {a_local.shape[0]} and {b_local.shape[0]}"
        )
    if a_all is None:
        return
    local, total = a_local.shape[0], a_all.shape[0]
    if b_all.shape[0] != total:
        raise ValueError(f"gathered views differ in rows: {total} and {b_all.shape[0]}")
    if local == 0 or total % local or not 0 <= rank < total // local:
        raise ValueError(
            f"gathered batch of {total} rows is not world_size equal chunks of the "
            f"local {local} rows with this rank ({rank}) among them"
        )


def symmetric_info_nce(a_local, b_local, logit_scale, a_all=None, b_all=None, rank=0, positives=None):
    """CLIP's symmetric InfoNCE of the local rows against all candidates.

    Returns a dict: ``loss`` (mean of the two directions), ``loss_a2b``,
    ``loss_b2a``, ``acc_a2b``, ``acc_b2a`` (in-batch top-1 accuracy). Without
    ``a_all``/``b_all`` it is the single-process CLIP loss. ``positives``
    (a :class:`~ernievil2.losses.positives.Positives`) names further positives
    among the candidates; both directions share it, since rows ``i`` of ``a``
    and ``b`` are the same sample.
    """
    check_gathered(a_local, b_local, a_all, b_all, rank)
    if a_all is None:
        a_all, b_all, rank = a_local, b_local, 0
    labels = contrastive_labels(a_local.shape[0], rank)
    logits_a2b = contrastive_logits(a_local, b_all, logit_scale)
    logits_b2a = contrastive_logits(b_local, a_all, logit_scale)
    if positives is not None:
        a2b = cross_entropy_with_positives(logits_a2b, labels, positives.in_batch, positives.mode)
        b2a = cross_entropy_with_positives(logits_b2a, labels, positives.in_batch, positives.mode)
        return {
            "loss": (a2b["loss"] + b2a["loss"]) / 2,
            "loss_a2b": a2b["loss"],
            "loss_b2a": b2a["loss"],
            "acc_a2b": a2b["acc"],
            "acc_b2a": b2a["acc"],
        }
    loss_a2b = F.cross_entropy(logits_a2b, labels)
    loss_b2a = F.cross_entropy(logits_b2a, labels)
    return {
        "loss": (loss_a2b + loss_b2a) / 2,
        "loss_a2b": loss_a2b,
        "loss_b2a": loss_b2a,
        "acc_a2b": in_batch_accuracy(logits_a2b, labels),
        "acc_b2a": in_batch_accuracy(logits_b2a, labels),
    }

