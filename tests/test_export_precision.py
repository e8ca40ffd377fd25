"""Export formats and precisions: ONNX fp32 and int8 (ONNX Runtime), Paddle bf16 (oneDNN).

Each export of the tiny fixture model must match the dygraph model: fp32 to float rounding,
int8 within the tolerance the export command enforces (checked on the calibration data, the
distribution it was tuned for), bf16 within its own. The deploy config says what each export
is, and the predictor and the service load every one without being told.
"""
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import paddle
import pytest
import yaml
from fastapi.testclient import TestClient

from ernievil2.cli import run_command
from ernievil2.commands.export_model import PARITY_TOLERANCE
from ernievil2.config import load_config
from ernievil2.inference.deploy import DEPLOY_FILE, check_runtime, model_id, read_deploy
from ernievil2.inference.errors import DeviceUnavailableError, ExportError, OptionsError
from ernievil2.inference.export import export_model, load_model
from ernievil2.inference.galleries import build_galleries
from ernievil2.inference.inputs import iter_tsv_images
from ernievil2.inference.onnx_export import quantize_file, read_calibration
from ernievil2.inference.predictor import ExportedModel, PredictorOptions
from ernievil2.inference.service import ServiceSettings, create_app
from tests.conftest import REPO

TINY_CONFIG = str(REPO / "configs" / "tiny_official_fixture.yaml")
FP32_ATOL = 1e-5
BF16 = paddle.base.core.supports_bfloat16()
# Operators that only an int8 graph has (ONNX Runtime's QOperator format).
INT8_OPS = {"QLinearMatMul", "MatMulInteger", "QGemm", "QuantizeLinear", "DequantizeLinear"}


@pytest.fixture(scope="module")
def tiny(shared_dir):
    """The tiny fixture model (official architecture, random weights) and its 20 captioned photos."""
    folder = shared_dir / "fixtures" / "official_ernievil2_tiny"
    config = load_config(TINY_CONFIG)
    weights = str(folder / "model.pdparams")
    return SimpleNamespace(config=config, weights=weights, model=load_model(config, weights),
                           tsv=str(folder / "test.coco_cn.data"))


@pytest.fixture(scope="module")
def tsv(tiny):
    return tiny.tsv


@pytest.fixture(scope="module")
def model(tiny):
    return tiny.model


@pytest.fixture(scope="module")
def calibration(tsv):
    return read_calibration(tsv, 20)


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny, calibration):
    """{(format, precision): folder} for every runtime, exported from the same model."""
    root = tmp_path_factory.mktemp("precision")
    folders = {}
    for fmt, precision in (("paddle", "fp32"), ("paddle", "bf16"), ("onnx", "fp32"), ("onnx", "int8")):
        folder = str(root / f"{fmt}_{precision}")
        export_model(tiny.model, tiny.config, tiny.weights, folder, fmt=fmt, precision=precision,
                     calibration=calibration if precision == "int8" else None)
        folders[fmt, precision] = folder
    return folders


def test_quantisation_leaves_nothing_in_the_working_directory(exports, tmp_path, monkeypatch):
    # ONNX Runtime's shape inference saves a model it could not fully infer into the working
    # directory (sym_shape_infer_temp.onnx); the towers here infer fully, so a stand-in does the same.
    from onnxruntime.quantization import shape_inference

    real = shape_inference.quant_pre_process

    def littering(source, target, **kwargs):
        Path("sym_shape_infer_temp.onnx").write_bytes(b"stray")
        return real(source, target, **kwargs)

    monkeypatch.setattr(shape_inference, "quant_pre_process", littering)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    fp32 = Path(exports["onnx", "fp32"]) / "text" / "model.onnx"
    quantize_file(str(fp32), str(tmp_path / "int8.onnx"), "input_ids", [np.array([[1, 5, 2]], dtype=np.int64)])
    assert (tmp_path / "int8.onnx").is_file()
    assert sorted(p.name for p in workdir.iterdir()) == []


@pytest.fixture(scope="module")
def real_inputs(calibration, exports):
    """Preprocessed calibration images and captions: the data int8 was tuned for."""
    reference = ExportedModel(exports["paddle", "fp32"], PredictorOptions(cpu_threads=2))
    images, texts = calibration
    return np.stack([reference.preprocess(rgb) for rgb in images]), reference.tokenizer.encode(texts)


def dygraph(model, pixels, ids):
    with paddle.no_grad():
        return model.encode_image(paddle.to_tensor(pixels)).numpy(), model.encode_text(paddle.to_tensor(ids)).numpy()


def encode(folder, pixels, ids):
    exported = ExportedModel(folder, PredictorOptions(cpu_threads=2))
    return exported.encode_pixels(pixels), exported.encode_ids(ids)


# --- the deploy config names the runtime ----------------------------------------


@pytest.mark.parametrize("fmt, precision, model_file", [
    ("paddle", "fp32", "image/inference.json"), ("paddle", "bf16", "image/inference.json"),
    ("onnx", "fp32", "image/model.onnx"), ("onnx", "int8", "image/model.onnx"),
])
def test_deploy_config_records_format_and_precision(exports, fmt, precision, model_file):
    deploy = read_deploy(exports[fmt, precision])
    assert deploy["format_version"] == 2
    assert deploy["runtime"] == {"format": fmt, "precision": precision}
    assert deploy["image"]["model_file"] == model_file
    assert (deploy["text"]["params_file"] is None) == (fmt == "onnx")
    assert set(deploy["files"]) == {p for t in ("image", "text") for p in (deploy[t]["model_file"],
                                                                           deploy[t]["params_file"]) if p} | {"vocab.txt"}


def test_int8_files_hold_int8_matmuls_and_fp32_ones_none(exports):
    for precision, expect_int8 in (("fp32", False), ("int8", True)):
        for tower in ("image", "text"):
            ops = {node.op_type for node in onnx.load(f"{exports['onnx', precision]}/{tower}/model.onnx").graph.node}
            assert bool(ops & INT8_OPS) == expect_int8, (precision, tower, sorted(ops))


def test_model_ids_follow_the_weights(exports):
    ids = {key: model_id(read_deploy(folder)) for key, folder in exports.items()}
    # bf16 is the fp32 program converted at load time: the same weights, so the same galleries.
    assert ids["paddle", "bf16"] == ids["paddle", "fp32"]
    assert len({ids["paddle", "fp32"], ids["onnx", "fp32"], ids["onnx", "int8"]}) == 3


# --- parity with dygraph --------------------------------------------------------


def test_onnx_fp32_matches_dygraph(exports, model, real_inputs):
    pixels, ids = real_inputs
    got_images, got_texts = encode(exports["onnx", "fp32"], pixels, ids)
    want_images, want_texts = dygraph(model, pixels, ids)
    np.testing.assert_allclose(got_images, want_images, atol=FP32_ATOL, rtol=0)
    np.testing.assert_allclose(got_texts, want_texts, atol=FP32_ATOL, rtol=0)


def test_onnx_text_tower_takes_any_batch_and_length(exports, model, real_inputs):
    exported = ExportedModel(exports["onnx", "fp32"], PredictorOptions(cpu_threads=2))
    ids = real_inputs[1]
    for rows, length in ((1, 5), (7, 30), (3, 48)):
        batch = ids[:rows, :length].copy()
        batch[:, -1] = np.where(batch[:, -1] == 0, 0, 2)
        np.testing.assert_allclose(exported.text_predictor(batch), dygraph(model, real_inputs[0][:1], batch)[1],
                                   atol=FP32_ATOL, rtol=0)


def test_int8_is_close_to_dygraph_but_really_quantised(exports, model, real_inputs):
    pixels, ids = real_inputs
    got = encode(exports["onnx", "int8"], pixels, ids)
    want = dygraph(model, pixels, ids)
    for tower, g, w in zip(("image", "text"), got, want):
        diff = np.abs(g - w).max()
        assert diff <= PARITY_TOLERANCE["int8"], (tower, diff)
        # Not an fp32 file under another name: 8-bit rounding shows.
        assert diff > 1e-4, (tower, diff)
        cosine = (g * w).sum(axis=1)
        assert cosine.min() > 0.98, (tower, cosine.min())


@pytest.mark.skipif(not BF16, reason="this CPU has no bf16 instructions (avx512_bf16 or AMX)")
def test_bf16_is_close_to_dygraph_but_really_bf16(exports, model, real_inputs):
    pixels, ids = real_inputs
    got = encode(exports["paddle", "bf16"], pixels, ids)
    for g, w in zip(got, dygraph(model, pixels, ids)):
        diff = np.abs(g - w).max()
        assert 1e-4 < diff <= PARITY_TOLERANCE["bf16"], diff


@pytest.mark.skipif(BF16, reason="this CPU runs bf16")
def test_bf16_export_refuses_to_load_on_a_cpu_without_bf16(exports):
    with pytest.raises(DeviceUnavailableError, match="needs a CPU with bf16 instructions"):
        ExportedModel(exports["paddle", "bf16"])


# --- loading: any export, no flags; old exports; contradictions -------------------


def test_the_service_loads_each_runnable_export(exports, tsv):
    settings = ServiceSettings(max_wait_ms=2.0, max_body_bytes=1 << 20)
    runnable = [key for key in exports if key != ("paddle", "bf16") or BF16]
    for fmt, precision in runnable:
        exported = ExportedModel(exports[fmt, precision], PredictorOptions(cpu_threads=2))
        images, texts = build_galleries(exported, iter_tsv_images(tsv), batch_size=8)
        with TestClient(create_app(exported, images, texts, settings=settings)) as client:
            health = client.get("/healthz").json()
            assert health["runtime"] == {"format": fmt, "precision": precision}
            query = images.ids[3]
            caption = next(item.caption for item in iter_tsv_images(tsv) if item.image_id == query)
            hits = client.post("/search", json={"text": caption, "k": 20}).json()
            assert query in [hit["id"] for hit in hits["results"]], (fmt, precision)


def test_a_version_1_export_is_paddle_fp32(exports, tmp_path):
    old = tmp_path / "v1"
    shutil.copytree(exports["paddle", "fp32"], old)
    deploy = yaml.safe_load((old / DEPLOY_FILE).read_text("utf-8"))
    del deploy["runtime"]
    deploy["format_version"] = 1
    (old / DEPLOY_FILE).write_text(yaml.safe_dump(deploy), encoding="utf-8")
    loaded = ExportedModel(str(old))
    assert (loaded.format, loaded.precision) == ("paddle", "fp32")
    assert loaded.model_id == model_id(read_deploy(exports["paddle", "fp32"]))


@pytest.mark.parametrize("runtime, message", [
    ({"format": "onnx", "precision": "bf16"}, "format onnx runs precision fp32 or int8, not 'bf16'"),
    ({"format": "tflite", "precision": "fp32"}, "format must be one of"),
    ({"format": "paddle"}, "runtime must be a mapping with format and precision"),
])
def test_a_deploy_config_with_an_impossible_runtime(exports, tmp_path, runtime, message):
    bad = tmp_path / "bad"
    shutil.copytree(exports["onnx", "fp32"], bad)
    deploy = yaml.safe_load((bad / DEPLOY_FILE).read_text("utf-8"))
    deploy["runtime"] = runtime
    (bad / DEPLOY_FILE).write_text(yaml.safe_dump(deploy), encoding="utf-8")
    with pytest.raises(ExportError, match=message):
        ExportedModel(str(bad))


def test_onnx_exports_refuse_gpu_options(exports):
    with pytest.raises(OptionsError, match="ONNX exports run on CPU"):
        ExportedModel(exports["onnx", "fp32"], PredictorOptions(device="gpu"))


def test_runtime_check_suggests_the_format_that_has_the_precision():
    check_runtime("onnx", "int8")
    with pytest.raises(ExportError, match="int8 is available with format onnx"):
        check_runtime("paddle", "int8")


def test_int8_needs_calibration(tiny, tmp_path):
    with pytest.raises(ExportError, match="int8 needs calibration data"):
        export_model(tiny.model, tiny.config, tiny.weights, str(tmp_path / "out"), fmt="onnx", precision="int8")


def test_calibration_reads_the_first_lines_with_each_image_once(tsv):
    images, texts = read_calibration(tsv, 5)
    rows = [line.split("\t") for line in open(tsv, encoding="utf-8").read().splitlines()[:5]]
    assert texts == [row[0] for row in rows]
    assert len(images) == len({row[1] for row in rows})
    assert images[0].ndim == 3 and images[0].dtype == np.uint8
    with pytest.raises(ValueError, match="at least 1"):
        read_calibration(tsv, 0)


# --- the command line -------------------------------------------------------------


def test_int8_export_command_checks_itself(tiny, tmp_path, capsys):
    out = tmp_path / "int8"
    code = run_command("export_model", ["-c", TINY_CONFIG, "--weights", tiny.weights, "--output", str(out),
                                        "--precision", "int8", "--calib-data", tiny.tsv, "--calib-samples", "12"])
    stdout = capsys.readouterr().out
    assert code == 0
    assert "calibration: " in stdout and "12 captions" in stdout
    assert "(onnx, int8)" in stdout and "tolerance 0.15 for int8" in stdout
    assert read_deploy(str(out))["runtime"] == {"format": "onnx", "precision": "int8"}


@pytest.mark.parametrize("extra, message", [
    (["--format", "onnx", "--precision", "bf16"], "error: export: format onnx runs precision fp32 or int8, not 'bf16'"),
    (["--format", "paddle", "--precision", "int8", "--calib-data", "x.tsv"],
     "error: export: format paddle runs precision fp32 or bf16, not 'int8'; int8 is available with format onnx"),
    (["--precision", "int8", "--calib-data", "missing.tsv"], "error: "),
] + ([] if BF16 else [(["--precision", "bf16"], "error: this CPU has no bf16 instructions")]))
def test_export_command_reports_bad_options_in_one_line(tiny, tmp_path, capsys, extra, message):
    out = tmp_path / "never"
    code = run_command("export_model", ["-c", TINY_CONFIG, "--weights", tiny.weights, "--output", str(out), *extra])
    stderr = capsys.readouterr().err
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith(message), stderr
    assert not (out / DEPLOY_FILE).exists()


def test_int8_without_calibration_data_is_a_usage_error(tiny, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_command("export_model", ["-c", TINY_CONFIG, "--weights", tiny.weights, "--output", str(tmp_path),
                                     "--precision", "int8"])
    assert exit_info.value.code == 2
    assert "--precision int8 needs --calib-data" in capsys.readouterr().err
