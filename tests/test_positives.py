"""Multiple positives (``Loss.positives``): the maths against numpy, the pair table, the queue, the config.

Float64 throughout, so the comparisons are about the maths. The 2-process
check is ``test_positives_distributed.py``.
"""
import numpy as np
import paddle
import pytest

from ernievil2.config import load_config
from ernievil2.losses import build_loss, check_loss_section, symmetric_info_nce
from ernievil2.losses.momentum import CrossModalQueue, extra_negative_info_nce, queue_info_nce
from ernievil2.losses.positives import (
    Positives,
    PositivesConfig,
    accuracy_with_positives,
    cross_entropy_with_positives,
    parse_positives,
    positive_mask,
)
from ernievil2.registry import ConfigError
from tests.dist.dist_momentum_check import float64_default
from tests.helpers import REPO, queue_loss, table_loss

MODES = ("masked", "multi_positive")


def tensor(x, stop_gradient=True):
    return paddle.to_tensor(np.asarray(x, dtype="float64"), stop_gradient=stop_gradient)


def ids(x):
    return paddle.to_tensor(np.asarray(x, dtype="int64"))


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ---------------------------------------------------------------- numpy reference


def np_log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def np_positive_mask(row_ids, candidate_ids, labels):
    """Loops, not broadcasting: an independent statement of the rule."""
    rows, cols = len(labels), len(next(iter(candidate_ids.values())))
    mask = np.zeros((rows, cols), dtype=bool)
    for i in range(rows):
        for j in range(cols):
            shared = any(row_ids[k][i] >= 0 and row_ids[k][i] == candidate_ids[k][j] for k in row_ids)
            mask[i, j] = j == labels[i] or shared
    return mask


def np_loss(logits, labels, positives, mode):
    """(loss, accuracy, d loss / d logits) of one direction."""
    rows = len(labels)
    own = np.zeros_like(positives)
    own[np.arange(rows), labels] = True
    if mode == "masked":
        z = np.where(positives & ~own, -np.inf, logits)
        log_p = np_log_softmax(z)
        loss = -log_p[np.arange(rows), labels].mean()
        grad = (np.exp(log_p) - own) / rows
    else:
        z = logits
        targets = positives / positives.sum(axis=1, keepdims=True)
        log_p = np_log_softmax(z)
        loss = -(targets * log_p).sum(axis=1).mean()
        grad = (np.exp(log_p) - targets) / rows
    acc = positives[np.arange(rows), z.argmax(axis=1)].mean()
    return loss, acc, grad


# Rows 0..3 of a batch of 6: ids repeat, -1 is unknown (matches nothing, not even another -1).
IMAGE_IDS = [7, 7, -1, 3, -1, 3]
CAPTION_IDS = [10, 11, 12, 12, 13, -1]


def test_positive_mask_matches_numpy():
    labels = np.array([2, 3, 4, 5])  # the last 4 rows of 6 candidates, as a rank's rows among gathered ones
    rows = {"image": IMAGE_IDS[2:6], "caption": CAPTION_IDS[2:6]}
    candidates = {"image": IMAGE_IDS, "caption": CAPTION_IDS}
    got = positive_mask({k: ids(v) for k, v in rows.items()}, {k: ids(v) for k, v in candidates.items()}, ids(labels))
    expected = np_positive_mask({k: np.array(v) for k, v in rows.items()}, {k: np.array(v) for k, v in candidates.items()}, labels)
    np.testing.assert_array_equal(got.numpy(), expected)
    # guards: the row with unknown ids has its own column only; a shared image and a shared caption both count
    assert list(expected.sum(axis=1)) == [2, 3, 1, 2]


@pytest.mark.parametrize("mode", MODES)
def test_cross_entropy_with_positives_matches_numpy(mode):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, 6)) * 3
    labels = np.array([0, 1, 2, 3])
    positives = np_positive_mask({"image": np.array(IMAGE_IDS[:4])}, {"image": np.array(IMAGE_IDS)}, labels)
    assert positives.sum() > 4  # guards the test: some row has a further positive
    z = tensor(logits, stop_gradient=False)
    out = cross_entropy_with_positives(z, ids(labels), paddle.to_tensor(positives), mode)
    (grad,) = paddle.grad(out["loss"], [z])
    loss, acc, expected_grad = np_loss(logits, labels, positives, mode)
    np.testing.assert_allclose(out["loss"].item(), loss, rtol=1e-12)
    np.testing.assert_allclose(grad.numpy(), expected_grad, rtol=1e-10, atol=1e-15)
    assert out["acc"].item() == acc
    acc_only = accuracy_with_positives(z, ids(labels), paddle.to_tensor(positives), mode)
    assert acc_only.item() == acc


def test_the_modes_differ_and_the_accuracy_counts_any_positive():
    # Row 0's best candidate is column 1, its other positive: a hit for multi_positive,
    # masked away (then column 2 wins, a miss) for masked.
    logits = np.array([[1.0, 5.0, 2.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    positives = np.array([[True, True, False], [True, True, False], [False, False, True]])
    out = {m: cross_entropy_with_positives(tensor(logits), ids([0, 1, 2]), paddle.to_tensor(positives), m) for m in MODES}
    assert out["multi_positive"]["acc"].item() == 1.0 and out["masked"]["acc"].item() == pytest.approx(2 / 3)
    assert abs(out["masked"]["loss"].item() - out["multi_positive"]["loss"].item()) > 0.1


@pytest.mark.parametrize("mode", MODES)
def test_one_positive_per_row_is_the_plain_cross_entropy(mode):
    logits = np.random.default_rng(1).standard_normal((3, 5))
    labels = np.array([1, 2, 3])
    own = np.eye(5, dtype=bool)[labels]
    out = cross_entropy_with_positives(tensor(logits), ids(labels), paddle.to_tensor(own), mode)
    plain = paddle.nn.functional.cross_entropy(tensor(logits), ids(labels))
    np.testing.assert_allclose(out["loss"].item(), plain.item(), rtol=1e-13)


@pytest.mark.parametrize("mode", MODES)
def test_symmetric_info_nce_with_positives_over_gathered_candidates(mode):
    rng = np.random.default_rng(2)
    a_all, b_all = unit(rng.standard_normal((6, 4))), unit(rng.standard_normal((6, 4)))
    rank, local = 1, slice(3, 6)  # rank 1 of 2, 3 rows each
    labels = np.arange(3) + 3
    positives = np_positive_mask({"image": np.array(IMAGE_IDS[local])}, {"image": np.array(IMAGE_IDS)}, labels)
    a, b = tensor(a_all[local], False), tensor(b_all[local], False)
    out = symmetric_info_nce(a, b, 5.0, tensor(a_all), tensor(b_all), rank, Positives(mode, paddle.to_tensor(positives)))
    a2b = np_loss(5.0 * a_all[local] @ b_all.T, labels, positives, mode)
    b2a = np_loss(5.0 * b_all[local] @ a_all.T, labels, positives, mode)
    np.testing.assert_allclose(out["loss"].item(), (a2b[0] + b2a[0]) / 2, rtol=1e-12)
    assert out["acc_a2b"].item() == a2b[1] and out["acc_b2a"].item() == b2a[1]


# ---------------------------------------------------------------- the loss layer

PAIRS = [["image_v1", "text_v1", 1.0], ["text_v1", "text_v2", 0.5]]


def features(seed, rows=6):
    rng = np.random.default_rng(seed)
    return {v: tensor(rng.standard_normal((rows, 4)), False) for v in ("image_v1", "text_v1", "text_v2")}


def np_table_loss(feats, scale, positives, mode):
    total = 0.0
    unit_feats = {v: unit(x.numpy()) for v, x in feats.items()}
    labels = np.arange(len(positives))
    for a, b, weight in PAIRS:
        a2b = np_loss(scale * unit_feats[a] @ unit_feats[b].T, labels, positives, mode)[0]
        b2a = np_loss(scale * unit_feats[b] @ unit_feats[a].T, labels, positives, mode)[0]
        total += weight * (a2b + b2a) / 2
    return total


@pytest.mark.parametrize("same_caption", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_layer_matches_numpy_for_every_pair(mode, same_caption):
    loss_fn = table_loss(PAIRS, positives={"mode": mode, "same_caption": same_caption})
    feats = features(3)
    kwargs = {"image_ids": ids(IMAGE_IDS), **({"caption_ids": ids(CAPTION_IDS)} if same_caption else {})}
    out = loss_fn(feats, tensor(6.0), **kwargs)
    kinds = {"image": np.array(IMAGE_IDS), **({"caption": np.array(CAPTION_IDS)} if same_caption else {})}
    positives = np_positive_mask(kinds, kinds, np.arange(6))
    np.testing.assert_allclose(out["loss"].item(), np_table_loss(feats, 6.0, positives, mode), rtol=1e-12)
    plain = table_loss(PAIRS)(feats, tensor(6.0))
    assert abs(out["loss"].item() - plain["loss"].item()) > 1e-3  # the positives changed something
    assert loss_fn.needs.ids == {"image_ids": "image_id", **({"caption_ids": "caption_id"} if same_caption else {})}


@pytest.mark.parametrize("mode", MODES)
def test_distinct_ids_give_the_plain_loss_and_gradients(mode):
    feats = features(4)
    out = table_loss(PAIRS, positives={"mode": mode})(feats, tensor(6.0), image_ids=ids(range(6)))
    plain = table_loss(PAIRS)(feats, tensor(6.0))
    np.testing.assert_allclose(out["loss"].item(), plain["loss"].item(), rtol=1e-13)
    inputs = list(feats.values())
    for got, expected in zip(paddle.grad(out["loss"], inputs), paddle.grad(plain["loss"], inputs)):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize(
    "positives, kwargs, match",
    [
        ({"mode": "masked"}, {}, "the loss needs image_ids"),
        ({"mode": "masked", "same_caption": True}, {"image_ids": ids(IMAGE_IDS)}, "the loss needs caption_ids"),
        ({"mode": "masked"}, {"image_ids": ids(IMAGE_IDS), "caption_ids": ids(CAPTION_IDS)}, "caption_ids: no term reads them"),
        (None, {"caption_ids": ids(CAPTION_IDS)}, "caption_ids: no term reads them"),
        (None, {"image_ids": ids(IMAGE_IDS)}, "image_ids: no term reads them"),
    ],
)
def test_forward_ids_are_checked(positives, kwargs, match):
    with pytest.raises(ValueError, match=match):
        table_loss(PAIRS, positives=positives)(features(5), tensor(1.0), **kwargs)


# ---------------------------------------------------------------- the queue

QUEUE_IMAGE_IDS = [7, 3, 9, -1, 3]
QUEUE_CAPTION_IDS = [-1, 10, 12, 12, 99]


def np_queue_positives(row_kinds, queue_kinds):
    rows, size = len(next(iter(row_kinds.values()))), len(next(iter(queue_kinds.values())))
    return np.array(
        [[any(row_kinds[k][i] >= 0 and row_kinds[k][i] == queue_kinds[k][j] for k in row_kinds) for j in range(size)] for i in range(rows)]
    )


@pytest.mark.parametrize("share", [0.5, 1.0])
@pytest.mark.parametrize("mode", MODES)
def test_queue_functions_with_positives_match_numpy(mode, share):
    rng = np.random.default_rng(6)
    a, b, queue = unit(rng.standard_normal((4, 3))), unit(rng.standard_normal((4, 3))), unit(rng.standard_normal((5, 3)))
    kinds = {"image": np.array(IMAGE_IDS[:4]), "caption": np.array(CAPTION_IDS[:4])}
    in_batch = np_positive_mask(kinds, kinds, np.arange(4))
    in_queue = np_queue_positives(kinds, {"image": np.array(QUEUE_IMAGE_IDS), "caption": np.array(QUEUE_CAPTION_IDS)})
    assert in_queue.sum() >= 3 and in_batch.sum() > 4  # guards: both parts have further positives
    positives = Positives(mode, paddle.to_tensor(in_batch), paddle.to_tensor(in_queue))
    log_share = np.log(share)

    got = extra_negative_info_nce(tensor(a), tensor(b), tensor(queue), 4.0, 0, None, share, positives)
    logits = np.concatenate([4.0 * a @ b.T, 4.0 * a @ queue.T + log_share], axis=1)
    loss, _, _ = np_loss(logits, np.arange(4), np.concatenate([in_batch, in_queue], axis=1), mode)
    np.testing.assert_allclose(got["loss"].item(), loss, rtol=1e-12)
    assert got["acc"].item() == np_loss(4.0 * a @ b.T, np.arange(4), in_batch, mode)[1]

    got = queue_info_nce(tensor(a), tensor(b), tensor(queue), 4.0, None, share, positives)
    logits = np.concatenate([4.0 * (a * b).sum(axis=1, keepdims=True), 4.0 * a @ queue.T + log_share], axis=1)
    own = np.ones((4, 1), dtype=bool)
    loss, acc, _ = np_loss(logits, np.zeros(4, dtype=int), np.concatenate([own, in_queue], axis=1), mode)
    np.testing.assert_allclose(got["loss"].item(), loss, rtol=1e-12)
    assert got["acc"].item() == acc


def test_queue_functions_refuse_a_mask_and_positives_together():
    x = tensor(np.eye(2))
    positives = Positives("masked", paddle.to_tensor(np.eye(2, dtype=bool)), paddle.to_tensor(np.eye(2, dtype=bool)))
    with pytest.raises(ValueError, match="negative_mask or positives"):
        queue_info_nce(x, x, x, 1.0, paddle.to_tensor(np.eye(2, dtype=bool)), 1.0, positives)


def test_queue_stores_caption_ids_with_its_entries():
    queue = CrossModalQueue(3, 4, track_ids=True, track_caption_ids=True)
    keys = {v: tensor(np.ones((3, 3))) for v in ("image", "text")}
    queue.enqueue(keys, ids([1, 2, 3]), caption_ids=ids([4, 5, 6]))
    queue.enqueue(keys, ids([7, 8, 9]), caption_ids=ids([10, 11, 12]))
    identities = queue.identities()
    np.testing.assert_array_equal(identities["image"].numpy(), [8, 9, 3, 7])  # wrapped round
    np.testing.assert_array_equal(identities["caption"].numpy(), [11, 12, 6, 10])
    assert "caption_ids" in queue.state_dict()
    with pytest.raises(ValueError, match="caption ids are required"):
        queue.enqueue(keys, ids([1, 2, 3]))
    with pytest.raises(ValueError, match="needs track_ids"):
        CrossModalQueue(3, 4, track_ids=False, track_caption_ids=True)


@pytest.mark.parametrize("mode", MODES)
def test_layer_with_a_queue_scores_queue_entries_of_the_rows_identity_as_positives(mode):
    queue = {"size": 5, "mode": "both", "temperature": {"init": 0.25}}
    with float64_default():  # the queue's buffers take the default dtype
        loss_fn, momentum = queue_loss(PAIRS[:1], queue, 4, positives={"mode": mode, "same_caption": True})
    assert momentum.queue.track_ids and momentum.queue.track_caption_ids
    rng = np.random.default_rng(7)
    stored = {v: unit(rng.standard_normal((5, 4))) for v in ("image", "text")}
    momentum.queue.enqueue({v: tensor(x) for v, x in stored.items()}, ids(QUEUE_IMAGE_IDS), caption_ids=ids(QUEUE_CAPTION_IDS))
    feats, keys = features(8, rows=4), {v: tensor(rng.standard_normal((4, 4))) for v in ("image", "text")}
    out = loss_fn(feats, tensor(6.0), image_ids=ids(IMAGE_IDS[:4]), caption_ids=ids(CAPTION_IDS[:4]), momentum=momentum.batch(keys, 0))

    kinds = {"image": np.array(IMAGE_IDS[:4]), "caption": np.array(CAPTION_IDS[:4])}
    in_batch = np_positive_mask(kinds, kinds, np.arange(4))
    in_queue = np_queue_positives(kinds, {"image": np.array(QUEUE_IMAGE_IDS), "caption": np.array(QUEUE_CAPTION_IDS)})
    f = {v: unit(x.numpy()) for v, x in feats.items()}
    both = np.concatenate([in_batch, in_queue], axis=1)
    a2b = np_loss(np.concatenate([6 * f["image_v1"] @ f["text_v1"].T, 6 * f["image_v1"] @ stored["text"].T], 1), np.arange(4), both, mode)
    b2a = np_loss(np.concatenate([6 * f["text_v1"] @ f["image_v1"].T, 6 * f["text_v1"] @ stored["image"].T], 1), np.arange(4), both, mode)
    own = np.concatenate([np.ones((4, 1), dtype=bool), in_queue], axis=1)
    k = {v: unit(x.numpy()) for v, x in keys.items()}
    i2t = np_loss(np.concatenate([4 * (f["image_v1"] * k["text"]).sum(1, keepdims=True), 4 * f["image_v1"] @ stored["text"].T], 1), np.zeros(4, int), own, mode)
    t2i = np_loss(np.concatenate([4 * (f["text_v1"] * k["image"]).sum(1, keepdims=True), 4 * f["text_v1"] @ stored["image"].T], 1), np.zeros(4, int), own, mode)
    np.testing.assert_allclose(out["loss/image_v1-text_v1"].item(), (a2b[0] + b2a[0]) / 2, rtol=1e-12)
    np.testing.assert_allclose(out["loss/brivl"].item(), (i2t[0] + t2i[0]) / 2, rtol=1e-12)
    assert loss_fn.needs.ids == {"image_ids": "image_id", "caption_ids": "caption_id"}


# ---------------------------------------------------------------- the config


def test_config_parses_and_defaults():
    assert parse_positives(None) is None
    assert parse_positives({"mode": "masked"}) == PositivesConfig("masked", False)
    assert parse_positives({"mode": "multi_positive", "same_caption": True}).identities == ("image", "caption")
    table = {"name": "info_nce", "pairs": PAIRS}
    loss = build_loss({"terms": [table], "positives": {"mode": "masked"}})
    assert loss.positives == PositivesConfig("masked", False)
    assert build_loss({"terms": [table]}).needs.ids == {}
    # The trainer passes only these: a queue that does not mask gets no ids (its enqueue refuses them).
    queue = {"size": 8, "mode": "both"}
    assert queue_loss(PAIRS, queue, 4)[0].needs.ids == {}
    masking, momentum = queue_loss(PAIRS, {**queue, "mask_same_image": True}, 4)
    assert masking.needs.ids == {"image_ids": "image_id"} and momentum.queue.track_ids


@pytest.mark.parametrize(
    "positives, queue, key, message",
    [
        ({"mode": "mask"}, None, "Loss.positives.mode", "did you mean 'masked'"),
        ({}, None, "Loss.positives.mode", "missing"),
        ({"mode": "masked", "same_captions": True}, None, "Loss.positives.same_captions", "unknown key"),
        ({"mode": "masked", "same_caption": "yes"}, None, "Loss.positives.same_caption", "true or false"),
        ("masked", None, "Loss.positives", "expected a mapping"),
        (
            {"mode": "masked"},
            {"size": 8, "mode": "extra_negatives", "mask_same_image": True},
            "Loss.terms[1].mask_same_image",
            "drop mask_same_image",
        ),
    ],
)
def test_config_errors_name_the_key(positives, queue, key, message):
    section = {"terms": [{"name": "info_nce", "pairs": PAIRS}], "positives": positives}
    if queue is not None:
        section["terms"].append({"name": "momentum_queue", **queue})
    with pytest.raises(ConfigError, match=message) as err:
        check_loss_section(section)
    assert err.value.key == key


def test_config_file_is_checked_at_load_time():
    config = load_config(str(REPO / "configs" / "demo" / "single_view.yaml"), ["Loss.positives={mode: multi_positive, same_caption: true}"])
    assert config["Loss"]["positives"] == {"mode": "multi_positive", "same_caption": True}
    with pytest.raises(ConfigError, match="Loss.positives.mode"):
        load_config(str(REPO / "configs" / "demo" / "single_view.yaml"), ["Loss.positives={mode: soft}"])
    with pytest.raises(ConfigError, match="Data.one_caption_per_image"):
        load_config(str(REPO / "configs" / "demo" / "single_view.yaml"), ["Data.one_caption_per_image=3"])
