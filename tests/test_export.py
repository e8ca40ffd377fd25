"""Export to Paddle Inference: parity with the dygraph towers, a self-contained folder, clear errors."""
import base64
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import paddle
import pytest
import yaml

from ernievil2.checkpoint import read_model_state
from ernievil2.checkpoint.paddlenlp import write_paddlenlp_dir
from ernievil2.config import load_config
from ernievil2.data.tokenizer import trim_padding
from ernievil2.inference.deploy import DEPLOY_FILE, read_deploy
from ernievil2.inference.errors import DeviceUnavailableError, ExportError
from ernievil2.inference.export import export_model, load_model
from ernievil2.inference.predictor import (
    ExportedModel,
    PredictorOptions,
    bucket_size,
    length_sorted_batches,
    pad_text_batch,
    shape_range,
)
from ernievil2.resource_files import resolve_resource
from tests.conftest import REPO

TINY_CONFIG = str(REPO / "configs" / "tiny_official_fixture.yaml")
ATOL = 1e-5
TEXTS = [
    "一张草莓的照片",
    "猫",
    "一只在草地上奔跑的金毛犬，阳光明媚，背景是蓝天白云和远处的山",
    "A photo of 3 dogs!",
]


def run_tool(*args, cwd=None):
    result = subprocess.run(
        [sys.executable, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300
    )
    return result.returncode, result.stdout, result.stderr


@pytest.fixture(scope="module")
def fixture_dir(shared_dir):
    return shared_dir / "fixtures" / "official_ernievil2_tiny"


@pytest.fixture(scope="module")
def weights(fixture_dir):
    return str(fixture_dir / "model.pdparams")


@pytest.fixture(scope="module")
def config():
    return load_config(TINY_CONFIG)


@pytest.fixture(scope="module")
def model(config, weights):
    return load_model(config, weights)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, weights):
    """The tiny fixture model exported by the command-line tool (which also checks parity itself)."""
    out = tmp_path_factory.mktemp("export") / "tiny"
    code, stdout, stderr = run_tool(
        REPO / "tools" / "export_model.py", "-c", TINY_CONFIG, "--weights", weights, "--output", out
    )
    assert code == 0, stderr
    assert "max |exported - dygraph|" in stdout
    return str(out)


@pytest.fixture(scope="module", params=[True, False], ids=["onednn", "plain"])
def exported(request, export_dir):
    """The export under both CPU back-ends: parity must hold for each."""
    return ExportedModel(export_dir, PredictorOptions(cpu_threads=2, onednn=request.param))


@pytest.fixture(scope="module")
def default_exported(export_dir):
    return ExportedModel(export_dir, PredictorOptions(cpu_threads=2))


@pytest.fixture(scope="module")
def fixture_rows(fixture_dir):
    with open(fixture_dir / "test.coco_cn.data", encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t") for line in f]


def decode(b64):
    bgr = cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def dygraph(fn, array):
    with paddle.no_grad():
        return fn(paddle.to_tensor(array)).numpy()


@pytest.fixture(scope="module")
def pixels(fixture_rows, exported):
    return np.stack([exported.preprocess(decode(row[2])) for row in fixture_rows[:9]])


# --- parity ---------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 9])
def test_image_tower_matches_dygraph(exported, model, pixels, batch):
    got = exported.encode_pixels(pixels[:batch])
    assert got.shape == (batch, 64)
    np.testing.assert_allclose(got, dygraph(model.encode_image, pixels[:batch]), atol=ATOL, rtol=0)


@pytest.mark.parametrize("batch", [1, 4])
def test_text_tower_matches_dygraph_with_padding(exported, model, batch):
    ids = exported.tokenizer.encode(TEXTS[:batch])
    lengths = (ids != 0).sum(axis=1)
    assert batch == 1 or len(set(lengths)) == batch, "the batch must mix lengths to exercise padding"
    np.testing.assert_allclose(exported.encode_ids(ids), dygraph(model.encode_text, ids), atol=ATOL, rtol=0)


def test_text_tower_takes_any_length_across_calls(exported, model):
    # One predictor, successive calls at different sequence lengths (up to the position table).
    for max_len in (48, 5, 64, 17, 5):
        ids = exported.tokenizer.encode(TEXTS, max_len=max_len)
        got = exported.text_predictor(ids)
        assert got.shape == (len(TEXTS), 64)
        np.testing.assert_allclose(got, dygraph(model.encode_text, ids), atol=ATOL, rtol=0)


def test_max_len_override_changes_truncation(export_dir, model):
    short = ExportedModel(export_dir, PredictorOptions(cpu_threads=2), max_len=8)
    ids = short.tokenizer.encode(TEXTS)
    assert ids.shape == (len(TEXTS), 8)
    np.testing.assert_allclose(short.encode_texts(TEXTS), dygraph(model.encode_text, ids), atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match=r"max_len must be in \(2, 64\]"):
        ExportedModel(export_dir, max_len=65)


def test_shape_buckets_do_not_change_embeddings(export_dir, default_exported):
    plain = ExportedModel(export_dir, PredictorOptions(cpu_threads=2, shape_buckets=False))
    for texts in (TEXTS, TEXTS[:3], TEXTS[1:2]):
        np.testing.assert_allclose(
            default_exported.encode_texts(texts), plain.encode_texts(texts), atol=ATOL, rtol=0
        )


def test_encode_texts_keeps_input_order(exported):
    batched = exported.encode_texts(TEXTS, batch_size=2)
    one_by_one = np.concatenate([exported.encode_texts([t]) for t in TEXTS])
    np.testing.assert_allclose(batched, one_by_one, atol=ATOL, rtol=0)
    assert exported.encode_texts([]).shape == (0, 64)


def test_export_reproduces_the_official_embeddings(exported, fixture_dir, fixture_rows):
    """Tokenizer (the export's vocab copy), preprocessing (deploy.yaml) and towers together."""
    texts = exported.encode_texts([row[0] for row in fixture_rows], batch_size=8)
    images = exported.encode_images([decode(row[2]) for row in fixture_rows], batch_size=8)
    np.testing.assert_allclose(texts, np.load(fixture_dir / "text_emb.npy"), atol=ATOL, rtol=0)
    np.testing.assert_allclose(images, np.load(fixture_dir / "image_emb.npy"), atol=ATOL, rtol=0)


def paddlenlp_folder(folder, config, weights):
    write_paddlenlp_dir(str(folder), config["Arch"], read_model_state(weights))


def training_checkpoint_folder(folder, config, weights):
    folder.mkdir()
    shutil.copyfile(weights, folder / "model.pdparams")


@pytest.mark.parametrize("make_source", [paddlenlp_folder, training_checkpoint_folder])
def test_other_weight_sources_export_the_same_model(tmp_path, config, weights, default_exported, make_source):
    source = tmp_path / "source"
    make_source(source, config, weights)
    export_model(load_model(config, str(source)), config, str(source), str(tmp_path / "export"))
    other = ExportedModel(str(tmp_path / "export"), PredictorOptions(cpu_threads=2))
    np.testing.assert_allclose(other.encode_texts(TEXTS), default_exported.encode_texts(TEXTS), atol=ATOL, rtol=0)
    assert read_deploy(str(tmp_path / "export"))["source"]["weights"] == str(source)


# --- the folder is self-contained -------------------------------------------


def test_deploy_config_is_complete(export_dir, config, model, weights):
    deploy = read_deploy(export_dir)
    assert deploy["embed_dim"] == 64
    assert deploy["logit_scale"] == pytest.approx(float(model.logit_scale()), rel=1e-6)
    preprocess = deploy["image"]["preprocess"]
    for key in ("image_size", "resize_short", "mean", "std"):
        assert preprocess[key] == pytest.approx(config["Preprocess"][key])
    assert preprocess["interpolation"] == "linear"
    assert deploy["text"]["max_len"] == 48 and deploy["text"]["max_position_embeddings"] == 64
    vocab = resolve_resource(config["Tokenizer"]["vocab_file"], config)
    with open(vocab, "rb") as a, open(os.path.join(export_dir, deploy["text"]["vocab_file"]), "rb") as b:
        assert a.read() == b.read()
    assert deploy["architecture"]["image_tower"] == config["Arch"]["image_tower"]
    assert deploy["architecture"]["parameters"]["text"] > deploy["architecture"]["parameters"]["image"] > 0
    assert deploy["source"]["weights"] == os.path.abspath(weights)
    assert set(deploy["files"]) == {
        "image/inference.json", "image/inference.pdiparams", "text/inference.json", "text/inference.pdiparams",
        "vocab.txt",
    }


def test_a_fresh_process_runs_from_the_folder_alone(export_dir, tmp_path, fixture_dir):
    """A moved copy of the export, a working directory without the repo's configs: the CLI still works."""
    moved = tmp_path / "moved_export"
    shutil.copytree(export_dir, moved)
    work = tmp_path / "elsewhere"
    work.mkdir()
    infer = REPO / "tools" / "infer.py"
    code, _, stderr = run_tool(
        infer, "embed-images", "--model", moved, "--tsv", fixture_dir / "test.coco_cn.data", "--output", "img.npz",
        cwd=work,
    )
    assert code == 0, stderr
    captions = [line.split("\t")[0] for line in (fixture_dir / "test.coco_cn.data").read_text("utf-8").splitlines()]
    (work / "captions.txt").write_text("\n".join(captions), encoding="utf-8")
    code, _, stderr = run_tool(
        infer, "embed-texts", "--model", moved, "--text-file", "captions.txt", "--output", "txt.npz", cwd=work
    )
    assert code == 0, stderr
    images, texts = np.load(work / "img.npz"), np.load(work / "txt.npz")
    np.testing.assert_allclose(images["embeddings"], np.load(fixture_dir / "image_emb.npy"), atol=ATOL, rtol=0)
    np.testing.assert_allclose(texts["embeddings"], np.load(fixture_dir / "text_emb.npy"), atol=ATOL, rtol=0)
    assert str(images["model_id"]) == str(texts["model_id"]) != ""

    code, stdout, stderr = run_tool(
        infer, "search", "--model", moved, "--gallery", "img.npz", "--text", captions[3], "-k", "3", cwd=work
    )
    assert code == 0, stderr
    assert "text -> image (20 items)" in stdout and f"query: {captions[3]}" in stdout


# --- errors -----------------------------------------------------------------


@pytest.fixture
def damaged(export_dir, tmp_path):
    copy = tmp_path / "damaged"
    shutil.copytree(export_dir, copy)
    return copy


def test_missing_export_folder(tmp_path):
    with pytest.raises(ExportError, match="export folder not found"):
        ExportedModel(str(tmp_path / "nowhere"))


def test_unfinished_export_lacks_deploy_file(damaged):
    (damaged / DEPLOY_FILE).unlink()
    with pytest.raises(ExportError, match="not a complete export: deploy.yaml is missing"):
        ExportedModel(str(damaged))


def test_missing_weight_file(damaged):
    (damaged / "text" / "inference.pdiparams").unlink()
    with pytest.raises(ExportError, match=r"text/inference.pdiparams is missing"):
        ExportedModel(str(damaged))


def test_truncated_weight_file(damaged):
    path = damaged / "image" / "inference.pdiparams"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ExportError, match=r"image/inference.pdiparams is corrupt: 1000 bytes"):
        ExportedModel(str(damaged))


def test_overwritten_byte_is_caught_by_checksum(damaged):
    path = damaged / "text" / "inference.pdiparams"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ExportError, match=r"text/inference.pdiparams is corrupt: SHA-256"):
        ExportedModel(str(damaged))


def test_deploy_file_missing_a_key(damaged):
    deploy = yaml.safe_load((damaged / DEPLOY_FILE).read_text("utf-8"))
    del deploy["text"]["max_len"]
    (damaged / DEPLOY_FILE).write_text(yaml.safe_dump(deploy), encoding="utf-8")
    with pytest.raises(ExportError, match="missing key text.max_len"):
        ExportedModel(str(damaged))


def test_unreadable_program_is_an_export_error_even_unverified(damaged):
    (damaged / "text" / "inference.json").write_text('{"not": "a program"', encoding="utf-8")
    model = ExportedModel(str(damaged), verify=False)
    with pytest.raises(ExportError, match="Paddle Inference cannot load .*text/inference.json"):
        model.encode_texts(["猫"])


@pytest.mark.parametrize("extra, message", [
    (["--model", "nowhere"], "error: export folder not found"),
    (["--precision", "fp16"], "error: fp16 is only available through TensorRT"),
    (["--max-len", "100"], "error: max_len must be in (2, 64]"),
])
def test_tools_report_bad_inputs_without_a_traceback(tmp_path, export_dir, extra, message):
    args = ["--model", export_dir, *extra]
    code, _, stderr = run_tool(
        REPO / "tools" / "infer.py", "embed-texts", *args, "--texts", "猫", "--output", tmp_path / "out.npz",
        cwd=tmp_path,
    )
    assert code == 2
    assert stderr.strip().splitlines()[-1].startswith(message)
    assert "Traceback" not in stderr


def test_export_refuses_a_non_empty_folder(model, config, weights, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        export_model(model, config, weights, str(tmp_path))
    assert (tmp_path / "keep.txt").exists()


# --- devices and helpers ------------------------------------------------------


def test_gpu_request_fails_clearly_without_cuda(export_dir):
    if paddle.device.is_compiled_with_cuda():
        pytest.skip("this Paddle has CUDA")
    with pytest.raises(DeviceUnavailableError, match="needs a CUDA build of Paddle"):
        ExportedModel(export_dir, PredictorOptions(device="gpu"))


def test_predictor_options_reject_impossible_combinations():
    with pytest.raises(ValueError, match="TensorRT needs device='gpu'"):
        PredictorOptions(tensorrt=True)
    with pytest.raises(ValueError, match="fp16 is only available through TensorRT"):
        PredictorOptions(device="gpu", precision="fp16")
    with pytest.raises(ValueError, match="device must be one of"):
        PredictorOptions(device="tpu")


def test_tensorrt_shape_ranges():
    options = PredictorOptions(device="gpu", tensorrt=True, max_batch_size=32, opt_batch_size=8)
    assert shape_range("images", [1, 3, 224, 224], options) == {
        "min_input_shape": {"images": [1, 3, 224, 224]},
        "max_input_shape": {"images": [32, 3, 224, 224]},
        "optim_input_shape": {"images": [8, 3, 224, 224]},
    }
    assert shape_range("input_ids", [1, 48], options, max_len=48) == {
        "min_input_shape": {"input_ids": [1, 2]},
        "max_input_shape": {"input_ids": [32, 48]},
        "optim_input_shape": {"input_ids": [8, 48]},
    }


def test_trim_padding_drops_only_all_padding_columns():
    ids = np.array([[1, 5, 2, 0, 0, 0], [1, 5, 6, 7, 2, 0]])
    np.testing.assert_array_equal(trim_padding(ids), ids[:, :5])
    np.testing.assert_array_equal(trim_padding(ids[:, :5]), ids[:, :5])


def test_bucket_sizes_are_powers_of_two_and_one_and_a_half_times_them():
    assert [bucket_size(n) for n in range(1, 18)] == [1, 2, 3, 4, 6, 6, 8, 8, 12, 12, 12, 12, 16, 16, 16, 16, 24]
    assert sorted({bucket_size(n) for n in range(1, 49)}) == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48]


def test_pad_text_batch_adds_dummy_rows_and_padding_columns():
    ids = np.array([[1, 7, 8, 9, 2], [1, 5, 2, 0, 0], [1, 6, 6, 2, 0]])
    padded = pad_text_batch(ids, max_length=64, cls_id=1, sep_id=2)
    assert padded.shape == (3, 6)  # 3 rows is a bucket size; 5 tokens become 6
    np.testing.assert_array_equal(padded[:, :5], ids)
    assert not padded[:, 5].any()
    five_rows = pad_text_batch(np.tile(ids, (2, 1))[:5], max_length=5, cls_id=1, sep_id=2)
    assert five_rows.shape == (6, 5)  # 5 rows become 6; the length stops at max_length
    np.testing.assert_array_equal(five_rows[5], [1, 2, 0, 0, 0])


def test_length_sorted_batches_cover_every_row_once():
    lengths = [3, 9, 4, 9, 1]
    batches = length_sorted_batches(lengths, 2)
    assert [list(b) for b in batches] == [[1, 3], [2, 0], [4]]
    assert sorted(np.concatenate(batches)) == list(range(5))
