"""The ERNIE-ViL 2.0 image tower: a pre-LN ViT whose parameter names are the official ones.

``state_dict`` keys (under the model's ``visual.`` prefix) are exactly those of
``OPEN_ERNIE_VIL2_BASE_ViT.pdparams``: ``class_embedding`` (1, 1, D),
``positional_embedding`` (1, 1+N, D), ``patch_embed.proj.weight`` (no bias),
``norm_pre``, ``blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``,
``norm_post``. The feature is ``norm_post(x)[:, 0]``: no projection.
"""
import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .cpu_ops import Linear, merge_heads, split_heads
from .layers import DropPath, check_init, init_weights, run_block, scaled_dot_attention
from .tower import groups_by_prefix, norms_and_biases


def kept_patch_count(num_patches, keep):
    """How many of ``num_patches`` patch tokens a keep ratio in (0, 1] leaves: round(N * keep), at least 1."""
    if not 0 < keep <= 1:
        raise ValueError(f"patch keep ratio must be in (0, 1], got {keep!r}")
    return max(1, int(num_patches * keep + 0.5))


def kept_patch_indices(batch, num_patches, keep):
    """``[batch, K]`` int64: per sample, K = :func:`kept_patch_count` distinct patch indices, ascending.

    Each row is a uniformly random subset (the first K of a random permutation:
    the argsort of uniform noise), drawn from Paddle's generator, so that
    ``paddle.seed`` and ``paddle.set_rng_state`` replay it (GradCache's second
    pass, an exact resume).
    """
    count = kept_patch_count(num_patches, keep)
    noise = paddle.rand([batch, num_patches])
    return paddle.sort(paddle.argsort(noise, axis=1)[:, :count], axis=1)


def keep_patch_tokens(tokens, indices):
    """``tokens`` ``[B, 1+N, D]`` (the class token first) -> ``[B, 1+K, D]``: the class token and the patches at ``indices``."""
    patches = paddle.take_along_axis(tokens[:, 1:], indices.unsqueeze(-1).expand([-1, -1, tokens.shape[2]]), axis=1)
    return paddle.concat([tokens[:, :1], patches], axis=1)


def quick_gelu(x):
    return x * F.sigmoid(1.702 * x)


# The MLP activation: the official model's QuickGELU, or another for training from scratch.
ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": F.gelu, "relu": F.relu}


class Mlp(nn.Layer):
    def __init__(self, dim, hidden, drop=0.0, act="quick_gelu"):
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.fc2 = Linear(hidden, dim)
        self.drop = nn.Dropout(drop)
        self.act = ACTIVATIONS[act]

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Layer):
    def __init__(self, dim, num_heads, qkv_bias=True, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = Linear(dim, dim * 3, bias_attr=None if qkv_bias else False)
        self.proj = Linear(dim, dim)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x, cls_only=False):
        """Attention over every token; with ``cls_only``, the output of the first (class) token alone."""
        # The fused qkv output is laid out (3, heads, head_dim) per token, as in the official layer.
        q, k, v = split_heads(self.qkv(x), self.num_heads, parts=3)
        if cls_only:
            q = q[:, :, :1]
        out = scaled_dot_attention(q, k, v, None, self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(merge_heads(out)))


class Block(nn.Layer):
    def __init__(self, dim, num_heads, mlp_ratio, qkv_bias, epsilon, drop, attn_drop, drop_path, act="quick_gelu"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, epsilon=epsilon)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, epsilon=epsilon)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop, act)

    def forward(self, x, cls_only=False):
        """``cls_only``: the class token's output alone (``[B, 1, D]``); every other row is per token."""
        attended = self.drop_path(self.attn(self.norm1(x), cls_only))
        x = (x[:, :1] if cls_only else x) + attended
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Layer):
    """Non-overlapping patches times the kernel of a stride-``patch`` convolution, as one matmul.

    The weight is the official ``patch_embed.proj.weight`` ``[D, C, p, p]`` (held by
    a Conv2D so the key and shape stay the checkpoint's), but the product is
    computed as unfolded patches ``[B, N, C*p*p]`` times the flattened kernel: the
    same numbers, and Paddle's CPU conv kernel (forward and backward) took a fifth
    of a demo-size training step where the matmul takes a few percent.
    """

    def __init__(self, img_size, patch_size, in_chans, embed_dim):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid = img_size // patch_size
        self.num_patches = self.grid**2
        self.proj = nn.Conv2D(in_chans, embed_dim, patch_size, stride=patch_size, bias_attr=False)

    def forward(self, x):
        if x.shape[-1] != self.img_size or x.shape[-2] != self.img_size:
            raise ValueError(f"expected {self.img_size}x{self.img_size} images, got {list(x.shape[-2:])}")
        g, p, channels = self.grid, self.patch_size, x.shape[1]
        patches = x.reshape([-1, channels, g, p, g, p]).transpose([0, 2, 4, 1, 3, 5]).reshape([-1, g * g, channels * p * p])
        kernel = self.proj.weight.reshape([self.proj.weight.shape[0], -1])
        return paddle.matmul(patches, kernel, transpose_y=True)


class VisionTransformer(nn.Layer):
    # Layer-wise decay's first group: everything before the blocks.
    STEM = ("patch_embed.", "class_embedding", "positional_embedding", "norm_pre.")
    def __init__(
        self,
        img_size=224,
        patch_size=16,
        in_chans=3,
        embed_dim=768,
        depth=12,
        num_heads=12,
        mlp_ratio=4.0,
        qkv_bias=True,
        epsilon=1e-6,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.0,
        recompute=False,
        init="xavier",
        act="quick_gelu",
    ):
        super().__init__()
        self.out_dim = embed_dim
        self.recompute = recompute
        check_init(init)
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown act {act!r}; known: {', '.join(ACTIVATIONS)}")
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.class_embedding = self.create_parameter([1, 1, embed_dim])
        self.positional_embedding = self.create_parameter([1, self.patch_embed.num_patches + 1, embed_dim])
        self.pos_drop = nn.Dropout(drop_rate)
        self.norm_pre = nn.LayerNorm(embed_dim, epsilon=epsilon)
        rates = np.linspace(0, drop_path_rate, depth)
        self.blocks = nn.LayerList(
            [
                Block(embed_dim, num_heads, mlp_ratio, qkv_bias, epsilon, drop_rate, attn_drop_rate, float(r), act)
                for r in rates
            ]
        )
        self.norm_post = nn.LayerNorm(embed_dim, epsilon=epsilon)
        init_weights(self, init, embeddings=(self.class_embedding, self.positional_embedding))

    def no_weight_decay(self):
        return norms_and_biases(self) | {"class_embedding", "positional_embedding"}

    def layer_groups(self):
        blocks = [(f"blocks.{index}.",) for index in range(len(self.blocks))]
        return groups_by_prefix(self, [self.STEM, *blocks, ("norm_post.",)])

    def set_grad_checkpointing(self, enable=True):
        self.recompute = enable

    def forward_tokens(self, images, cls_only=False, keep=1.0):
        """Every token's output ``[B, 1+N, D]``; with ``cls_only``, the class token's ``[B, 1, D]``.

        ``keep`` < 1 (training only): each sample keeps a random ``round(N * keep)``
        of its patch tokens and the class token, chosen after the position
        embeddings are added (so every kept token still knows where it was), and
        the blocks run on ``1 + K`` tokens (FLIP's patch dropout).
        """
        x = self.patch_embed(images)
        cls = self.class_embedding.expand([x.shape[0], -1, -1])
        x = paddle.concat([cls, x], axis=1) + self.positional_embedding
        if keep < 1 and self.training:
            x = keep_patch_tokens(x, kept_patch_indices(x.shape[0], x.shape[1] - 1, keep))
        x = self.norm_pre(self.pos_drop(x))
        last = len(self.blocks) - 1
        for index, block in enumerate(self.blocks):
            x = run_block(block, self.recompute and self.training, x, cls_only=cls_only and index == last)
        return self.norm_post(x)

    def forward(self, images):
        # The feature is the class token's output: the last block computes that row
        # alone (its attention still reads every token), about 1/depth less work.
        return self.forward_tokens(images, cls_only=True)[:, 0]

    def forward_patch_dropout(self, images, keep):
        """The feature from a random ``round(N * keep)`` of each image's patches (in eval mode: all of them)."""
        kept_patch_count(self.patch_embed.num_patches, keep)  # checks the ratio
        return self.forward_tokens(images, cls_only=True, keep=keep)[:, 0]

