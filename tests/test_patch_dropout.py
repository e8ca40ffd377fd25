"""Patch dropout (FLIP, ``Train.patch_keep``): the selection, the ViT path, the step and the trainer."""
import copy
import shutil

import numpy as np
import paddle
import pytest

from ernievil2.config import load_config
from ernievil2.engine.build import check_patch_keep
from ernievil2.engine.steps import accumulated_step, encode_views, image_groups, train_step
from ernievil2.models import build_model
from ernievil2.models.tower import TowerCapabilityError
from ernievil2.models.vit import VisionTransformer, keep_patch_tokens, kept_patch_count, kept_patch_indices
from ernievil2.registry import ConfigError
from tests.helpers import TINY_ARCH, table_loss, write_pairs_tsv, write_train_config
from tests.test_engine import final_weights, grads, random_batch, run_train, split

PAIRS = [["image_v1", "text_v1", 1.0], ["image_v2", "text_v2", 1.0], ["image_v1", "image_v2", 0.5], ["text_v1", "text_v2", 0.5]]


# --- the selection ----------------------------------------------------------------


def test_kept_patch_count_rounds_and_keeps_at_least_one():
    assert kept_patch_count(16, 0.5) == 8
    assert kept_patch_count(196, 0.5) == 98
    assert kept_patch_count(196, 0.75) == 147
    assert kept_patch_count(16, 0.25) == 4
    assert kept_patch_count(10, 0.25) == 3  # 2.5 rounds up
    assert kept_patch_count(16, 0.01) == 1
    assert kept_patch_count(16, 1.0) == 16
    for bad in (0.0, -0.5, 1.01):
        with pytest.raises(ValueError, match="keep ratio must be in"):
            kept_patch_count(16, bad)


@pytest.mark.parametrize("batch, patches, keep", [(5, 16, 0.5), (3, 196, 0.5), (4, 4, 0.75), (2, 49, 0.1), (3, 9, 1.0)])
def test_kept_indices_are_unique_in_range_ascending_and_counted(batch, patches, keep):
    paddle.seed(1)
    indices = kept_patch_indices(batch, patches, keep).numpy()
    assert indices.dtype == np.int64
    assert indices.shape == (batch, kept_patch_count(patches, keep))
    for row in indices:
        assert len(set(row.tolist())) == len(row)
        assert row.min() >= 0 and row.max() < patches
        assert (np.diff(row) > 0).all()


def test_kept_indices_differ_per_sample_and_are_uniform():
    paddle.seed(2)
    indices = kept_patch_indices(4000, 16, 0.5).numpy()
    assert len({tuple(row) for row in indices[:50]}) > 40  # C(16, 8) = 12,870 subsets
    # Every patch is kept in about half of the samples (binomial std 0.008): no position is favoured.
    share = np.bincount(indices.ravel(), minlength=16) / len(indices)
    np.testing.assert_allclose(share, 0.5, atol=0.04)


def test_kept_indices_follow_paddle_seed_and_rng_state():
    paddle.seed(7)
    first = kept_patch_indices(8, 16, 0.5).numpy()
    state = paddle.get_rng_state()
    second = kept_patch_indices(8, 16, 0.5).numpy()
    paddle.seed(7)
    np.testing.assert_array_equal(kept_patch_indices(8, 16, 0.5).numpy(), first)
    paddle.set_rng_state(state)
    np.testing.assert_array_equal(kept_patch_indices(8, 16, 0.5).numpy(), second)
    assert not np.array_equal(first, second)
    paddle.seed(8)
    assert not np.array_equal(kept_patch_indices(8, 16, 0.5).numpy(), first)


def test_keep_patch_tokens_against_numpy():
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((3, 1 + 6, 4)).astype("float32")
    indices = np.array([[0, 2, 5], [1, 3, 4], [0, 1, 2]], dtype="int64")
    got = keep_patch_tokens(paddle.to_tensor(tokens), paddle.to_tensor(indices)).numpy()
    expected = np.stack([np.concatenate([tokens[b, :1], tokens[b, 1:][indices[b]]]) for b in range(3)])
    np.testing.assert_array_equal(got, expected)


# --- the ViT -------------------------------------------------------------------------


def small_vit():
    paddle.seed(0)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    vit.train()
    return vit


def test_vit_keep_one_and_eval_mode_are_the_plain_forward_exactly():
    vit = small_vit()
    images = paddle.randn([3, 3, 32, 32])
    plain = vit(images).numpy()
    np.testing.assert_array_equal(vit.forward_patch_dropout(images, 1.0).numpy(), plain)
    vit.eval()
    np.testing.assert_array_equal(vit.forward_patch_dropout(images, 0.5).numpy(), vit(images).numpy())
    with pytest.raises(ValueError, match="keep ratio"):
        vit.forward_patch_dropout(images, 0.0)


def test_vit_drops_patches_after_the_position_embeddings_and_keeps_the_class_token():
    vit = small_vit()
    images = paddle.randn([3, 3, 32, 32])
    state = paddle.get_rng_state()
    got = vit.forward_patch_dropout(images, 0.25).numpy()
    paddle.set_rng_state(state)
    indices = kept_patch_indices(3, 16, 0.25).numpy()
    # Reference: the full token sequence in numpy, the class token and the kept patches picked by hand.
    patches = vit.patch_embed(images).numpy()
    cls = np.broadcast_to(vit.class_embedding.numpy(), (3, 1, 32))
    tokens = np.concatenate([cls, patches], axis=1) + vit.positional_embedding.numpy()
    kept = np.stack([np.concatenate([tokens[b, :1], tokens[b, 1 + indices[b]]]) for b in range(3)])
    x = vit.norm_pre(paddle.to_tensor(kept))
    for block in vit.blocks:
        x = block(x)
    expected = vit.norm_post(x)[:, 0].numpy()
    assert kept.shape == (3, 1 + 4, 32)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_only_kept_patches_receive_gradient():
    vit = small_vit()
    images = paddle.randn([2, 3, 32, 32])
    images.stop_gradient = False
    state = paddle.get_rng_state()
    vit.forward_patch_dropout(images, 0.5).sum().backward()
    paddle.set_rng_state(state)
    indices = kept_patch_indices(2, 16, 0.5).numpy()
    per_patch = np.abs(images.grad.numpy()).reshape(2, 3, 4, 8, 4, 8).sum(axis=(1, 3, 5)).reshape(2, 16)
    for b in range(2):
        mask = np.zeros(16, bool)
        mask[indices[b]] = True
        assert (per_patch[b][mask] > 0).all() and (per_patch[b][~mask] == 0).all()


# --- the dual encoder, the step ---------------------------------------------------------


def tiny_model():
    paddle.seed(0)
    # No dropout anywhere: a difference between draws is the kept patches alone.
    text = {**TINY_ARCH["text_tower"], "vocab_size": 50, "hidden_dropout": 0.0, "attention_dropout": 0.0}
    model = build_model(copy.deepcopy({**TINY_ARCH, "text_tower": text}))
    model.train()
    return model


def test_image_groups_one_per_distinct_ratio_in_view_order():
    views = {"image_v1", "image_v2", "text_v1"}
    assert image_groups(views) == [(1.0, ["image_v1", "image_v2"])]
    assert image_groups(views, {"image_v1": 1.0, "image_v2": 1.0}) == [(1.0, ["image_v1", "image_v2"])]
    assert image_groups(views, {"image_v1": 0.5, "image_v2": 0.5}) == [(0.5, ["image_v1", "image_v2"])]
    assert image_groups(views, {"image_v1": 1.0, "image_v2": 0.5}) == [(1.0, ["image_v1"]), (0.5, ["image_v2"])]
    assert image_groups(views, {"image_v1": 0.25, "image_v2": 0.5}) == [(0.25, ["image_v1"]), (0.5, ["image_v2"])]
    assert image_groups({"image_v2", "text_v1"}, {"image_v1": 0.5}) == [(1.0, ["image_v2"])]
    assert image_groups({"text_v1"}, {"image_v1": 0.5}) == []


def test_views_with_their_own_ratios_go_through_the_tower_in_separate_calls():
    model = tiny_model()
    batch = random_batch(4, 0)
    views = {"image_v1", "image_v2"}
    state = paddle.get_rng_state()
    features, _ = encode_views(model, batch, views, patch_keep={"image_v1": 1.0, "image_v2": 0.5})
    paddle.set_rng_state(state)
    np.testing.assert_array_equal(features["image_v1"].numpy(), model.visual(batch["image_v1"]).numpy())
    np.testing.assert_array_equal(features["image_v2"].numpy(), model.visual.forward_patch_dropout(batch["image_v2"], 0.5).numpy())
    # keep 1 everywhere is today's single stacked call
    plain, _ = encode_views(model, batch, views)
    same, _ = encode_views(model, batch, views, patch_keep={"image_v1": 1.0, "image_v2": 1.0})
    for view in plain:
        np.testing.assert_array_equal(same[view].numpy(), plain[view].numpy())
    with pytest.raises(ValueError, match="2 image batches need as many keep ratios"):
        model(images=[batch["image_v1"], batch["image_v2"]], patch_keep=0.5)


def test_accumulated_step_replays_the_kept_patches_exactly():
    """GradCache's second pass must drop the same patches as its first, or the cached gradients do not fit."""
    loss = table_loss(PAIRS)
    parts = split(random_batch(8, 1), 2)
    keep = {"image_v1": 0.5, "image_v2": 0.75}
    model = tiny_model()
    state = paddle.get_rng_state()
    accumulated_step(model, loss, parts, loss.needs.views, patch_keep=keep)
    got = grads(model)
    model.clear_gradients()
    paddle.set_rng_state(state)
    features = [encode_views(model, p, loss.needs.views, patch_keep=keep)[0] for p in parts]
    stacked = {v: paddle.concat([f[v] for f in features]) for v in features[0]}
    loss(stacked, model.logit_scale())["loss"].backward()
    expected = grads(model)
    assert sorted(got) == sorted(expected)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-6, err_msg=name)
    # and patches really were dropped: another draw gives other gradients, all patches others still
    model.clear_gradients()
    paddle.seed(12345)
    accumulated_step(model, loss, parts, loss.needs.views, patch_keep=keep)
    assert any(not np.allclose(grads(model)[n], expected[n]) for n in expected)
    model.clear_gradients()
    train_step(model, loss, random_batch(8, 1), loss.needs.views)
    assert any(not np.allclose(grads(model)[n], expected[n]) for n in expected)


def test_a_tower_without_patch_tokens_cannot_drop_patches():
    arch = {**TINY_ARCH, "image_tower": {"name": "PaddleClas", "backbone": "EfficientNetB0", "out_dim": TINY_ARCH["text_tower"]["hidden_size"]}}
    model = build_model(arch)
    check_patch_keep(model, {"image_v1": 1.0, "image_v2": 1.0})
    with pytest.raises(ConfigError, match=r"Train.patch_keep.image_v2: the PaddleClasTower tower has no forward_patch_dropout\(\)"):
        check_patch_keep(model, {"image_v1": 1.0, "image_v2": 0.5})
    with pytest.raises(TowerCapabilityError):
        model(images=paddle.randn([2, 3, 32, 32]), patch_keep=0.5)
    check_patch_keep(tiny_model(), {"image_v1": 0.5, "image_v2": 0.25})


# --- the config and the trainer -------------------------------------------------------------


def test_patch_keep_is_checked_when_the_config_loads(tmp_path):
    config = write_train_config(tmp_path, tmp_path / "train.tsv")
    assert load_config(str(config))["Train"]["patch_keep"] == {"image_v1": 1.0, "image_v2": 1.0}
    assert load_config(str(config), ["Train.patch_keep.image_v2=0.5"])["Train"]["patch_keep"]["image_v2"] == 0.5
    for override, message in (
        ("Train.patch_keep.image_v1=0", r"Train.patch_keep.image_v1: must be in \(0, 1\], got 0"),
        ("Train.patch_keep.image_v2=1.5", r"Train.patch_keep.image_v2: must be in \(0, 1\], got 1.5"),
        ("Train.patch_keep.text_v1=0.5", "Train.patch_keep.text_v1: unknown key"),
        ("Train.patch_keep=0.5", "Train.patch_keep: expected a mapping"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_config(str(config), [override])


def test_patch_dropout_with_accumulation_and_momentum_queue_resumes_exactly(tmp_path):
    """GradCache, the momentum encoder (every patch) and patch dropout together; a resumed run ends on the same weights."""
    train = write_pairs_tsv(tmp_path / "train.tsv", 24, seed=3)
    loss = {"terms": [
        {"name": "info_nce", "pairs": PAIRS},
        {"name": "momentum_queue", "size": 8, "mode": "both", "momentum": 0.9, "warmup_steps": 1, "mask_same_image": True},
    ]}
    steps = ["Train.max_steps=4", "Train.save_every=2", "Train.accum_steps=2", "Train.batch_size=2",
             "Train.patch_keep.image_v1=0.5", "Train.patch_keep.image_v2=0.75"]
    runs = {}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        runs[name] = write_train_config(tmp_path / name, train, Loss=loss)
        run_train(runs[name], *steps)
    out_b = tmp_path / "b" / "out"
    shutil.rmtree(out_b / "checkpoints" / "step_000004")
    (out_b / "checkpoints" / "latest").write_text("step_000002\n")
    assert "at step 2" in run_train(runs["b"], *steps).stdout
    reference, got = final_weights(tmp_path / "a" / "out", 4), final_weights(out_b, 4)
    for key, value in reference.items():
        np.testing.assert_array_equal(got[key].numpy(), value.numpy(), err_msg=key)
    # the same run without patch dropout ends elsewhere: the setting reached the towers
    (tmp_path / "c").mkdir()
    plain = write_train_config(tmp_path / "c", train, Loss=loss)
    run_train(plain, *steps[:4])
    other = final_weights(tmp_path / "c" / "out", 4)
    assert any(not np.array_equal(other[k].numpy(), reference[k].numpy()) for k in reference if k.startswith("visual."))
