"""Every registered tower builds, runs forward and backward, and fits the dual encoder."""
import numpy as np
import paddle
import pytest

from ernievil2.models import IMAGE_TOWERS, TEXT_TOWERS, DualEncoder, LogitScale, build_model
from ernievil2.models.tower import TowerCapabilityError, layer_scales
from ernievil2.registry import ConfigError

SMALL_IMAGE_TOWERS = {
    "ViT": {"img_size": 32, "patch_size": 16, "embed_dim": 32, "depth": 1, "num_heads": 2},
    "PaddleClas": {"backbone": "EfficientNetB0", "out_dim": 32},
}
SMALL_TEXT_TOWERS = {
    "ErnieText": {"vocab_size": 50, "hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64, "max_position_embeddings": 16},
}


def test_every_registered_tower_has_a_small_test_config():
    assert sorted(SMALL_IMAGE_TOWERS) == IMAGE_TOWERS.names()
    assert sorted(SMALL_TEXT_TOWERS) == TEXT_TOWERS.names()


@pytest.mark.parametrize("name", sorted(SMALL_IMAGE_TOWERS))
def test_image_towers_forward_backward(name):
    tower = IMAGE_TOWERS.build({"name": name, **SMALL_IMAGE_TOWERS[name]}, "Arch.image_tower")
    out = tower(paddle.randn([2, 3, 32, 32]))
    assert out.shape == [2, tower.out_dim] == [2, 32]
    out.sum().backward()
    assert all(p.grad is not None for p in tower.parameters() if not p.stop_gradient)


@pytest.mark.parametrize("name", sorted(SMALL_TEXT_TOWERS))
def test_text_towers_forward_backward(name):
    tower = TEXT_TOWERS.build({"name": name, **SMALL_TEXT_TOWERS[name]}, "Arch.text_tower")
    ids = paddle.to_tensor(np.array([[1, 5, 6, 2, 0, 0], [1, 7, 2, 0, 0, 0]], dtype="int64"))
    out = tower(ids)
    assert out.shape == [2, 32]
    out.sum().backward()
    assert tower.encoder_stack.block[0].attn.q.weight.grad is not None


def test_paddleclas_tower_in_the_dual_encoder():
    model = build_model({"image_tower": {"name": "PaddleClas", **SMALL_IMAGE_TOWERS["PaddleClas"]}, "text_tower": {"name": "ErnieText", **SMALL_TEXT_TOWERS["ErnieText"]}})
    # train mode: an untrained BatchNorm in eval mode squashes features to ~1e-13
    image = model.encode_image(paddle.randn([4, 3, 32, 32]))
    np.testing.assert_allclose(np.linalg.norm(image.numpy(), axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown paddleclas backbone 'EfficientNetB55'"):
        IMAGE_TOWERS.build({"name": "PaddleClas", "backbone": "EfficientNetB55"}, "Arch.image_tower")


def test_registry_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"Arch.image_tower.name: unknown image tower 'Vit'.*did you mean 'ViT'"):
        IMAGE_TOWERS.build({"name": "Vit"}, "Arch.image_tower")
    with pytest.raises(ConfigError, match=r"Arch.text_tower.hiden_size: unknown key.*did you mean 'hidden_size'"):
        TEXT_TOWERS.build({"name": "ErnieText", "hiden_size": 3}, "Arch.text_tower")


def test_logit_scale_is_clamped_for_real():
    scale = LogitScale(init_temperature=0.07, max_logit_scale=100)
    assert float(scale()) == pytest.approx(1 / 0.07, rel=1e-5)
    scale.temperature_b.set_value(paddle.to_tensor([10.0]))  # exp(10) >> 100
    assert float(scale()) == pytest.approx(100.0)
    frozen = LogitScale(learnable=False)
    assert frozen.temperature_b.stop_gradient


def test_image_size_mismatch_is_explained():
    tower = IMAGE_TOWERS.build({"name": "ViT", **SMALL_IMAGE_TOWERS["ViT"]}, "Arch.image_tower")
    with pytest.raises(ValueError, match=r"expected 32x32 images, got \[64, 64\]"):
        tower(paddle.randn([1, 3, 64, 64]))


def test_text_longer_than_positions_is_explained():
    tower = TEXT_TOWERS.build({"name": "ErnieText", **SMALL_TEXT_TOWERS["ErnieText"]}, "Arch.text_tower")
    with pytest.raises(ValueError, match="text length 20 exceeds max_position_embeddings 16"):
        tower(paddle.ones([1, 20], dtype="int64"))


def test_dual_encoder_rejects_mismatched_widths():
    image = IMAGE_TOWERS.build({"name": "ViT", **SMALL_IMAGE_TOWERS["ViT"]}, "Arch.image_tower")
    text = TEXT_TOWERS.build({"name": "ErnieText", **{**SMALL_TEXT_TOWERS["ErnieText"], "hidden_size": 16}}, "Arch.text_tower")
    with pytest.raises(ValueError, match="32-d features and the text tower 16-d"):
        DualEncoder(image, text)


def _grads(tower):
    return {n: p.grad.numpy().copy() for n, p in tower.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("kind", ["ViT", "ErnieText"])
def test_class_token_only_last_block_equals_the_full_computation(kind, recompute):
    """The feature path runs the last block for the first token alone: same features, same gradients."""
    paddle.seed(1)
    if kind == "ViT":
        tower = IMAGE_TOWERS.build({"name": kind, **SMALL_IMAGE_TOWERS[kind], "depth": 2, "recompute": recompute}, "Arch.image_tower")
        inputs = paddle.randn([3, 3, 32, 32])
        full = lambda: tower.forward_tokens(inputs)[:, 0]  # noqa: E731
    else:
        tower = TEXT_TOWERS.build({"name": kind, **SMALL_TEXT_TOWERS[kind], "num_layers": 2, "recompute": recompute}, "Arch.text_tower")
        inputs = paddle.to_tensor(np.array([[1, 5, 6, 2, 0, 0], [1, 7, 2, 0, 0, 0], [1, 8, 9, 10, 11, 2]], dtype="int64"))
        full = lambda: paddle.tanh(tower.pooler(tower.forward_tokens(inputs)[:, 0]))  # noqa: E731
    tower.train()  # recompute runs in training only; dropout is switched off so both paths are deterministic
    for layer in tower.sublayers():
        if isinstance(layer, paddle.nn.Dropout):
            layer.p = 0.0
    if kind == "ErnieText":
        for block in tower.encoder_stack.block:
            block.attn.attn_drop = 0.0
    reference = full()
    reference.sum().backward()
    reference_grads = _grads(tower)
    tower.clear_gradients()
    fast = tower(inputs)
    fast.sum().backward()
    np.testing.assert_allclose(fast.numpy(), reference.numpy(), rtol=1e-5, atol=1e-6)
    fast_grads = _grads(tower)
    assert sorted(fast_grads) == sorted(reference_grads)
    for name, grad in reference_grads.items():
        np.testing.assert_allclose(fast_grads[name], grad, rtol=1e-4, atol=1e-6, err_msg=name)
    assert list(tower.forward_tokens(inputs, cls_only=True).shape)[1] == 1


def small_model(image_tower):
    return build_model({"image_tower": {"name": image_tower, **SMALL_IMAGE_TOWERS[image_tower]}, "text_tower": {"name": "ErnieText", **SMALL_TEXT_TOWERS["ErnieText"]}})


@pytest.mark.parametrize("name", ["ViT", "ErnieText"])
def test_transformer_towers_group_every_parameter_once_and_recompute(name):
    model = small_model("ViT")
    tower = model.visual if name == "ViT" else model.text_model
    scales = layer_scales(tower, 0.5)
    assert set(scales) == {n for n, _ in tower.named_parameters()}
    assert sorted(set(scales.values())) == [0.25, 0.5, 1.0]  # stem, the one block, head
    model.set_grad_checkpointing()
    assert tower.recompute


def test_a_tower_that_cannot_is_an_error_at_build_time():
    model = small_model("PaddleClas")
    assert model.no_weight_decay() >= {"visual.net._fc.bias", "visual.net._conv._bn.weight"}
    with pytest.raises(TowerCapabilityError, match="PaddleClasTower tower has no set_grad_checkpointing"):
        model.set_grad_checkpointing()
    with pytest.raises(TowerCapabilityError, match="no layer_groups"):
        layer_scales(model.visual, 0.5)
    assert set(layer_scales(model.visual, 1.0).values()) == {1.0}
