"""``ernievil2.load`` and the gallery helpers; every example of docs/python_api.md runs here."""
import base64
import os
import re
import shutil
import subprocess
import sys

import cv2
import numpy as np
import paddle
import pytest
from PIL import Image

import ernievil2
from ernievil2.api import ModelSourceError, to_rgb
from ernievil2.config import dump_config, load_config
from ernievil2.inference.errors import DeviceUnavailableError
from ernievil2.inference.export import export_model, load_model
from tests.conftest import REPO
from tests.helpers import COLOURS, SHAPES, TINY_ARCH, scene

DOC = REPO / "docs" / "python_api.md"
TINY_FIXTURE_CONFIG = REPO / "configs" / "tiny_official_fixture.yaml"


def doc_blocks():
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)


def tiny_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(
        f"_base_: {REPO / 'configs' / 'ernievil2_base_vit16.yaml'}\n"
        f"Arch: {TINY_ARCH}\nTokenizer: {{max_len: 16}}\nPreprocess: {{image_size: 32, resize_short: 32}}\n",
        encoding="utf-8",
    )
    return load_config(str(path))


def lay_out(root, config, weights_state):
    """The files the doc's examples name: a training output, the 'official' weights and config, an export, photos."""
    train = root / "output" / "demo" / "train"
    step = train / "checkpoints" / "step_000001"
    step.mkdir(parents=True)
    dump_config(config, str(train / "config.yaml"))
    paddle.save(weights_state, str(step / "model.pdparams"))
    (train / "checkpoints" / "latest").write_text("step_000001\n")
    paddle.save(weights_state, str(root / "OPEN_ERNIE_VIL2_BASE_ViT.pdparams"))
    (root / "configs").mkdir()
    dump_config(config, str(root / "configs" / "ernievil2_base_vit16.yaml"))
    model = load_model(config, str(root / "OPEN_ERNIE_VIL2_BASE_ViT.pdparams"))
    export_model(model, config, None, str(root / "exported"))
    photos = root / "photos"
    photos.mkdir()
    for i, (colour, shape) in enumerate((c, s) for c in COLOURS for s in SHAPES):
        cv2.imwrite(str(photos / f"{i}.jpg"), cv2.cvtColor(scene(colour, shape, 48), cv2.COLOR_RGB2BGR))
    shutil.copyfile(photos / "0.jpg", root / "a.jpg")
    shutil.copyfile(photos / "3.jpg", root / "b.jpg")
    cv2.imwrite(str(root / "c.png"), cv2.imread(str(photos / "5.jpg")))


def run_doc(root, monkeypatch):
    monkeypatch.chdir(root)
    namespace = {}
    blocks = doc_blocks()
    assert len(blocks) >= 5
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102  (the doc's own examples)
    return namespace


def check_doc_results(ns, root):
    probs = ns["probs"].numpy()
    assert probs.shape == (3, 2)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)
    assert ns["same"] < 1e-4
    assert ns["features"].shape == [len(os.listdir(root / "photos")), ns["model"].embed_dim]
    best = ns["hits"][0][0]  # a.jpg is a copy of photos/0.jpg
    assert best.id == os.path.join("photos", "0.jpg") and best.score == pytest.approx(1.0, abs=1e-5)
    assert ns["gallery"].size == len(os.listdir(root / "photos"))
    assert (root / "gallery" / "items.json").is_file() and (root / "photos_index" / "index.faiss").is_file()


def test_doc_examples_on_a_tiny_model(tmp_path, monkeypatch):
    config = tiny_config(tmp_path)
    paddle.seed(5)
    from ernievil2.models import build_model

    lay_out(tmp_path / "run", config, build_model(config["Arch"]).state_dict())
    check_doc_results(run_doc(tmp_path / "run", monkeypatch), tmp_path / "run")


def test_doc_examples_on_the_official_fixture(tmp_path, monkeypatch, shared_dir):
    config = load_config(str(TINY_FIXTURE_CONFIG))
    state = paddle.load(str(shared_dir / "fixtures" / "official_ernievil2_tiny" / "model.pdparams"))
    lay_out(tmp_path / "run", config, state)
    check_doc_results(run_doc(tmp_path / "run", monkeypatch), tmp_path / "run")


def test_official_fixture_embeddings_through_load(shared_dir):
    fixture = shared_dir / "fixtures" / "official_ernievil2_tiny"
    with open(fixture / "test.coco_cn.data", encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f]
    model = ernievil2.load(fixture / "model.pdparams", config=str(TINY_FIXTURE_CONFIG), device="cpu", batch_size=7)
    text = model.encode_text([row[0] for row in rows]).numpy()
    # Encoded image bytes are one of the accepted inputs; batches of 7 split the 20 images unevenly.
    image = model.encode_image([base64.b64decode(row[2]) for row in rows]).numpy()
    np.testing.assert_allclose(text, np.load(fixture / "text_emb.npy"), atol=1e-5, rtol=0)
    np.testing.assert_allclose(image, np.load(fixture / "image_emb.npy"), atol=1e-5, rtol=0)
    logits = model.similarity(image, text).numpy()
    cos = image @ text.T
    np.testing.assert_allclose(logits, model.logit_scale * cos, rtol=1e-5, atol=1e-5)
    network = load_model(load_config(str(TINY_FIXTURE_CONFIG)), str(fixture / "model.pdparams"))
    assert model.logit_scale == pytest.approx(float(network.logit_scale()), rel=1e-6)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    config = tiny_config(root)
    paddle.seed(7)
    from ernievil2.models import build_model

    network = build_model(config["Arch"])
    paddle.save(network.state_dict(), str(root / "w.pdparams"))
    dump_config(config, str(root / "config.yaml"))
    return ernievil2.load(root / "w.pdparams", device="cpu"), root


def test_single_inputs_give_one_row_and_lists_batch_the_same(tiny):
    model, _ = tiny
    rgb = scene("红色", "圆形", 40)
    one = model.encode_image(rgb).numpy()
    many = model.encode_image([rgb] * 5, batch_size=2).numpy()
    assert one.shape == (1, model.embed_dim)
    np.testing.assert_allclose(many, np.repeat(one, 5, axis=0), atol=1e-5)
    texts = ["一个红色的圆形", "蓝色", "一个很长很长很长的黄色方块在白色的背景上"]
    batched = model.encode_text(texts, batch_size=1).numpy()
    together = model.encode_text(texts).numpy()
    np.testing.assert_allclose(batched, together, atol=1e-5)
    np.testing.assert_allclose(model.encode_text("蓝色").numpy(), together[1:2], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)


def test_image_kinds_decode_to_the_same_rgb(tmp_path):
    rgb = scene("绿色", "方块", 40)
    path = tmp_path / "x.png"
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    for image in (str(path), path, path.read_bytes(), Image.fromarray(rgb), Image.fromarray(rgb).convert("RGBA"),
                  np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])):
        np.testing.assert_array_equal(to_rgb(image), rgb)
    grey = rgb[:, :, 0]
    np.testing.assert_array_equal(to_rgb(grey), np.dstack([grey] * 3))
    with pytest.raises(TypeError, match="uint8"):
        to_rgb(rgb.astype(np.float32))
    with pytest.raises(ValueError, match="channels"):
        to_rgb(np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(IsADirectoryError, match="build_gallery"):
        to_rgb(str(tmp_path))
    with pytest.raises(TypeError, match="cannot read an image from int"):
        to_rgb(3)


def test_progress_bar_when_asked(tiny, capfd):
    model, _ = tiny
    model.encode_text(["红色"] * 3)
    assert "text" not in capfd.readouterr().err
    model.encode_text(["红色"] * 3, progress=True)
    assert "3/3" in capfd.readouterr().err


def test_sources_that_are_not_models_name_what_to_pass(tmp_path, tiny):
    _, root = tiny
    with pytest.raises(ModelSourceError, match="not a released model name .*did you mean 'ernie_vil-2.0-base-zh'"):
        ernievil2.load("ernie-vil-2.0-base-zh")
    with pytest.raises(ModelSourceError, match="file or folder not found"):
        ernievil2.load(str(tmp_path / "missing.pdparams"))
    lonely = tmp_path / "lonely.pdparams"
    lonely.write_bytes((root / "w.pdparams").read_bytes())
    with pytest.raises(ModelSourceError, match="without a config.*config="):
        ernievil2.load(lonely)
    with pytest.raises(ModelSourceError, match="holds no model"):
        ernievil2.load(tmp_path)
    (tmp_path / "deploy.yaml").write_text("{}")
    with pytest.raises(ModelSourceError, match="do not pass config"):
        ernievil2.load(tmp_path, config="x.yaml")


@pytest.mark.skipif(paddle.device.is_compiled_with_cuda(), reason="a CUDA build has a GPU path")
def test_gpu_on_a_cpu_build_is_an_error_not_a_fallback(tiny):
    _, root = tiny
    with pytest.raises(DeviceUnavailableError, match="CUDA build"):
        ernievil2.load(root / "w.pdparams", device="gpu")


def test_search_texts_and_images(tiny, tmp_path):
    model, _ = tiny
    for i, (colour, shape) in enumerate((c, s) for c in COLOURS for s in SHAPES):
        cv2.imwrite(str(tmp_path / f"{i}.png"), cv2.cvtColor(scene(colour, shape, 40), cv2.COLOR_RGB2BGR))
    gallery = ernievil2.build_gallery(model, tmp_path)
    assert gallery.size == 8
    first = str(tmp_path / "0.png")
    hits = ernievil2.search(model, gallery, first, k=3)
    assert hits[0].id == first and hits[0].score == pytest.approx(1.0, abs=1e-5) and len(hits) == 3
    per_query = ernievil2.search(model, gallery, ["红色", "蓝色"], k=2)
    assert len(per_query) == 2 and all(len(h) == 2 for h in per_query)
    with pytest.raises(ValueError, match="all texts or all images"):
        ernievil2.search(model, gallery, ["红色", first])


def test_import_is_light():
    code = "import sys, ernievil2; print('paddle' in sys.modules); ernievil2.load; print('paddle' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}).stdout.split()
    assert out == ["False", "True"]


def test_an_onnx_export_gives_the_dygraph_embeddings(tmp_path, shared_dir):
    weights = str(shared_dir / "fixtures" / "official_ernievil2_tiny" / "model.pdparams")
    config = load_config(str(TINY_FIXTURE_CONFIG))
    export_model(load_model(config, weights), config, weights, str(tmp_path / "onnx"), fmt="onnx")
    exported = ernievil2.load(tmp_path / "onnx")
    dygraph = ernievil2.load(weights, config=config)
    assert exported.kind == "export" and dygraph.kind == "dygraph" and exported.device == "cpu"
    texts, images = ["一辆摩托车", "一只橘色的猫在沙发上"], [scene("红色", "方块", 48), scene("蓝色", "圆形", 60)]
    np.testing.assert_allclose(exported.encode_text(texts).numpy(), dygraph.encode_text(texts).numpy(), atol=1e-5)
    np.testing.assert_allclose(exported.encode_image(images).numpy(), dygraph.encode_image(images).numpy(), atol=1e-5)
    assert exported.logit_scale == pytest.approx(dygraph.logit_scale, rel=1e-6)


def test_a_gallery_from_pairs_keeps_their_captions(tiny, tmp_path):
    model, _ = tiny
    from tests.helpers import write_pairs_tsv

    tsv = write_pairs_tsv(tmp_path / "pairs.tsv", 5)
    gallery = ernievil2.build_gallery(model, tsv, output=tmp_path / "g")
    assert gallery.ids == [f"img{i}" for i in range(5)]
    assert all(text.startswith("一个") for text in gallery.texts)
    assert ernievil2.load_gallery(tmp_path / "g" / "texts").size == 5


def test_a_paddlenlp_folder_loads_with_the_official_preprocessing_and_vocabulary(tmp_path, shared_dir):
    from ernievil2.checkpoint import read_model_state
    from ernievil2.checkpoint.paddlenlp import write_paddlenlp_dir

    weights = str(shared_dir / "fixtures" / "official_ernievil2_tiny" / "model.pdparams")
    config = load_config(str(TINY_FIXTURE_CONFIG))
    write_paddlenlp_dir(str(tmp_path / "nlp"), config["Arch"], read_model_state(weights))
    from_folder = ernievil2.load(tmp_path / "nlp")
    from_weights = ernievil2.load(weights, config=config)
    texts = ["一辆摩托车", "一只橘色的猫"]
    np.testing.assert_allclose(from_folder.encode_text(texts).numpy(), from_weights.encode_text(texts).numpy(), atol=1e-6)
    image = scene("黄色", "圆形", 240)
    np.testing.assert_allclose(from_folder.encode_image(image).numpy(), from_weights.encode_image(image).numpy(), atol=1e-6)
