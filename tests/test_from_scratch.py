"""Training from scratch: the initialisation is what the config says, loading ignores it, and it learns.

docs/training.md ("Training from scratch") has the measurements behind the defaults.
"""
import math

import numpy as np
import paddle
import pytest

from ernievil2.config import load_config
from ernievil2.engine.optim import build_optimizer
from ernievil2.engine.steps import train_step
from ernievil2.losses import build_loss
from ernievil2.models import build_model
from ernievil2.models.ernie_text import ErnieTextEncoder
from ernievil2.models.vit import VisionTransformer
from tests.conftest import REPO

WIDTH = 128


def text_tower(**kwargs):
    return ErnieTextEncoder(vocab_size=100, hidden_size=WIDTH, num_layers=2, num_heads=4, intermediate_size=4 * WIDTH, max_position_embeddings=32, **kwargs)


def image_tower(**kwargs):
    return VisionTransformer(img_size=32, patch_size=16, embed_dim=WIDTH, depth=2, num_heads=4, **kwargs)


def std(param):
    return float(param.numpy().std())


def test_xavier_scales_with_width_and_bert_is_002():
    paddle.seed(0)
    xavier, bert = text_tower(init="xavier"), text_tower(init="bert")
    ffn = xavier.encoder_stack.block[0].ffn.i.weight  # [128, 512]
    assert std(ffn) == pytest.approx(math.sqrt(2 / (WIDTH + 4 * WIDTH)), rel=0.05)
    # token tables: rows of the width's scale, whatever their number (the released vocabulary has 40k)
    big_vocab = ErnieTextEncoder(vocab_size=40000, hidden_size=WIDTH, num_layers=1, num_heads=4, intermediate_size=4 * WIDTH)
    for table in (xavier.word_emb.weight, xavier.pos_emb.weight, big_vocab.word_emb.weight):
        assert std(table) == pytest.approx(WIDTH**-0.5, rel=0.1)
    for param in (bert.encoder_stack.block[0].ffn.i.weight, bert.word_emb.weight, bert.pooler.weight):
        assert std(param) == pytest.approx(0.02, rel=0.1)
    assert float(np.abs(xavier.encoder_stack.block[0].ffn.i.bias.numpy()).max()) == 0.0
    vit = image_tower(init="xavier")
    assert std(vit.positional_embedding) == pytest.approx(WIDTH**-0.5, rel=0.1)
    # the patch kernel is a linear map from a 3x16x16 patch to a token, not an overlapping conv
    assert std(vit.patch_embed.proj.weight) == pytest.approx(math.sqrt(2 / (3 * 16 * 16 + WIDTH)), rel=0.05)
    assert std(image_tower(init="bert").positional_embedding) == pytest.approx(0.02, rel=0.1)


def test_the_text_feature_is_what_the_config_says():
    paddle.seed(0)
    ids = paddle.to_tensor([[1, 5, 6, 7, 2, 0], [1, 9, 2, 0, 0, 0]])
    none = text_tower(pooler="none")
    assert not any(name.startswith("pooler") for name in none.state_dict())
    none.eval()
    np.testing.assert_allclose(none(ids).numpy(), none.forward_tokens(ids)[:, 0].numpy(), atol=1e-6)
    tanh = text_tower(pooler="tanh")
    assert {"pooler.weight", "pooler.bias"} <= set(tanh.state_dict())
    with pytest.raises(ValueError, match="unknown pooler"):
        text_tower(pooler="mean")
    with pytest.raises(ValueError, match="unknown init"):
        text_tower(init="kaiming")


def test_shipped_configs_say_which():
    official = load_config(str(REPO / "configs" / "ernievil2_base_vit16.yaml"))["Arch"]["text_tower"]
    demo = load_config(str(REPO / "configs" / "demo" / "base.yaml"))["Arch"]["text_tower"]
    assert official.get("pooler", "tanh") == "tanh"  # the released checkpoint has the pooler
    assert demo["pooler"] == "none"


def test_loading_weights_makes_the_init_irrelevant(shared_dir):
    from ernievil2.checkpoint import load_pretrained

    arch = load_config(str(REPO / "configs" / "tiny_official_fixture.yaml"))["Arch"]
    weights = str(shared_dir / "fixtures" / "official_ernievil2_tiny" / "model.pdparams")
    images = paddle.randn([2, 3, 224, 224])
    ids = paddle.to_tensor([[1, 20, 30, 2, 0], [1, 40, 2, 0, 0]])
    outputs = []
    for init in ("xavier", "bert"):
        paddle.seed(1 if init == "xavier" else 2)
        model = build_model({**arch, "image_tower": {**arch["image_tower"], "init": init}, "text_tower": {**arch["text_tower"], "init": init}})
        load_pretrained(model, weights)
        model.eval()
        outputs.append((model.encode_image(images).numpy(), model.encode_text(ids).numpy()))
    for a, b in zip(*outputs):
        np.testing.assert_array_equal(a, b)


def tiny_slice(n=64, seed=0):
    """``n`` image-caption pairs where the caption's tokens say the image's colour and quadrant."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 4, n)
    cells = rng.integers(0, 4, n)
    images = np.zeros((n, 3, 32, 32), np.float32)
    palette = np.array([[1, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1]], np.float32)
    for i, (c, q) in enumerate(zip(colours, cells)):
        y, x = divmod(int(q), 2)
        images[i, :, 16 * y : 16 * y + 16, 16 * x : 16 * x + 16] = palette[c][:, None, None]
    ids = np.zeros((n, 6), np.int64)
    ids[:, 0], ids[:, 3] = 1, 2
    ids[:, 1] = 10 + colours
    ids[:, 2] = 20 + cells
    return {"image_v1": paddle.to_tensor(images), "text": paddle.to_tensor(ids), "image_id": paddle.arange(n)}


def train_loss(init, pooler, steps=10):
    paddle.seed(0)
    arch = {
        "image_tower": {"name": "ViT", "img_size": 32, "patch_size": 16, "embed_dim": WIDTH, "depth": 2, "num_heads": 4, "init": init},
        "text_tower": {
            "name": "ErnieText", "vocab_size": 100, "hidden_size": WIDTH, "num_layers": 2, "num_heads": 4,
            "intermediate_size": 4 * WIDTH, "max_position_embeddings": 32, "hidden_dropout": 0.0, "attention_dropout": 0.0,
            "init": init, "pooler": pooler,
        },
    }
    model = build_model(arch)
    loss = build_loss({"terms": [{"name": "info_nce", "pairs": [["image_v1", "text_v1", 1.0]]}]})
    optimizer = build_optimizer(model, {
        "name": "AdamW", "lr": 1e-3, "weight_decay": 0.05, "beta1": 0.9, "beta2": 0.98, "epsilon": 1e-6, "warmup_steps": 0,
        "min_lr_ratio": 0.0, "layer_decay": 1.0, "grad_clip": 1.0, "freeze": [],
    })
    batch = tiny_slice()
    for _ in range(steps):
        terms = train_step(model, loss, batch, loss.needs.views)
        optimizer.step()
        optimizer.clear_grad()
    return float(terms["loss"])


# ln(64) = 4.16 is where a contrastive loss over 64 pairs starts. After 10 steps the defaults
# reach ~1.55 and the old initialisation (std 0.02, tanh pooler) ~3.35 (bert + no pooler ~2.98,
# xavier + tanh ~2.05): the bound sits between.
LOSS_BOUND = 2.5


def test_the_default_init_learns_a_tiny_slice_that_the_old_one_does_not():
    new = train_loss("xavier", "none")
    old = train_loss("bert", "tanh")
    assert new < LOSS_BOUND < old, (new, old)
    assert train_loss("xavier", "none") == new  # deterministic
