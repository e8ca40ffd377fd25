"""CPU replacements for two parts of the train step that Paddle's CPU kernels run slowly.

Why: after the matmul fix (ernievil2/runtime.py) more than half of a base CPU
train step was outside matmul (docs/benchmarks.md, "Training step"). Two of
the costs there have cheaper equivalents:
- ``linear`` backward: the bias gradient is a column sum of the output
  gradient, which Paddle's CPU reduction over the leading axis computes far
  below memory speed (a [1576, 3072] column sum took 25x a matrix-vector
  product); here it is ``ones @ dy`` in the BLAS, beside the two matmuls
  Paddle runs anyway.
- ``heads``: moving attention heads in front of the tokens
  (``[B, S, H, d] -> [B, H, S, d]``) and back. A transpose is a strided view
  in Paddle 3; the copy made when the next op needs it contiguous ran ~20x
  slower than numpy's. Splitting along the heads and concatenating along the
  tokens moves whole ``d``-long rows instead, several times faster, forward
  and backward (the backward of split is concat and vice versa).
Both compute the same numbers as the paths they replace (parameter names and
shapes are untouched). Each can be switched back (:func:`use`), so every
change is measured beside the path it replaces. Paddle's LayerNorm and
softmax backward kernels were measured against hand-written ones
(closed-form PyLayers) and kept: the replacements were no faster.
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.autograd import PyLayer

# Which of the kernels below are in use; False = Paddle's own layer/op.
ENABLED = {"linear": True, "heads": True}


def use(**flags):
    """Switch kernels on or off by name (``use(linear=False)``); returns the previous settings."""
    unknown = set(flags) - set(ENABLED)
    if unknown:
        raise ValueError(f"unknown kernel(s) {sorted(unknown)}; known: {', '.join(ENABLED)}")
    before = dict(ENABLED)
    ENABLED.update({name: bool(on) for name, on in flags.items()})
    return before


def _column_sum(rows):
    """Sum over the leading axis of a 2-D tensor, as ``ones @ rows`` (a BLAS matrix-vector product)."""
    ones = paddle.ones([1, rows.shape[0]], dtype=rows.dtype)
    return paddle.matmul(ones, rows).reshape([rows.shape[1]])


def _needs_grad(tensor):
    return tensor is not None and not tensor.stop_gradient


class _Linear(PyLayer):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.wants = (_needs_grad(x), _needs_grad(weight), _needs_grad(bias))
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensor()
        want_x, want_w, want_b = ctx.wants
        dy_rows = dy.reshape([-1, dy.shape[-1]])
        dx = paddle.matmul(dy, weight, transpose_y=True) if want_x else None
        dw = paddle.matmul(x.reshape([-1, x.shape[-1]]), dy_rows, transpose_x=True) if want_w else None
        db = _column_sum(dy_rows) if want_b else None
        return dx, dw, db


class _LinearNoBias(PyLayer):
    # PyLayer's backward must return one gradient per tensor input: a separate
    # class for bias-free layers keeps None out of forward's arguments.
    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)
        ctx.wants = (_needs_grad(x), _needs_grad(weight))
        return paddle.matmul(x, weight)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensor()
        want_x, want_w = ctx.wants
        dx = paddle.matmul(dy, weight, transpose_y=True) if want_x else None
        dw = paddle.matmul(x.reshape([-1, x.shape[-1]]), dy.reshape([-1, dy.shape[-1]]), transpose_x=True) if want_w else None
        return dx, dw


def linear(x, weight, bias=None):
    """``x @ weight + bias`` (``weight`` is ``[in, out]``, as in ``paddle.nn.Linear``)."""
    if not ENABLED["linear"] or not paddle.in_dynamic_mode() or not (_needs_grad(x) or _needs_grad(weight) or _needs_grad(bias)):
        return F.linear(x, weight, bias)
    return _LinearNoBias.apply(x, weight) if bias is None else _Linear.apply(x, weight, bias)


def split_heads(x, heads, parts=1):
    """``[B, S, parts * heads * d]`` -> ``parts`` tensors ``[B, heads, S, d]`` (contiguous).

    ``parts=3`` takes a fused qkv output laid out (3, heads, d) per token.
    """
    width = x.shape[-1] // (parts * heads)
    x = x.reshape([0, 0, parts * heads, width])
    if not ENABLED["heads"]:
        if parts == 1:
            return [x.transpose([0, 2, 1, 3])]
        # Splitting the leading axis of one [parts, B, heads, S, d] transpose costs a fraction
        # of unbinding a strided axis in backward.
        return list(x.reshape([0, 0, parts, heads, width]).transpose([2, 0, 3, 1, 4]).unbind(axis=0))
    pieces = paddle.split(x, parts * heads, axis=2)
    # Concatenating [B, S, 1, d] pieces along the tokens gives [B, heads * S, 1, d], i.e. [B, heads, S, d].
    return [
        paddle.concat(pieces[p * heads : (p + 1) * heads], axis=1).reshape([0, heads, -1, width]) for p in range(parts)
    ]


def merge_heads(x):
    """``[batch, heads, seq, head_dim]`` -> ``[batch, seq, heads * head_dim]``."""
    heads, width = x.shape[1], x.shape[3]
    if not ENABLED["heads"]:
        return x.transpose([0, 2, 1, 3]).reshape([0, 0, heads * width])
    return paddle.concat(paddle.split(x, heads, axis=1), axis=3).reshape([0, -1, heads * width])


class Linear(nn.Linear):
    """``paddle.nn.Linear`` (same parameters, names and initialisation) running :func:`linear`."""

    def forward(self, x):
        return linear(x, self.weight, self.bias)
