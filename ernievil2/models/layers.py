"""Building blocks shared by both towers."""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F


def _use_fused_attention(q):
    # FlashAttention kernels exist only for half precision on CUDA; on CPU and in
    # fp32 the explicit form below is both the reference and the faster path.
    # (The device is asked globally: under to_static a tensor has no place yet.)
    return (
        q.dtype in (paddle.float16, paddle.bfloat16)
        and paddle.is_compiled_with_cuda()
        and paddle.get_device().startswith("gpu")
    )


def scaled_dot_attention(q, k, v, bias=None, dropout=0.0):
    """Multi-head attention on ``[batch, seq, heads, head_dim]`` tensors.

    ``bias`` is additive, broadcastable to ``[batch, heads, seq_q, seq_k]``.
    Returns ``[batch, seq, heads, head_dim]``.
    """
    if _use_fused_attention(q):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout, training=dropout > 0)
    scale = q.shape[-1] ** -0.5
    q, k, v = (t.transpose([0, 2, 1, 3]) for t in (q, k, v))
    scores = paddle.matmul(q * scale, k, transpose_y=True)
    if bias is not None:
        scores = scores + bias
    probs = F.softmax(scores, axis=-1)
    if dropout > 0:
        probs = F.dropout(probs, dropout)
    return paddle.matmul(probs, v).transpose([0, 2, 1, 3])


class DropPath(nn.Layer):
    """Stochastic depth: drops the residual branch per sample while training."""

    def __init__(self, rate=0.0):
        super().__init__()
        self.rate = rate

    def forward(self, x):
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = paddle.floor(keep + paddle.rand([x.shape[0]] + [1] * (x.ndim - 1), dtype=x.dtype))
        return x / keep * mask


def run_block(block, recompute, *args, **kwargs):
    """``block(*args, **kwargs)``, through activation recomputation when ``recompute``."""
    if recompute:
        from paddle.distributed.fleet.utils import recompute as recompute_block

        return recompute_block(block, *args, **kwargs)
    return block(*args, **kwargs)
