"""Single-process tests of the contrastive maths, the pair table and the clamp.

Float64 throughout so that reference comparisons can be tight. The multi-process
check of ``gather_with_grad`` lives in ``test_losses_distributed.py``.
"""
import math

import numpy as np
import paddle
import pytest

from ernievil2.losses import (
    KNOWN_VIEWS,
    contrastive_labels,
    gather_with_grad,
    parse_view_pairs,
    symmetric_info_nce,
)
from ernievil2.models.dual_encoder import clamp_logit_scale
from tests.helpers import table_loss

EXAMPLE_PAIRS = [
    ["image_v1", "text_v1", 1.0],
    ["image_v2", "text_v2", 1.0],
    ["image_v1", "image_v2", 0.5],
    ["text_v1", "text_v2", 0.5],
    ["image_v1", "tag", 0.5],
]


def unit_rows(rng, rows, dim):
    x = rng.standard_normal((rows, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def tensor(array, requires_grad=True):
    return paddle.to_tensor(np.asarray(array, dtype=np.float64), stop_gradient=not requires_grad)


def np_log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def np_clip_loss_and_grads(a, b, scale):
    """Symmetric InfoNCE of paired unit rows, and its gradient w.r.t. a, b, scale."""
    n = a.shape[0]
    sim = a @ b.T
    z = scale * sim
    log_p_rows, log_p_cols = np_log_softmax(z), np_log_softmax(z.T)
    loss = -(np.trace(log_p_rows) + np.trace(log_p_cols)) / (2 * n)
    # dL/dz: (softmax - onehot) of each direction, the column direction transposed back.
    grad_z = (np.exp(log_p_rows) - np.eye(n) + (np.exp(log_p_cols) - np.eye(n)).T) / (2 * n)
    return loss, scale * grad_z @ b, scale * grad_z.T @ a, float((grad_z * sim).sum())


def np_accuracy(a, b):
    sim = a @ b.T
    n = len(a)
    return (np.mean(sim.argmax(1) == np.arange(n)), np.mean(sim.T.argmax(1) == np.arange(n)))


# ---------------------------------------------------------------- pure maths


def test_clip_loss_matches_numpy_forward_and_gradient():
    rng = np.random.default_rng(0)
    a_np, b_np, scale_np = unit_rows(rng, 5, 3), unit_rows(rng, 5, 3), 7.0
    a, b, scale = tensor(a_np), tensor(b_np), tensor(scale_np)

    out = symmetric_info_nce(a, b, scale)
    grad_a, grad_b, grad_scale = paddle.grad(out["loss"], [a, b, scale])

    loss, ref_a, ref_b, ref_scale = np_clip_loss_and_grads(a_np, b_np, scale_np)
    np.testing.assert_allclose(out["loss"].item(), loss, rtol=1e-12)
    np.testing.assert_allclose(grad_a.numpy(), ref_a, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grad_b.numpy(), ref_b, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grad_scale.item(), ref_scale, rtol=1e-10)
    acc_a2b, acc_b2a = np_accuracy(a_np, b_np)
    assert out["acc_a2b"].item() == acc_a2b
    assert out["acc_b2a"].item() == acc_b2a


def test_accuracy_is_one_for_perfectly_aligned_views():
    rng = np.random.default_rng(1)
    a = tensor(unit_rows(rng, 6, 8))
    out = symmetric_info_nce(a, a, tensor(50.0))
    assert out["acc_a2b"].item() == 1.0 and out["acc_b2a"].item() == 1.0


def test_labels_point_at_this_ranks_rows():
    np.testing.assert_array_equal(contrastive_labels(3, rank=2).numpy(), [6, 7, 8])


@pytest.mark.parametrize("world_size", [1, 2, 3, 6])
def test_local_losses_average_to_the_global_loss_and_gradient(world_size):
    """One process plays every rank: chunk r scores its rows against all rows.

    The graph holds the local and the gathered path to each row, as the
    all-reduce-sum backward does across processes; DataParallel's mean over
    ranks is the division by world_size.
    """
    rng = np.random.default_rng(world_size)
    a_np, b_np = unit_rows(rng, 6, 4), unit_rows(rng, 6, 4)
    a, b, scale = tensor(a_np), tensor(b_np), tensor(9.0)
    local = 6 // world_size
    chunks = [
        symmetric_info_nce(
            a[r * local : (r + 1) * local], b[r * local : (r + 1) * local], scale, a, b, rank=r
        )
        for r in range(world_size)
    ]
    mean_loss = paddle.add_n([c["loss"] for c in chunks]) / world_size
    sum_grads = paddle.grad(paddle.add_n([c["loss"] for c in chunks]), [a, b, scale])

    loss, ref_a, ref_b, ref_scale = np_clip_loss_and_grads(a_np, b_np, 9.0)
    np.testing.assert_allclose(mean_loss.item(), loss, rtol=1e-12)
    for grad, ref in zip(sum_grads, (ref_a, ref_b, ref_scale)):
        np.testing.assert_allclose(grad.numpy() / world_size, ref, rtol=1e-10, atol=1e-12)
    acc_a2b, _ = np_accuracy(a_np, b_np)
    np.testing.assert_allclose(np.mean([c["acc_a2b"].item() for c in chunks]), acc_a2b)


def test_local_rows_alone_are_not_the_global_gradient():
    """Guards the test above: gathered rows held constant change the gradient."""
    rng = np.random.default_rng(3)
    a_np, b_np = unit_rows(rng, 6, 4), unit_rows(rng, 6, 4)
    a, b, scale = tensor(a_np), tensor(b_np), tensor(9.0)
    a_const, b_const = a.detach(), b.detach()
    total = paddle.add_n(
        [
            symmetric_info_nce(a[r * 3 : r * 3 + 3], b[r * 3 : r * 3 + 3], scale, a_const, b_const, r)["loss"]
            for r in range(2)
        ]
    )
    (grad_a,) = paddle.grad(total, [a])
    _, ref_a, _, _ = np_clip_loss_and_grads(a_np, b_np, 9.0)
    assert np.abs(grad_a.numpy() / 2 - ref_a).max() > 1e-3


@pytest.mark.parametrize(
    "rows, rank, given, match",
    [
        (4, 0, "a", "given together"),
        (4, 0, "b", "given together"),
        (4, 2, "both", r"this rank \(2\)"),
        (3, 0, "both", "not world_size equal chunks"),
    ],
)
def test_inconsistent_gathered_inputs_are_rejected(rows, rank, given, match):
    rng = np.random.default_rng(4)
    a, b = tensor(unit_rows(rng, rows, 2)), tensor(unit_rows(rng, rows, 2))
    everything = tensor(unit_rows(rng, 8, 2))
    a_all = everything if given in ("a", "both") else None
    b_all = everything if given in ("b", "both") else None
    with pytest.raises(ValueError, match=match):
        symmetric_info_nce(a, b, tensor(1.0), a_all, b_all, rank=rank)


def test_gather_with_grad_is_identity_in_one_process():
    x = tensor(np.ones((2, 3)))
    assert gather_with_grad(x) is x


# ---------------------------------------------------------------- logit scale


def test_clamp_passes_scale_and_gradient_inside_the_range():
    t = tensor(4.30)
    scale = clamp_logit_scale(t, 100.0)
    (grad,) = paddle.grad(scale, [t])
    assert scale.item() == pytest.approx(math.exp(4.30), rel=1e-12)
    assert grad.item() == pytest.approx(math.exp(4.30), rel=1e-12)


@pytest.mark.parametrize("temperature_b, bound", [(5.0, 100.0), (-1.0, 1.0)])
def test_clamp_pins_scale_and_stops_gradient_outside_the_range(temperature_b, bound):
    t = tensor(temperature_b)
    scale = clamp_logit_scale(t, 100.0)
    (grad,) = paddle.grad(scale, [t])
    assert scale.item() == bound
    assert grad.item() == 0.0


def test_clamp_rejects_a_maximum_below_one():
    with pytest.raises(ValueError, match="max_logit_scale must be >= 1, got 0.5"):
        clamp_logit_scale(tensor(0.0), 0.5)


# ---------------------------------------------------------------- the pair table


def random_views(seed, rows=4, dim=3, scale=3.0):
    rng = np.random.default_rng(seed)
    return {v: tensor(scale * rng.standard_normal((rows, dim))) for v in KNOWN_VIEWS}


def test_total_is_the_weighted_sum_of_pair_losses():
    loss_fn = table_loss(EXAMPLE_PAIRS)
    out = loss_fn(random_views(5), tensor(10.0))
    expected = sum(w * out[f"loss/{a}-{b}"].item() for a, b, w in EXAMPLE_PAIRS)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-12)
    assert set(out) == {"loss"} | {f"{k}/{a}-{b}" for a, b, _ in EXAMPLE_PAIRS for k in ("loss", "acc")}


def test_pair_terms_are_clip_losses_of_normalised_features():
    views = random_views(6)
    out = table_loss(EXAMPLE_PAIRS)(views, tensor(10.0))
    unit = {v: x.numpy() / np.linalg.norm(x.numpy(), axis=1, keepdims=True) for v, x in views.items()}
    for a, b, _ in EXAMPLE_PAIRS:
        unit_a, unit_b = unit[a], unit[b]
        loss, *_ = np_clip_loss_and_grads(unit_a, unit_b, 10.0)
        assert out[f"loss/{a}-{b}"].item() == pytest.approx(loss, rel=1e-12)
        assert out[f"acc/{a}-{b}"].item() == pytest.approx(np.mean(np_accuracy(unit_a, unit_b)))


def test_single_pair_keeps_its_weight():
    views = random_views(7)
    plain = table_loss([["image_v1", "text_v1", 1.0]])(views, tensor(10.0))
    weighted = table_loss([["image_v1", "text_v1", 0.25]])(views, tensor(10.0))
    assert weighted["loss"].item() == pytest.approx(0.25 * plain["loss"].item(), rel=1e-12)


def test_gradient_through_normalisation_matches_finite_differences():
    pairs = [["image_v1", "text_v1", 1.0], ["image_v1", "image_v2", 0.5]]
    loss_fn = table_loss(pairs)
    views = random_views(8, rows=3, dim=2)
    scale = tensor(5.0)
    names = ("image_v1", "text_v1", "image_v2")
    grads = paddle.grad(loss_fn(views, scale)["loss"], [views[v] for v in names])

    def loss_at(name, index, step):
        moved = {v: x.detach().clone() for v, x in views.items()}
        values = moved[name].numpy()
        values[index] += step
        moved[name] = tensor(values, requires_grad=False)
        return loss_fn(moved, scale)["loss"].item()

    eps = 1e-6
    for name, grad in zip(names, grads):
        numeric = np.zeros(grad.shape)
        for index in np.ndindex(*grad.shape):
            numeric[index] = (loss_at(name, index, eps) - loss_at(name, index, -eps)) / (2 * eps)
        np.testing.assert_allclose(grad.numpy(), numeric, rtol=1e-6, atol=1e-8)


def test_required_views_are_the_views_in_the_table():
    loss_fn = table_loss([["image_v1", "tag", 1.0], ["text_v2", "tag", 0.5]])
    assert loss_fn.needs.views == {"image_v1", "tag", "text_v2"}


def test_views_outside_the_table_are_ignored():
    views = random_views(9)
    only_needed = {v: views[v] for v in ("image_v1", "text_v1")}
    loss_fn = table_loss([["image_v1", "text_v1", 1.0]])
    assert loss_fn(views, tensor(3.0))["loss"].item() == loss_fn(only_needed, tensor(3.0))["loss"].item()


def test_missing_views_are_named():
    loss_fn = table_loss(EXAMPLE_PAIRS)
    views = random_views(10)
    del views["tag"], views["image_v2"]
    with pytest.raises(ValueError, match=r"lack views required by the loss pairs: \['image_v2', 'tag'\]; got"):
        loss_fn(views, tensor(1.0))


def test_views_with_different_batch_sizes_are_rejected():
    views = random_views(11)
    views["text_v1"] = views["text_v1"][:2]
    with pytest.raises(ValueError, match="same number of rows.*'text_v1': 2"):
        table_loss([["image_v1", "text_v1", 1.0]])(views, tensor(1.0))


def test_world_size_that_does_not_match_the_gather_is_rejected():
    # No process group here, so the gather returns the 4 local rows, not 2 * 4.
    loss_fn = table_loss([["image_v1", "text_v1", 1.0]], rank=1, world_size=2)
    with pytest.raises(ValueError, match="gathered 4 rows from 4 local ones, but world_size is 2"):
        loss_fn(random_views(12), tensor(1.0))


def test_without_gather_each_rank_uses_its_local_rows():
    views = random_views(13)
    alone = table_loss(EXAMPLE_PAIRS)(views, tensor(4.0))
    local = table_loss(EXAMPLE_PAIRS, rank=1, world_size=2, gather=False)(views, tensor(4.0))
    assert local["loss"].item() == alone["loss"].item()


def test_rank_outside_world_is_rejected():
    with pytest.raises(ValueError, match=r"rank must be in \[0, world_size=2\), got 2"):
        table_loss(EXAMPLE_PAIRS, rank=2, world_size=2)


def test_valid_table_parses_to_view_pairs():
    pairs = parse_view_pairs(EXAMPLE_PAIRS)
    assert [(p.view_a, p.view_b, p.weight) for p in pairs] == [tuple(e) for e in EXAMPLE_PAIRS]
    assert pairs[2].name == "image_v1-image_v2"


def with_entry(index, entry):
    pairs = [list(p) for p in EXAMPLE_PAIRS]
    pairs[index] = entry
    return pairs


@pytest.mark.parametrize(
    "pairs, message",
    [
        (
            with_entry(2, ["image_v1", "imgae_v2", 0.5]),
            "pairs[2]: unknown view 'imgae_v2'; known: image_v1, image_v2, text_v1, text_v2, tag; "
            "did you mean 'image_v2'?",
        ),
        (with_entry(1, ["audio", "text_v2", 1.0]), "pairs[1]: unknown view 'audio'; known: image_v1, "),
        (with_entry(0, [3, "text_v1", 1.0]), "pairs[0]: a view name must be a string, got 3"),
        (with_entry(3, ["text_v1", "text_v1", 0.5]), "pairs[3]: view 'text_v1' is paired with itself"),
        (with_entry(4, ["image_v1", "text_v1", 0.5]), "pairs[4]: [image_v1, text_v1] duplicates pairs[0]"),
        (with_entry(4, ["text_v1", "image_v1", 0.5]), "pairs[4]: [text_v1, image_v1] duplicates pairs[0]"),
        (with_entry(2, ["image_v1", "image_v2", 0]), "pairs[2]: weight must be a positive finite number, got 0"),
        (with_entry(2, ["image_v1", "image_v2", -0.5]), "got -0.5"),
        (with_entry(2, ["image_v1", "image_v2", float("nan")]), "positive finite number, got nan"),
        (with_entry(2, ["image_v1", "image_v2", float("inf")]), "got inf"),
        (with_entry(2, ["image_v1", "image_v2", "1e-3"]), "pairs[2]: weight must be a number, got '1e-3' (str)"),
        (with_entry(2, ["image_v1", "image_v2", True]), "weight must be a number, got True (bool)"),
        (with_entry(2, ["image_v1", "image_v2", None]), "weight must be a number, got None (NoneType)"),
        (with_entry(1, ["image_v2", "text_v2"]), "pairs[1]: expected [view_a, view_b, weight], got ['image_v2', "),
        (with_entry(1, "image_v2-text_v2"), "pairs[1]: expected [view_a, view_b, weight], got 'image_v2-text_v2'"),
        (with_entry(1, {"image_v2": "text_v2"}), "pairs[1]: expected [view_a, view_b, weight]"),
        ([], "pairs: expected a non-empty list of [view_a, view_b, weight], got []"),
        ({"image_v1": "text_v1"}, "pairs: expected a non-empty list"),
    ],
)
def test_invalid_tables_name_the_entry_and_value(pairs, message):
    with pytest.raises(ValueError) as error:
        table_loss(pairs)
    assert message in str(error.value)


def test_unknown_view_without_a_close_match_offers_no_guess():
    with pytest.raises(ValueError) as error:
        parse_view_pairs([["audio", "text_v1", 1.0]])
    assert "did you mean" not in str(error.value)
