"""Single-process tests of the momentum queue: the FIFO, the EMA copy, the queue maths, the loss options.

Float64 throughout (the default dtype is switched for each test, so the queue
buffers are float64 too). The 2-process check is ``test_momentum_distributed.py``.
"""
import numpy as np
import paddle
import pytest

from ernievil2.losses import (
    CrossModalQueue,
    MomentumEncoder,
    MomentumQueueConfig,
    MomentumQueueTerm,
    build_loss,
    check_loss_section,
    ema_update_,
    extra_negative_info_nce,
    queue_info_nce,
    queue_share,
    same_image_mask,
    symmetric_info_nce,
)
from tests.helpers import queue_loss, table_loss


@pytest.fixture(autouse=True)
def float64_default():
    previous = paddle.get_default_dtype()
    paddle.set_default_dtype("float64")
    yield
    paddle.set_default_dtype(previous)


def tensor(array, requires_grad=True):
    return paddle.to_tensor(np.asarray(array, dtype=np.float64), stop_gradient=not requires_grad)


def int_tensor(values):
    return paddle.to_tensor(np.asarray(values, dtype=np.int64))


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class NumpyQueue:
    """The reference FIFO: one row at a time, the pointer wrapping at the end."""

    def __init__(self, size, dim):
        self.rows = {"image": np.zeros((size, dim)), "text": np.zeros((size, dim))}
        self.ids = np.full(size, -1)
        self.ptr = self.filled = 0
        self.size = size

    def push(self, keys, ids):
        for i in range(len(ids)):
            for view, rows in self.rows.items():
                rows[self.ptr] = unit(keys[view][i])
            self.ids[self.ptr] = ids[i]
            self.ptr = (self.ptr + 1) % self.size
        self.filled = min(self.size, self.filled + len(ids))


def random_keys(rng, rows, dim):
    return {view: rng.standard_normal((rows, dim)) for view in ("image", "text")}


def push_both(queue, reference, keys, ids):
    queue.enqueue({v: tensor(x, False) for v, x in keys.items()}, int_tensor(ids))
    reference.push(keys, ids)


def assert_queue_equals(queue, reference):
    for view in ("image", "text"):
        np.testing.assert_allclose(queue.entries(view).numpy(), reference.rows[view], rtol=0, atol=1e-15)
    np.testing.assert_array_equal(queue.ids.numpy(), reference.ids)
    assert (int(queue.ptr.item()), int(queue.filled.item())) == (reference.ptr, reference.filled)


# ---------------------------------------------------------------- the queue


@pytest.mark.parametrize("size, batch, steps", [(7, 3, 5), (6, 3, 4), (4, 4, 3), (5, 2, 6)])
def test_queue_matches_a_numpy_fifo_after_every_enqueue(size, batch, steps):
    rng = np.random.default_rng(size * 10 + batch)
    queue, reference = CrossModalQueue(dim=3, size=size), NumpyQueue(size, 3)
    for step in range(steps):
        push_both(queue, reference, random_keys(rng, batch, 3), rng.integers(-1, 9, batch))
        assert_queue_equals(queue, reference)
        assert queue.is_full == (reference.filled == size)


def test_queue_starts_empty():
    queue = CrossModalQueue(dim=2, size=3)
    assert not queue.is_full
    assert not queue.entries("text").numpy().any()
    np.testing.assert_array_equal(queue.ids.numpy(), [-1, -1, -1])


def test_a_global_batch_larger_than_the_queue_is_refused():
    queue = CrossModalQueue(dim=2, size=3, track_ids=False)
    keys = random_keys(np.random.default_rng(0), 4, 2)
    with pytest.raises(ValueError, match=r"global batch of 4 keys \(1 x 4\) does not fit a queue of 3"):
        queue.enqueue({v: tensor(x, False) for v, x in keys.items()})


@pytest.mark.parametrize(
    "views, track_ids, ids, match",
    [
        (("image",), True, [1, 2], r"exactly the views \['image', 'text'\], got \['image'\]"),
        (("image", "text"), True, None, "image ids are required when the queue tracks ids"),
        (("image", "text"), False, [1, 2], "and refused otherwise"),
        (("image", "text"), True, [1, 2, 3], r"ids must be \[2\] \(one per key row\), got \[3\]"),
    ],
)
def test_enqueue_checks_its_inputs(views, track_ids, ids, match):
    queue = CrossModalQueue(dim=2, size=4, track_ids=track_ids)
    keys = {v: tensor(np.ones((2, 2)), False) for v in views}
    with pytest.raises(ValueError, match=match):
        queue.enqueue(keys, None if ids is None else int_tensor(ids))


def test_state_dict_round_trip_resumes_exactly(tmp_path):
    rng = np.random.default_rng(1)
    queue, reference = CrossModalQueue(dim=3, size=5), NumpyQueue(5, 3)
    for _ in range(3):
        push_both(queue, reference, random_keys(rng, 2, 3), rng.integers(0, 4, 2))
    paddle.save(queue.state_dict(), str(tmp_path / "queue.pdparams"))
    resumed = CrossModalQueue(dim=3, size=5)
    resumed.set_state_dict(paddle.load(str(tmp_path / "queue.pdparams")))

    assert sorted(resumed.state_dict()) == ["filled", "ids", "ptr", "queue_image", "queue_text"]
    assert_queue_equals(resumed, reference)
    keys, ids = random_keys(rng, 2, 3), rng.integers(0, 4, 2)
    push_both(resumed, reference, keys, ids)
    assert_queue_equals(resumed, reference)


def test_enqueue_before_backward_is_refused():
    """The MoCo order is enforced: a loss scored on the old queue cannot see the new rows."""
    rng = np.random.default_rng(2)
    queue = CrossModalQueue(dim=3, size=4, track_ids=False)
    queue.enqueue({v: tensor(x, False) for v, x in random_keys(rng, 4, 3).items()})
    query = tensor(unit(rng.standard_normal((2, 3))))
    out = queue_info_nce(query, tensor(unit(rng.standard_normal((2, 3))), False), queue.entries("text"), 5.0)
    queue.enqueue({v: tensor(x, False) for v, x in random_keys(rng, 2, 3).items()})
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out["loss"].backward()


# ---------------------------------------------------------------- EMA copies


def test_ema_update_matches_numpy():
    rng = np.random.default_rng(3)
    targets_np, sources_np = [rng.standard_normal((3, 2)), rng.standard_normal(4)], [
        rng.standard_normal((3, 2)),
        rng.standard_normal(4),
    ]
    targets, sources = [tensor(t, False) for t in targets_np], [tensor(s, False) for s in sources_np]
    ema_update_(targets, sources, 0.9)
    for target, t, s in zip(targets, targets_np, sources_np):
        np.testing.assert_allclose(target.numpy(), 0.9 * t + 0.1 * s, rtol=1e-15)
    np.testing.assert_array_equal(sources[0].numpy(), sources_np[0])


@pytest.mark.parametrize(
    "targets, sources, momentum, error, match",
    [
        ([np.ones(2)], [np.ones(2)], 1.5, ValueError, r"momentum must be in \[0, 1\], got 1.5"),
        ([np.ones(2)], [np.ones(2), np.ones(2)], 0.9, ValueError, "1 targets but 2 sources"),
        ([np.ones(2)], [np.ones(3)], 0.9, ValueError, r"tensor 0: target shape \[2\] but source \[3\]"),
        ([np.ones(2, dtype=np.int64)], [np.ones(2, dtype=np.int64)], 0.9, TypeError, "floating tensors"),
    ],
)
def test_ema_update_rejects_bad_inputs(targets, sources, momentum, error, match):
    with pytest.raises(error, match=match):
        ema_update_([paddle.to_tensor(t) for t in targets], [paddle.to_tensor(s) for s in sources], momentum)


class DropoutTower(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.linear = paddle.nn.Linear(4, 3)
        self.dropout = paddle.nn.Dropout(0.5)

    def forward(self, x):
        return self.dropout(self.linear(x))


def test_momentum_copy_gets_no_gradient_and_no_optimizer_slot():
    paddle.seed(0)
    model = DropoutTower()
    momentum = MomentumEncoder(model)
    optimizer = paddle.optimizer.SGD(learning_rate=0.1, parameters=model.parameters())
    before = [p.numpy().copy() for p in momentum.parameters()]
    x = tensor(np.random.default_rng(4).standard_normal((5, 4)), False)

    (model(x) * momentum(x)).sum().backward()
    optimizer.step()

    copy_ids = {id(p) for p in momentum.parameters()}
    assert copy_ids and not copy_ids & {id(p) for p in optimizer._parameter_list}
    assert all(p.stop_gradient and p.grad is None for p in momentum.parameters())
    assert all(p.grad is not None for p in model.parameters())
    for param, old in zip(momentum.parameters(), before):
        np.testing.assert_array_equal(param.numpy(), old)


def test_momentum_copy_runs_in_eval_mode_even_after_train():
    paddle.seed(1)
    model = DropoutTower()
    holder = paddle.nn.LayerList([model, MomentumEncoder(model)])
    holder.train()
    x = tensor(np.random.default_rng(5).standard_normal((6, 4)), False)
    model.eval()
    expected = model(x).numpy()
    model.train()
    np.testing.assert_array_equal(holder[1](x).numpy(), expected)
    assert holder[0].dropout.training


def test_momentum_update_moves_the_copy_towards_the_online_model(tmp_path):
    paddle.seed(2)
    model = DropoutTower()
    momentum = MomentumEncoder(model)
    old = {n: p.numpy().copy() for n, p in momentum.model.named_parameters()}
    with paddle.no_grad():
        for param in model.parameters():
            param.set_value(param + 1.0)
    momentum.update(model, 0.75)
    for name, param in momentum.model.named_parameters():
        online = dict(model.named_parameters())[name].numpy()
        np.testing.assert_allclose(param.numpy(), 0.75 * old[name] + 0.25 * online, rtol=1e-15)

    paddle.save(momentum.state_dict(), str(tmp_path / "momentum.pdparams"))
    restored = MomentumEncoder(DropoutTower())
    restored.set_state_dict(paddle.load(str(tmp_path / "momentum.pdparams")))
    for (name, a), b in zip(momentum.state_dict().items(), restored.state_dict().values()):
        assert name.startswith("model.")
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_momentum_update_refuses_another_architecture():
    momentum = MomentumEncoder(DropoutTower())
    with pytest.raises(ValueError, match="online model does not match the momentum copy"):
        momentum.update(paddle.nn.Linear(4, 3), 0.9)


# ---------------------------------------------------------------- the maths


def np_masked_queue_logits(query, queue, scale, mask, share):
    logits = scale * query @ queue.T + np.log(share)
    return np.where(mask, -np.inf, logits) if mask is not None else logits


def np_queue_loss(query, key, queue, scale, mask=None, share=1.0):
    """BriVL's loss, its accuracy and its gradient w.r.t. the query."""
    rows = len(query)
    positive = scale * (query * key).sum(1, keepdims=True)
    z = np.concatenate([positive, np_masked_queue_logits(query, queue, scale, mask, share)], 1)
    p = np_softmax(z)
    grad_z = p.copy()
    grad_z[:, 0] -= 1
    grad_z /= rows
    grad_q = scale * (grad_z[:, :1] * key + grad_z[:, 1:] @ queue)
    return -np.log(p[:, 0]).mean(), np.mean(z.argmax(1) == 0), grad_q


def np_extra_negative_loss(a, b_all, queue, scale, rank, mask=None, share=1.0):
    """One direction a -> b with queue negatives; loss, in-batch accuracy, gradients w.r.t. a and b_all."""
    rows, candidates = len(a), len(b_all)
    labels = rank * rows + np.arange(rows)
    in_batch = scale * a @ b_all.T
    z = np.concatenate([in_batch, np_masked_queue_logits(a, queue, scale, mask, share)], 1)
    p = np_softmax(z)
    grad_z = p.copy()
    grad_z[np.arange(rows), labels] -= 1
    grad_z /= rows
    grad_a = scale * (grad_z[:, :candidates] @ b_all + grad_z[:, candidates:] @ queue)
    grad_b = scale * grad_z[:, :candidates].T @ a
    loss = -np.log(p[np.arange(rows), labels]).mean()
    return loss, np.mean(in_batch.argmax(1) == labels), grad_a, grad_b


MASK = np.array([[True, False, False, False, False], [False, False, True, True, False], [False] * 5])


@pytest.mark.parametrize("mask, share", [(None, 1.0), (MASK, 1.0), (MASK, 0.3)])
def test_queue_info_nce_matches_numpy(mask, share):
    rng = np.random.default_rng(6)
    q_np, k_np, queue_np = (unit(rng.standard_normal((rows, 4))) for rows in (3, 3, 5))
    query = tensor(q_np)
    mask_tensor = None if mask is None else paddle.to_tensor(mask)
    out = queue_info_nce(query, tensor(k_np, False), tensor(queue_np, False), 4.0, mask_tensor, share)
    (grad,) = paddle.grad(out["loss"], [query])

    loss, acc, ref_grad = np_queue_loss(q_np, k_np, queue_np, 4.0, mask, share)
    np.testing.assert_allclose(out["loss"].item(), loss, rtol=1e-12)
    np.testing.assert_allclose(grad.numpy(), ref_grad, rtol=1e-10, atol=1e-13)
    assert out["acc"].item() == acc


@pytest.mark.parametrize("rank, mask, share", [(0, None, 1.0), (1, MASK, 1.0), (1, MASK, 0.5)])
def test_extra_negative_info_nce_matches_numpy(rank, mask, share):
    rng = np.random.default_rng(7 + rank)
    a_np, b_np, queue_np = (unit(rng.standard_normal((rows, 4))) for rows in (3, 6, 5))
    a, b_all = tensor(a_np), tensor(b_np)
    mask_tensor = None if mask is None else paddle.to_tensor(mask)
    out = extra_negative_info_nce(a, b_all, tensor(queue_np, False), 6.0, rank, mask_tensor, share)
    grad_a, grad_b = paddle.grad(out["loss"], [a, b_all])

    loss, acc, ref_a, ref_b = np_extra_negative_loss(a_np, b_np, queue_np, 6.0, rank, mask, share)
    np.testing.assert_allclose(out["loss"].item(), loss, rtol=1e-12)
    np.testing.assert_allclose(grad_a.numpy(), ref_a, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(grad_b.numpy(), ref_b, rtol=1e-10, atol=1e-13)
    assert out["acc"].item() == acc


def test_zero_queue_share_leaves_the_queue_out():
    rng = np.random.default_rng(8)
    a, b = tensor(unit(rng.standard_normal((3, 4)))), tensor(unit(rng.standard_normal((3, 4))))
    queue = tensor(unit(rng.standard_normal((5, 4))), False)
    plain = symmetric_info_nce(a, b, 5.0)["loss_a2b"]
    assert extra_negative_info_nce(a, b, queue, 5.0, queue_share=0.0)["loss"].item() == plain.item()

    brivl = queue_info_nce(a, b.detach(), queue, 5.0, queue_share=0.0)["loss"]
    (grad,) = paddle.grad(brivl, [a])
    assert brivl.item() == 0.0 and not grad.numpy().any()


def test_same_image_mask_matches_known_ids_only():
    mask = same_image_mask(int_tensor([3, -1, 5]), int_tensor([3, -1, 5, 3, 7]))
    np.testing.assert_array_equal(
        mask.numpy(), [[True, False, False, True, False], [False] * 5, [False, False, True, False, False]]
    )


@pytest.mark.parametrize(
    "step, warmup, ramp, full, expected",
    [
        (0, 0, 0, True, 1.0),
        (0, 0, 0, False, 0.0),
        (9, 10, 0, True, 0.0),
        (10, 10, 0, True, 1.0),
        (10, 10, 4, True, 0.25),
        (12, 10, 4, True, 0.75),
        (13, 10, 4, True, 1.0),
        (50, 10, 4, True, 1.0),
        (50, 10, 4, False, 0.0),
    ],
)
def test_queue_share_schedule(step, warmup, ramp, full, expected):
    assert queue_share(step, warmup, ramp, full) == expected


# ---------------------------------------------------------------- the loss layer

PAIRS = [["image_v1", "text_v1", 1.0], ["image_v1", "image_v2", 0.5], ["text_v1", "tag", 0.25]]
MODALITY = {"image_v1": "image", "image_v2": "image", "text_v1": "text", "tag": "text"}
BATCH, DIM, SIZE = 4, 3, 6
BATCH_IDS = np.array([0, 1, -1, 2])
# Two enqueues of 3 fill the queue; ids 0, 1 and -1 reappear, so the mask bites.
QUEUE_IDS = [np.array([0, 5, -1]), np.array([1, 1, 7])]


def queue_config(**overrides):
    return {"size": SIZE, "mode": "both", "temperature": {"init": 0.1}, "weight": 0.5, **overrides}


def features_and_keys(seed):
    rng = np.random.default_rng(seed)
    features = {v: tensor(2 * rng.standard_normal((BATCH, DIM))) for v in MODALITY}
    keys = {v: tensor(rng.standard_normal((BATCH, DIM)), False) for v in ("image", "text")}
    return features, keys


def filled_loss(seed, config, enqueues=QUEUE_IDS):
    """The loss layer and its momentum queue with ``enqueues`` batches of 3 random keys already in, and the numpy queue."""
    loss_fn, momentum = queue_loss(PAIRS, config, DIM)
    reference = NumpyQueue(SIZE, DIM)
    rng = np.random.default_rng(seed + 100)
    for ids in enqueues:
        keys = random_keys(rng, len(ids), DIM)
        tracked_ids = int_tensor(ids) if momentum.queue.track_ids else None
        momentum.queue.enqueue({v: tensor(x, False) for v, x in keys.items()}, tracked_ids)
        reference.push(keys, ids)
    return loss_fn, momentum, reference


def with_queue(loss_fn, momentum, features, keys, step, scale=8.0):
    """The loss of one step with the queue as it stands; the batch's image ids go in when the loss reads them."""
    ids = {"image_ids": int_tensor(BATCH_IDS)} if loss_fn.needs.ids else {}
    return loss_fn(features, tensor(scale), momentum=momentum.batch(keys, step), **ids)


def np_layer_loss(features, keys, reference, pairs, scale, cfg, share, mask_same_image):
    feats = {v: unit(x.numpy()) for v, x in features.items()}
    mask = (BATCH_IDS[:, None] == reference.ids[None, :]) & (BATCH_IDS[:, None] >= 0) if mask_same_image else None
    out = {}
    for a, b, _ in pairs:
        a2b = np_extra_negative_loss(feats[a], feats[b], reference.rows[MODALITY[b]], scale, 0, mask, share)[0]
        b2a = np_extra_negative_loss(feats[b], feats[a], reference.rows[MODALITY[a]], scale, 0, mask, share)[0]
        out[f"loss/{a}-{b}"] = (a2b + b2a) / 2
    brivl_scale = 1 / cfg["temperature"]["init"]
    key = {v: unit(k.numpy()) for v, k in keys.items()}
    i2t = np_queue_loss(feats["image_v1"], key["text"], reference.rows["text"], brivl_scale, mask, share)[0]
    t2i = np_queue_loss(feats["text_v1"], key["image"], reference.rows["image"], brivl_scale, mask, share)[0]
    out["loss/brivl"] = (i2t + t2i) / 2
    out["loss"] = sum(w * out[f"loss/{a}-{b}"] for a, b, w in pairs) + cfg["weight"] * out["loss/brivl"]
    return out, mask


@pytest.mark.parametrize("mask_same_image", [False, True])
@pytest.mark.parametrize("step, expected_share", [(3, 0.5), (4, 1.0)])
def test_active_queue_matches_numpy(mask_same_image, step, expected_share):
    config = queue_config(mask_same_image=mask_same_image, warmup_steps=3, ramp_steps=2)
    loss_fn, momentum, reference = filled_loss(9, config)
    features, keys = features_and_keys(10)
    out = with_queue(loss_fn, momentum, features, keys, step)

    expected, mask = np_layer_loss(
        features, keys, reference, PAIRS, 8.0, queue_config(), expected_share, mask_same_image
    )
    assert out["queue/share"].item() == expected_share
    for name, value in expected.items():
        np.testing.assert_allclose(out[name].item(), value, rtol=1e-12, err_msg=name)
    if mask_same_image:
        assert mask.sum() == 3  # guards the test: the mask drops entries
        unmasked, _ = np_layer_loss(features, keys, reference, PAIRS, 8.0, queue_config(), expected_share, False)
        assert abs(unmasked["loss"] - expected["loss"]) > 1e-3


@pytest.mark.parametrize(
    "enqueues, step",
    [(QUEUE_IDS, 2), (QUEUE_IDS[:1], 5)],
    ids=["warming-up-with-a-full-queue", "past-warm-up-with-a-part-filled-queue"],
)
def test_inactive_queue_leaves_the_table_loss_unchanged(enqueues, step):
    config = {"size": SIZE, "mode": "extra_negatives", "mask_same_image": True, "warmup_steps": 3}
    loss_fn, momentum, _ = filled_loss(11, config, enqueues)
    plain_fn = table_loss(PAIRS)
    features, keys = features_and_keys(12)

    out = with_queue(loss_fn, momentum, features, keys, step)
    plain = plain_fn(features, tensor(8.0))
    assert set(out) == set(plain) | {"queue/share"} and out["queue/share"].item() == 0.0
    for name, value in plain.items():
        assert out[name].item() == value.item(), name
    inputs = [features[v] for v in MODALITY]
    for grad, plain_grad in zip(paddle.grad(out["loss"], inputs), paddle.grad(plain["loss"], inputs)):
        np.testing.assert_array_equal(grad.numpy(), plain_grad.numpy())


def test_brivl_alone_trains_nothing_until_the_queue_is_active():
    loss_fn, momentum = queue_loss([], {"size": SIZE, "mode": "brivl"}, DIM)
    assert loss_fn.needs.views == {"image_v1", "text_v1"}
    features, keys = features_and_keys(13)
    out = with_queue(loss_fn, momentum, features, keys, 0)
    grads = paddle.grad(out["loss"], [features["image_v1"], features["text_v1"]])
    assert out["loss"].item() == 0.0 and not any(g.numpy().any() for g in grads)

    for _ in range(2):
        momentum.queue.enqueue({v: tensor(np.ones((3, DIM)), False) for v in ("image", "text")})
    active = with_queue(loss_fn, momentum, features, keys, 1)
    assert active["loss"].item() > 0.1 and set(active) == {"loss", "loss/brivl", "acc/brivl", "queue/share"}


def test_the_loss_and_the_momentum_queue_check_what_they_are_given():
    features, keys = features_and_keys(14)
    _, other = queue_loss(PAIRS, {"size": SIZE, "mode": "both"}, DIM)
    with pytest.raises(ValueError, match="goes with a momentum_queue term, and only with one"):
        table_loss(PAIRS)(features, tensor(1.0), momentum=other.batch(keys, 0))
    loss_fn, momentum = queue_loss(PAIRS, {"size": SIZE, "mode": "extra_negatives", "mask_same_image": True}, DIM)
    with pytest.raises(ValueError, match="needs the step's MomentumBatch"):
        loss_fn(features, tensor(1.0), image_ids=int_tensor(BATCH_IDS))
    with pytest.raises(ValueError, match="the loss needs image_ids"):
        loss_fn(features, tensor(1.0), momentum=momentum.batch(keys, 0))
    with pytest.raises(ValueError, match=r"step \(optimizer steps taken\) must be an integer, got None"):
        momentum.batch(keys, None)
    with pytest.raises(ValueError, match="after_step follows a step"):
        queue_loss(PAIRS, both(), DIM)[1].after_step(paddle.nn.Layer())



# ---------------------------------------------------------------- the config


def queue_term_section(section):
    """A Loss section with the pair table, then ``section`` as a momentum_queue term (a non-mapping as it is)."""
    entry = {"name": "momentum_queue", **section} if isinstance(section, dict) else section
    return {"terms": [{"name": "info_nce", "pairs": PAIRS}, entry]}


def test_config_defaults():
    assert MomentumQueueTerm(size=8, mode="extra_negatives").momentum == MomentumQueueConfig(
        size=8, mode="extra_negatives", momentum=0.99, temperature=None,
        warmup_steps=0, ramp_steps=0, mask_same_image=False,
    )
    loss = build_loss(queue_term_section(
        {"size": 8, "mode": "both", "momentum": 0.9, "weight": 2, "temperature": {"init": 0.07, "learnable": False},
         "warmup_steps": 5, "ramp_steps": 3, "mask_same_image": True}
    ))
    full = loss.needs.momentum
    assert full.temperature == 0.07 and loss.weights == [1.0, 2.0] and full.brivl and full.extra_negatives


def both(**keys):
    return {"size": 8, "mode": "both", **keys}


@pytest.mark.parametrize(
    "section, message",
    [
        ([4096], "Loss.terms[1]: expected a mapping with a 'name' of a loss term, got [4096]"),
        ({"mode": "both"}, "Loss.terms[1]: missing required key(s): size"),
        (both(sise=4), "Loss.terms[1].sise: unknown key; MomentumQueueTerm takes: size, mode, "),
        (both(warmup=4), "did you mean 'warmup_steps'?"),
        (both(size=0), "Loss.terms[1].size: must be an integer >= 1, got 0"),
        (both(size=8.0), "Loss.terms[1].size: must be an integer >= 1, got 8.0"),
        (both(mode="moco"), "Loss.terms[1].mode: must be one of extra_negatives, brivl, both, got 'moco'"),
        (both(momentum=1.5), "Loss.terms[1].momentum: must be in [0, 1], got 1.5"),
        (both(momentum="0.99"), "Loss.terms[1].momentum: must be a finite number, got '0.99' (str)"),
        (both(weight=0), "Loss.terms[1].weight: weight must be a positive finite number, got 0"),
        (both(weight=True), "Loss.terms[1].weight: weight must be a number, got True (bool)"),
        (both(mode="extra_negatives", weight=1.0), "Loss.terms[1].weight: only the brivl loss uses it"),
        (both(mode="extra_negatives", temperature={"init": 0.07}), "Loss.terms[1].temperature: only the brivl"),
        (both(temperature="fixed"), "Loss.terms[1].temperature: expected 'shared' or a mapping"),
        (both(temperature={"init": 0.07, "learnable": True}), "Loss.terms[1].temperature.learnable: must be false"),
        (both(temperature={"init": 0}), "Loss.terms[1].temperature.init: must be positive, got 0.0"),
        (both(temperature={"learnable": False}), "Loss.terms[1].temperature: missing key 'init'"),
        (both(temperature={"init": 0.07, "max": 9}), "Loss.terms[1].temperature.max: unknown key"),
        (both(warmup_steps=-1), "Loss.terms[1].warmup_steps: must be an integer >= 0, got -1"),
        (both(ramp_steps=1.5), "Loss.terms[1].ramp_steps: must be an integer >= 0, got 1.5"),
        (both(mask_same_image="yes"), "Loss.terms[1].mask_same_image: must be true or false, got 'yes'"),
        (both(positives={"mode": "masked"}), "Loss.terms[1].positives: set by the trainer"),
    ],
)
def test_invalid_queue_configs_name_the_key(section, message):
    with pytest.raises(ValueError) as error:
        check_loss_section(queue_term_section(section))
    assert message in str(error.value)


@pytest.mark.parametrize("mode, accepted", [("brivl", True), ("both", False), ("extra_negatives", False)])
def test_only_brivl_mode_goes_without_an_info_nce_term(mode, accepted):
    section = {"terms": [{"name": "momentum_queue", "size": 4, "mode": mode}]}
    if accepted:
        check_loss_section(section)
        assert build_loss(section).needs.views == {"image_v1", "text_v1"}
    else:
        with pytest.raises(ValueError, match="Loss.terms\\[0\\].mode: .*the queue's negatives join the info_nce terms, and none is listed"):
            check_loss_section(section)


def test_a_second_queue_is_refused():
    section = queue_term_section(both())
    section["terms"].append({"name": "momentum_queue", **both()})
    with pytest.raises(ValueError, match="Loss.terms\\[2\\]: a second momentum_queue"):
        check_loss_section(section)
