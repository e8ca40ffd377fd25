"""All-gather that lets the gradient flow back to every rank's features (and one without, for ids).

``paddle.distributed.all_gather`` returns tensors with ``stop_gradient=True``:
other ranks' rows then act as constants, and each rank learns only from the
gradient its own loss sends to its own rows. That is why the official ERNIE-ViL
loss (and PaddleNLP's) end up training on local negatives only.

Why no extra scaling is needed with ``paddle.DataParallel``
------------------------------------------------------------
Let rank ``r`` hold features ``f_r`` and compute ``L_r``, the mean over its
``B`` local rows scored against the gathered ``R * B`` candidates. The global
loss is ``L = mean_r L_r`` (equal local batches). Backward of the gather
all-reduces (sums) the gradient arriving at the gathered tensor and keeps this
rank's slice, so rank ``r`` ends up with ``sum_s dL_s/df_r = R * dL/df_r``:
every rank's loss reaches ``f_r`` through the gathered copy, and its own loss
also through the local rows. DataParallel then *averages* parameter gradients,
``(1/R) sum_r R * dL/df_r * df_r/dtheta = dL/dtheta``: exactly the gradient of
the single-process loss over the global batch. The ``R`` from the sum and the
``1/R`` from the average cancel, so the loss must not be rescaled. (Replicated
parameters used outside the gather, such as the logit scale, get
``mean_r dL_r/ds = dL/ds`` from the same average.)
"""
import paddle
import paddle.distributed as dist
from paddle.autograd import PyLayer


class _GatherWithGrad(PyLayer):
    @staticmethod
    def forward(ctx, x, group):
        pieces = []
        dist.all_gather(pieces, x, group=group)
        ctx.group = group
        ctx.rows = x.shape[0]
        ctx.rank = dist.get_rank(group)
        return paddle.concat(pieces, axis=0)

    @staticmethod
    def backward(ctx, grad):
        # all_reduce works in place; the incoming gradient may be shared.
        total = grad.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
        start = ctx.rank * ctx.rows
        return total[start : start + ctx.rows]


def gather_with_grad(x, group=None):
    """Concatenate ``x`` from every rank along axis 0, keeping the gradient.

    Every rank must pass the same shape (see :func:`check_equal_local_batch`).
    With a world size of 1 it returns ``x`` itself and needs no process group.
    """
    if dist.get_world_size(group) == 1:
        return x
    return _GatherWithGrad.apply(x, group)


def all_gather_rows(x, world_size, group=None):
    """Rows of ``x`` from every rank, in rank order, without gradient (ids, momentum keys).

    ``world_size`` is the caller's: a mismatch with the process group is an error.
    """
    if world_size == 1:
        return x
    pieces = []
    dist.all_gather(pieces, x, group=group)
    gathered = paddle.concat(pieces, axis=0)
    if gathered.shape[0] != world_size * x.shape[0]:
        raise ValueError(
            f"gathered {gathered.shape[0]} rows from {x.shape[0]} local ones, but world_size is "
            f"{world_size}; pass the process group's world size"
        )
    return gathered


def check_equal_local_batch(local_batch, group=None):
    """Raise ``ValueError`` on every rank unless all ranks hold ``local_batch`` rows.

    Gloo aborts the process on an all-gather of unequal shapes and the label
    offsets ``rank * B`` assume equal chunks, so the sizes are compared first.
    """
    if dist.get_world_size(group) == 1:
        return
    sizes = []
    dist.all_gather(sizes, paddle.to_tensor([local_batch], dtype="int64"), group=group)
    sizes = [int(s.item()) for s in sizes]
    if len(set(sizes)) > 1:
        raise ValueError(
            f"gathered contrastive loss needs the same local batch on every rank, got "
            f"{dict(enumerate(sizes))} (rank: rows); drop the last incomplete batch"
        )
