"""The CPU replacements of ernievil2/models/cpu_ops.py compute what Paddle's own path computes, forward and backward."""
import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from ernievil2.models import cpu_ops
from ernievil2.models.ernie_text import ErnieBlock
from ernievil2.models.vit import Block


@pytest.fixture
def switches():
    before = dict(cpu_ops.ENABLED)
    yield cpu_ops.use
    cpu_ops.use(**before)


def tensor(array, grad=True):
    t = paddle.to_tensor(np.asarray(array, dtype=np.float32))
    t.stop_gradient = not grad
    return t


def forward_backward(fn, inputs, upstream):
    """Output and the gradient of ``sum(output * upstream)`` for every input that wants one."""
    out = fn(*inputs)
    (out * paddle.to_tensor(upstream)).sum().backward()
    return out.numpy(), [None if t.stop_gradient else t.grad.numpy() for t in inputs]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("x_grad, w_grad", [(True, True), (False, True), (True, False)])
def test_linear_matches_numpy_forward_and_backward(switches, bias, x_grad, w_grad):
    rng = np.random.default_rng(0)
    x, w, b, up = rng.normal(size=(2, 5, 4)), rng.normal(size=(4, 3)), rng.normal(size=3), rng.normal(size=(2, 5, 3))
    inputs = [tensor(x, x_grad), tensor(w, w_grad)] + ([tensor(b)] if bias else [])
    switches(linear=True)
    out, grads = forward_backward(cpu_ops.linear, inputs, up.astype(np.float32))
    np.testing.assert_allclose(out, x @ w + (b if bias else 0), rtol=1e-5, atol=1e-5)
    rows_x, rows_up = x.reshape(-1, 4), up.reshape(-1, 3)
    expected = [up @ w.T if x_grad else None, rows_x.T @ rows_up if w_grad else None] + ([rows_up.sum(0)] if bias else [])
    for got, want in zip(grads, expected):
        if want is None:
            assert got is None
        else:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_linear_layer_keeps_paddles_parameters_and_skips_the_pylayer_without_gradients(switches):
    layer = cpu_ops.Linear(4, 3)
    assert isinstance(layer, paddle.nn.Linear)
    assert [(n, p.shape) for n, p in layer.named_parameters()] == [("weight", [4, 3]), ("bias", [3])]
    with paddle.no_grad():
        out = layer(paddle.ones([2, 4]))
    # Under no_grad the plain op runs: no backward graph is recorded.
    assert out.stop_gradient


@pytest.mark.parametrize("parts", [1, 3])
@pytest.mark.parametrize("fast", [True, False])
def test_split_and_merge_heads_are_the_transposes(switches, parts, fast):
    rng = np.random.default_rng(1)
    batch, seq, heads, width = 2, 5, 3, 4
    x = rng.normal(size=(batch, seq, parts * heads * width)).astype(np.float32)
    switches(heads=fast)
    xt = tensor(x)
    pieces = cpu_ops.split_heads(xt, heads, parts)
    reference = x.reshape(batch, seq, parts, heads, width).transpose(2, 0, 3, 1, 4)
    assert len(pieces) == parts
    for got, want in zip(pieces, reference):
        np.testing.assert_array_equal(got.numpy(), want)
    merged = [cpu_ops.merge_heads(p) for p in pieces]
    for got in merged:
        assert got.shape == [batch, seq, heads * width]
    np.testing.assert_array_equal(np.concatenate([m.numpy() for m in merged], -1), x)
    # Backward: the gradient of a weighted sum flows back to where each element came from.
    weights = rng.normal(size=(batch, seq, parts * heads * width)).astype(np.float32)
    chunks = np.split(weights, parts, axis=-1)
    loss = sum((m * paddle.to_tensor(c)).sum() for m, c in zip(merged, chunks))
    loss.backward()
    np.testing.assert_array_equal(xt.grad.numpy(), weights)


def block_outputs_and_grads(block, *inputs, **kwargs):
    x = inputs[0]
    out = block(*inputs, **kwargs)
    upstream = paddle.to_tensor(np.random.default_rng(2).normal(size=out.shape).astype(np.float32))
    (out * upstream).sum().backward()
    grads = {name: p.grad.numpy() for name, p in block.named_parameters()}
    result = out.numpy(), x.grad.numpy(), grads
    x.clear_gradient()
    block.clear_gradients()
    return result


@pytest.mark.parametrize("tower", ["vit", "ernie"])
@pytest.mark.parametrize("cls_only", [False, True])
def test_tower_blocks_agree_with_paddles_path(switches, tower, cls_only):
    paddle.seed(3)
    if tower == "vit":
        block = Block(16, 4, 2.0, True, 1e-6, 0.0, 0.0, 0.0)
        inputs = [tensor(np.random.default_rng(4).normal(size=(2, 7, 16)))]
    else:
        block = ErnieBlock(16, 4, 32, "gelu", 0.0, 0.0, 1e-5)
        pad_bias = np.zeros((2, 1, 1, 7), dtype=np.float32)
        pad_bias[1, ..., 5:] = -1e4
        inputs = [tensor(np.random.default_rng(4).normal(size=(2, 7, 16))), paddle.to_tensor(pad_bias)]
    block.train()
    results = {}
    for fast in (False, True):
        switches(linear=fast, heads=fast)
        results[fast] = block_outputs_and_grads(block, *inputs, cls_only=cls_only)
    (out0, dx0, g0), (out1, dx1, g1) = results[False], results[True]
    np.testing.assert_allclose(out1, out0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx1, dx0, rtol=1e-5, atol=1e-6)
    assert g1.keys() == g0.keys()
    for name in g0:
        np.testing.assert_allclose(g1[name], g0[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_unknown_kernel_names_are_errors(switches):
    with pytest.raises(ValueError, match="unknown kernel"):
        switches(softmax=False)


def test_linear_under_to_static_uses_paddles_op(switches):
    # Export traces the towers: the PyLayer must stay out of the static graph.
    layer = cpu_ops.Linear(4, 3)
    static = paddle.jit.to_static(layer, input_spec=[paddle.static.InputSpec([None, 4], "float32")], full_graph=True)
    x = paddle.ones([2, 4])
    np.testing.assert_allclose(static(x).numpy(), F.linear(x, layer.weight, layer.bias).numpy(), rtol=1e-6)
