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
    """Multi-head attention on heads-first ``[batch, heads, seq, head_dim]`` tensors.

    ``bias`` is additive, broadcastable to ``[batch, heads, seq_q, seq_k]``.
    Returns ``[batch, heads, seq_q, head_dim]``.
    """
    if _use_fused_attention(q):
        # Paddle's fused kernel takes [batch, seq, heads, head_dim].
        q, k, v = (t.transpose([0, 2, 1, 3]) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout, training=dropout > 0)
        return out.transpose([0, 2, 1, 3])
    scale = q.shape[-1] ** -0.5
    scores = paddle.matmul(q * scale, k, transpose_y=True)
    if bias is not None:
        scores = scores + bias
    probs = F.softmax(scores, axis=-1)
    if dropout > 0:
        probs = F.dropout(probs, dropout)
    return paddle.matmul(probs, v)


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


# How a tower's weights start when it trains from scratch (loading weights overwrites every one).
# "xavier": uniform with variance 2 / (fan_in + fan_out) for every matrix, embedding table and
#   patch kernel; the ViT's class and position embeddings variance 1 / width. Scales with width.
# "bert": truncated normal, std 0.02, for every matrix and table: BERT's and ViT-B's recipe, tuned
#   for width 768. At width 128 it starts attention uniform and every [CLS] feature alike, and
#   from-scratch training barely moves (docs/training.md, "Training from scratch").
INIT_SCHEMES = ("xavier", "bert")


def check_init(scheme):
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown init {scheme!r}; known: {', '.join(INIT_SCHEMES)}")
    return scheme


def init_weights(tower, scheme, embeddings=()):
    """Initialise ``tower``'s Linear, Embedding and Conv2D weights by ``scheme``; biases to zero.

    ``embeddings``: free parameters ``[1, tokens, width]`` (class and position embeddings).
    LayerNorms keep their ones and zeros.
    """
    check_init(scheme)
    for layer in tower.sublayers(include_self=True):
        if isinstance(layer, (nn.Linear, nn.Embedding, nn.Conv2D)):
            init_matrix(layer.weight, scheme, *fans(layer))
            if getattr(layer, "bias", None) is not None:
                nn.initializer.Constant(0.0)(layer.bias)
    for param in embeddings:
        width = param.shape[-1]
        init_matrix(param, scheme, width, width)


def fans(layer):
    """(fan-in, fan-out) of a layer's weight, seen as a linear map."""
    if isinstance(layer, nn.Embedding):
        # A table of token vectors, read one row at a time: each row is scaled like the ViT's
        # free token embeddings, whatever the number of rows. Seen as a linear map from a
        # one-hot of V, Xavier would shrink the rows with V: at the released 40k vocabulary
        # they started 14x below the position embeddings, and make demo's recipe reached a
        # MeanRecall of 12 instead of 80 (docs/finetuning.md, "The vocabulary").
        width = layer.weight.shape[1]
        return width, width
    if isinstance(layer, nn.Conv2D):
        # A patchify convolution (stride = kernel) is a linear map from a patch to a
        # token: fan-in C*k*k, fan-out D. Paddle's conv rule (fan-out D*k*k) made
        # the patch embeddings ~6x smaller than that, below the position embeddings.
        out_channels, in_channels, kh, kw = layer.weight.shape
        return in_channels * kh * kw, out_channels
    fan_in, fan_out = layer.weight.shape
    return fan_in, fan_out


def init_matrix(param, scheme, fan_in, fan_out):
    """One weight by ``scheme``: truncated normal 0.02 (bert), or Xavier-uniform for the given fans."""
    if scheme == "bert":
        nn.initializer.TruncatedNormal(std=0.02)(param)
    else:
        nn.initializer.XavierUniform(fan_in=fan_in, fan_out=fan_out)(param)


def run_block(block, recompute, *args, **kwargs):
    """``block(*args, **kwargs)``, through activation recomputation when ``recompute``."""
    if recompute:
        from paddle.distributed.fleet.utils import recompute as recompute_block

        return recompute_block(block, *args, **kwargs)
    return block(*args, **kwargs)
