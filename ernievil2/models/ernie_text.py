"""The ERNIE-ViL 2.0 text tower: ERNIE 3.0 with the official parameter names.

``state_dict`` keys (under the model's ``text_model.`` prefix) are those of the
official checkpoint: ``word_emb``, ``pos_emb``, ``ln`` (embedding LayerNorm),
``encoder_stack.block.i.{attn.{q,k,v,o}, ln1, ffn.{i,o}, ln2}`` and ``pooler``.
No sentence or task embeddings; post-LN blocks; the feature is
``tanh(pooler(h[:, 0]))`` (``pooler="none"``: ``h[:, 0]``, and no pooler weights).
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .cpu_ops import Linear, merge_heads, split_heads
from .layers import check_init, init_weights, run_block, scaled_dot_attention
from .tower import groups_by_prefix, norms_and_biases

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}
# The official model adds (1 - mask) * -1e4 to attention scores of padding keys.
PAD_BIAS = -1e4
# The text feature: "tanh" = tanh(pooler([CLS])), the official model's (its checkpoint has
# the pooler); "none" = the [CLS] output itself, which trains far faster from scratch
# (docs/training.md, "Training from scratch").
POOLERS = ("tanh", "none")


class TextAttention(nn.Layer):
    def __init__(self, hidden, num_heads, attn_drop):
        super().__init__()
        if hidden % num_heads:
            raise ValueError(f"hidden_size {hidden} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = Linear(hidden, hidden)
        self.k = Linear(hidden, hidden)
        self.v = Linear(hidden, hidden)
        self.o = Linear(hidden, hidden)
        self.attn_drop = attn_drop

    def forward(self, x, bias, cls_only=False):
        """Attention over every token; with ``cls_only``, the output of the first ([CLS]) token alone."""
        q, k, v = (
            split_heads(proj(rows), self.num_heads)[0]
            for proj, rows in ((self.q, x[:, :1] if cls_only else x), (self.k, x), (self.v, x))
        )
        out = scaled_dot_attention(q, k, v, bias, self.attn_drop if self.training else 0.0)
        return self.o(merge_heads(out))


class FeedForward(nn.Layer):
    def __init__(self, hidden, intermediate, act):
        super().__init__()
        self.i = Linear(hidden, intermediate)
        self.o = Linear(intermediate, hidden)
        self.act = ACTIVATIONS[act]

    def forward(self, x):
        return self.o(self.act(self.i(x)))


class ErnieBlock(nn.Layer):
    def __init__(self, hidden, num_heads, intermediate, act, hidden_drop, attn_drop, epsilon):
        super().__init__()
        self.attn = TextAttention(hidden, num_heads, attn_drop)
        self.ln1 = nn.LayerNorm(hidden, epsilon=epsilon)
        self.ffn = FeedForward(hidden, intermediate, act)
        self.ln2 = nn.LayerNorm(hidden, epsilon=epsilon)
        self.dropout = nn.Dropout(hidden_drop)

    def forward(self, x, bias, cls_only=False):
        """``cls_only``: the [CLS] token's output alone (``[B, 1, D]``); every other row is per token."""
        attended = self.dropout(self.attn(x, bias, cls_only))
        x = self.ln1((x[:, :1] if cls_only else x) + attended)
        return self.ln2(x + self.dropout(self.ffn(x)))


class ErnieTextEncoder(nn.Layer):
    # Layer-wise decay's first group: the embeddings and their LayerNorm.
    STEM = ("word_emb.", "pos_emb.", "ln.")
    def __init__(
        self,
        vocab_size=40000,
        hidden_size=768,
        num_layers=12,
        num_heads=12,
        intermediate_size=3072,
        max_position_embeddings=2048,
        hidden_dropout=0.1,
        attention_dropout=0.1,
        act="gelu",
        epsilon=1e-5,
        pad_id=0,
        recompute=False,
        init="xavier",
        pooler="tanh",
    ):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; known: {', '.join(ACTIVATIONS)}")
        if pooler not in POOLERS:
            raise ValueError(f"unknown pooler {pooler!r}; known: {', '.join(POOLERS)}")
        check_init(init)
        self.out_dim = hidden_size
        self.pad_id = pad_id
        self.max_position_embeddings = max_position_embeddings
        self.recompute = recompute
        self.ln = nn.LayerNorm(hidden_size, epsilon=epsilon)
        self.word_emb = nn.Embedding(vocab_size, hidden_size)
        self.pos_emb = nn.Embedding(max_position_embeddings, hidden_size)
        self.dropout = nn.Dropout(hidden_dropout)
        self.encoder_stack = nn.Layer()
        self.encoder_stack.block = nn.LayerList(
            [
                ErnieBlock(
                    hidden_size, num_heads, intermediate_size, act, hidden_dropout, attention_dropout, epsilon
                )
                for _ in range(num_layers)
            ]
        )
        self.pooler_kind = pooler
        if pooler == "tanh":
            self.pooler = Linear(hidden_size, hidden_size)
        init_weights(self, init)

    def no_weight_decay(self):
        return norms_and_biases(self) | {"word_emb.weight", "pos_emb.weight"}

    def layer_groups(self):
        blocks = [(f"encoder_stack.block.{index}.",) for index in range(len(self.encoder_stack.block))]
        return groups_by_prefix(self, [self.STEM, *blocks, ("pooler.",)])

    def set_grad_checkpointing(self, enable=True):
        self.recompute = enable

    def forward_tokens(self, input_ids, cls_only=False):
        """Every token's output ``[B, L, D]``; with ``cls_only``, the [CLS] token's ``[B, 1, D]``."""
        seq = input_ids.shape[1]
        # While tracing for export the length is symbolic (-1 or a Value): checked at run time only.
        if isinstance(seq, int) and seq > self.max_position_embeddings:
            raise ValueError(f"text length {seq} exceeds max_position_embeddings {self.max_position_embeddings}")
        positions = paddle.arange(paddle.shape(input_ids)[1], dtype="int64").unsqueeze(0)
        x = self.dropout(self.ln(self.word_emb(input_ids) + self.pos_emb(positions)))
        # A key-only mask gives the same result as the official query-and-key
        # mask for every real token (padding rows are never read), at a fraction
        # of the memory: [batch, 1, 1, seq] instead of [batch, heads, seq, seq].
        bias = (input_ids == self.pad_id).astype(x.dtype).unsqueeze([1, 2]) * PAD_BIAS
        last = len(self.encoder_stack.block) - 1
        for index, block in enumerate(self.encoder_stack.block):
            x = run_block(block, self.recompute and self.training, x, bias, cls_only=cls_only and index == last)
        return x

    def forward(self, input_ids):
        # Only [CLS] is read: the last block computes that row alone.
        cls = self.forward_tokens(input_ids, cls_only=True)[:, 0]
        return F.tanh(self.pooler(cls)) if self.pooler_kind == "tanh" else cls
