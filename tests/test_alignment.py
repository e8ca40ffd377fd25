"""Alignment with the official release and with PaddleNLP's ErnieViLModel."""
import base64
import json

import cv2
import numpy as np
import paddle
import pytest

from ernievil2.checkpoint import CheckpointMismatchError, load_pretrained, read_model_state
from ernievil2.checkpoint.paddlenlp import (
    official_to_paddlenlp,
    paddlenlp_config_from_arch,
    paddlenlp_to_official,
    read_paddlenlp_dir,
    write_paddlenlp_dir,
)
from ernievil2.config import load_config
from ernievil2.data.image_ops import EvalTransform
from ernievil2.data.tokenizer import ErnieTokenizer
from ernievil2.models import build_model
from ernievil2.resource_files import resolve_resource
from tests.conftest import REPO

TINY_CONFIG = str(REPO / "configs" / "tiny_official_fixture.yaml")
BASE_CONFIG = str(REPO / "configs" / "ernievil2_base_vit16.yaml")


@pytest.fixture(scope="module")
def fixture_dir(shared_dir):
    return shared_dir / "fixtures" / "official_ernievil2_tiny"


def _decode(b64):
    bgr = cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def fixture_rows(fixture_dir):
    with open(fixture_dir / "test.coco_cn.data", encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t") for line in f]


def test_base_model_keys_and_shapes_are_the_official_ones(shared_dir):
    expected = json.loads((shared_dir / "fixtures" / "official_ernievil2_base_param_shapes.json").read_text())
    model = build_model(load_config(BASE_CONFIG)["Arch"])
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == expected
    assert sum(int(np.prod(s)) for s in ours.values()) > 190_000_000


def test_tiny_model_keys_match_fixture(fixture_dir):
    expected = json.loads((fixture_dir / "param_shapes.json").read_text())
    model = build_model(load_config(TINY_CONFIG)["Arch"])
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == expected


@pytest.mark.parametrize("backend", ["python", "fast"])
def test_reader_ids_equal_official(fixture_dir, fixture_rows, backend):
    config = load_config(TINY_CONFIG)
    tokenizer = ErnieTokenizer(resolve_resource(config["Tokenizer"]["vocab_file"], config), backend=backend)
    assert tokenizer.backend == backend
    ids = tokenizer.encode([row[0] for row in fixture_rows])
    np.testing.assert_array_equal(ids, np.load(fixture_dir / "input_ids.npy"))


def test_official_checkpoint_gives_official_embeddings(fixture_dir, fixture_rows):
    config = load_config(TINY_CONFIG)
    model = build_model(config["Arch"])
    load_pretrained(model, str(fixture_dir / "model.pdparams"))
    model.eval()
    tokenizer = ErnieTokenizer(resolve_resource(config["Tokenizer"]["vocab_file"], config))
    transform = EvalTransform.from_config(config["Preprocess"])
    ids = tokenizer.encode([row[0] for row in fixture_rows])
    images = np.stack([transform(_decode(row[2])) for row in fixture_rows])
    with paddle.no_grad():
        text = model.encode_text(paddle.to_tensor(ids)).numpy()
        image = model.encode_image(paddle.to_tensor(images)).numpy()
    np.testing.assert_allclose(text, np.load(fixture_dir / "text_emb.npy"), atol=1e-5, rtol=0)
    np.testing.assert_allclose(image, np.load(fixture_dir / "image_emb.npy"), atol=1e-5, rtol=0)


def test_mismatched_checkpoint_names_every_problem(fixture_dir, tmp_path):
    state = read_model_state(str(fixture_dir / "model.pdparams"))
    state.pop("text_model.pooler.bias")
    state["visual.extra"] = paddle.zeros([2])
    state["visual.norm_post.weight"] = paddle.zeros([65])
    path = tmp_path / "broken.pdparams"
    paddle.save(state, str(path))
    model = build_model(load_config(TINY_CONFIG)["Arch"])
    with pytest.raises(CheckpointMismatchError) as err:
        load_pretrained(model, str(path))
    message = str(err.value)
    assert "text_model.pooler.bias" in message and "missing" in message
    assert "visual.extra" in message and "unexpected" in message
    assert "visual.norm_post.weight: model [64] vs checkpoint [65]" in message


# --- PaddleNLP parity -------------------------------------------------------

SMALL_ARCH = {
    "name": "ErnieViL2",
    "image_tower": {
        "name": "ViT", "img_size": 32, "patch_size": 16, "embed_dim": 32, "depth": 2,
        "num_heads": 4, "mlp_ratio": 4, "qkv_bias": True, "epsilon": 1e-6,
    },
    "text_tower": {
        "name": "ErnieText", "vocab_size": 100, "hidden_size": 32, "num_layers": 2, "num_heads": 4,
        "intermediate_size": 64, "max_position_embeddings": 64, "hidden_dropout": 0.1,
        "attention_dropout": 0.1, "act": "gelu", "epsilon": 1e-5,
    },
}


@pytest.fixture(scope="module")
def paddlenlp_model():
    from paddlenlp.transformers import ErnieViLConfig, ErnieViLModel

    paddle.seed(3)
    model = ErnieViLModel(ErnieViLConfig(**paddlenlp_config_from_arch(SMALL_ARCH)))
    # PaddleNLP initialises LayerNorms to identity; randomise them so that a
    # swapped weight/bias or norm1/norm2 would show.
    for name, param in model.named_parameters():
        param.set_value(paddle.randn(param.shape, dtype=param.dtype) * 0.2 + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
    model.eval()
    return model


def _inputs():
    rng = np.random.default_rng(0)
    images = rng.standard_normal((3, 3, 32, 32)).astype("float32")
    ids = rng.integers(4, 100, size=(3, 12)).astype("int64")
    ids[:, 0] = 1
    ids[1, 7:] = 0  # padding must be masked the same way
    ids[2, 3:] = 0
    return paddle.to_tensor(images), paddle.to_tensor(ids)


def _paddlenlp_text_epsilon(model):
    return {layer._epsilon for n, layer in model.named_sublayers() if n.startswith("text_model") and isinstance(layer, paddle.nn.LayerNorm)}


def test_paddlenlp_text_tower_ignores_its_configured_epsilon(paddlenlp_model):
    # PaddleNLP's ErnieModel init resets every LayerNorm to eps 1e-12 after
    # ErnieViL set the configured 1e-5 (the official value). Conversion keeps
    # the official 1e-5; parity below is checked at PaddleNLP's effective eps.
    assert paddlenlp_model.config.text_config.layer_norm_eps == 1e-5
    assert _paddlenlp_text_epsilon(paddlenlp_model) == {1e-12}


def test_paddlenlp_weights_give_the_same_features(paddlenlp_model):
    (epsilon,) = _paddlenlp_text_epsilon(paddlenlp_model)
    arch = json.loads(json.dumps(SMALL_ARCH))
    arch["text_tower"]["epsilon"] = epsilon
    ours = build_model(arch)
    load_pretrained_state = paddlenlp_to_official(paddlenlp_model.state_dict())
    ours.set_state_dict(load_pretrained_state)
    ours.eval()
    images, ids = _inputs()
    with paddle.no_grad():
        their_img = paddlenlp_model.get_image_features(pixel_values=images).numpy()
        their_txt = paddlenlp_model.get_text_features(input_ids=ids).numpy()
        our_img = ours.encode_image(images, normalize=False).numpy()
        our_txt = ours.encode_text(ids, normalize=False).numpy()
    np.testing.assert_allclose(our_img, their_img, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(our_txt, their_txt, atol=1e-5, rtol=1e-5)
    assert float(ours.contrastive_loss_mm.temperature_b) == pytest.approx(float(paddlenlp_model.temperature))


def test_conversion_round_trips_exactly(paddlenlp_model):
    theirs = {k: v.numpy() for k, v in paddlenlp_model.state_dict().items()}
    back = official_to_paddlenlp(paddlenlp_to_official(theirs))
    assert sorted(back) == sorted(theirs)
    for key, value in theirs.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_save_pretrained_folder_round_trip(paddlenlp_model, tmp_path):
    from paddlenlp.transformers import ErnieViLModel

    folder = tmp_path / "nlp"
    paddlenlp_model.save_pretrained(str(folder))
    arch, state = read_paddlenlp_dir(str(folder))
    assert arch["image_tower"]["embed_dim"] == 32 and arch["text_tower"]["num_layers"] == 2
    ours = build_model(arch)
    load_pretrained(ours, str(folder))  # strict: every key and shape must fit
    out = tmp_path / "back"
    write_paddlenlp_dir(str(out), arch, state)
    reloaded = ErnieViLModel.from_pretrained(str(out))
    reloaded.eval()
    images, ids = _inputs()
    with paddle.no_grad():
        np.testing.assert_allclose(
            reloaded.get_text_features(input_ids=ids).numpy(),
            paddlenlp_model.get_text_features(input_ids=ids).numpy(),
            atol=1e-6,
        )


def test_convert_checkpoint_cli_round_trip(paddlenlp_model, tmp_path, fixture_dir):
    import subprocess
    import sys

    from paddlenlp.transformers import ErnieViLModel

    tool = str(REPO / "tools" / "convert_checkpoint.py")
    nlp_dir = tmp_path / "nlp"
    paddlenlp_model.save_pretrained(str(nlp_dir))
    ours = tmp_path / "ours.pdparams"
    subprocess.run([sys.executable, tool, "to-ours", str(nlp_dir), str(ours), "--arch-out", str(tmp_path / "arch.yaml")], check=True, capture_output=True)
    state = paddle.load(str(ours))
    assert "visual.blocks.0.attn.qkv.weight" in state and "contrastive_loss_mm.temperature_b" in state
    back = tmp_path / "back"
    subprocess.run([sys.executable, tool, "to-paddlenlp", str(fixture_dir / "model.pdparams"), str(back), "-c", TINY_CONFIG], check=True, capture_output=True)
    reloaded = ErnieViLModel.from_pretrained(str(back))
    ours_model = build_model(load_config(TINY_CONFIG)["Arch"])
    load_pretrained(ours_model, str(fixture_dir / "model.pdparams"))
    reloaded.eval(), ours_model.eval()
    pixels = paddle.randn([2, 3, 224, 224])
    with paddle.no_grad():
        np.testing.assert_allclose(
            reloaded.get_image_features(pixel_values=pixels).numpy(), ours_model.encode_image(pixels, normalize=False).numpy(), atol=1e-5
        )
    wrong = subprocess.run([sys.executable, tool, "to-paddlenlp", str(fixture_dir / "model.pdparams"), str(tmp_path / "x"), "-c", BASE_CONFIG], capture_output=True, text=True)
    assert wrong.returncode == 2 and "shape mismatch" in wrong.stderr
