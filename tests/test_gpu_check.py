"""test_tipc/gpu_check.sh on a CPU machine: its no-GPU failure, its table and JSON, and its steps run on the CPU.

The GPU itself cannot be tested here; the steps are device-agnostic functions, so each one's
parity logic runs on the CPU against the tiny model and the official fixture.
"""
import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from benchmarks import gpu_check
from ernievil2.config import load_config
from ernievil2.models import build_model
from tests.conftest import REPO


def test_no_gpu_fails_fast_with_one_error_line(tmp_path):
    output = tmp_path / "check.json"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    result = subprocess.run(["bash", str(REPO / "test_tipc" / "gpu_check.sh"), "--output", str(output)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no GPU" in errors[0] and "paddlepaddle-gpu" in errors[0]
    assert "Traceback" not in result.stderr
    assert not output.exists()


def test_report_prints_the_table_writes_json_and_fails_on_any_failed_row(tmp_path, capsys):
    rows = [
        gpu_check.at_most("fixture", "text max |diff|", 2e-5, 1e-4),
        gpu_check.Row("training", "fp32 step (median, s)", 0.25),
        gpu_check.at_least("inference", "min cosine", 0.95, 0.999),
    ]
    path = tmp_path / "out.json"
    assert gpu_check.report(rows, {"gpu": "test"}, str(path), {"loss_curves": {"fp32": [1.0]}}) == 1
    document = json.loads(path.read_text())
    assert document["passed"] is False
    assert [r["status"] for r in document["rows"]] == ["pass", "info", "fail"]
    assert document["rows"][2] == {"step": "inference", "check": "min cosine", "value": 0.95, "limit": ">= 0.999", "status": "fail"}
    assert document["machine"] == {"gpu": "test"} and document["loss_curves"] == {"fp32": [1.0]}
    printed = [" ".join(line.split()) for line in capsys.readouterr().out.splitlines()]
    assert "| step | check | value | limit | result |" in printed
    assert "| inference | min cosine | 0.95 | >= 0.999 | fail |" in printed
    assert any("FAILED" in line for line in printed)
    assert gpu_check.report(rows[:2], {}, str(path)) == 0
    assert json.loads(path.read_text())["passed"] is True


@pytest.fixture
def fixture_dir(shared_dir):
    return shared_dir / "fixtures" / "official_ernievil2_tiny"


def test_fixture_step_passes_on_the_official_fixture_and_fails_on_a_wrong_one(fixture_dir, tmp_path):
    assert [row.status for row in gpu_check.check_fixture(fixture_dir)] == ["pass", "pass"]
    wrong = tmp_path / "fixture"
    shutil.copytree(fixture_dir, wrong)
    text = np.load(wrong / "text_emb.npy")
    text[0, 0] += 1e-3
    np.save(wrong / "text_emb.npy", text)
    assert [row.status for row in gpu_check.check_fixture(wrong)] == ["fail", "pass"]


def test_training_step_compares_amp_with_fp32_and_counts_fused_attention():
    config = load_config(str(gpu_check.FIXTURE_CONFIG))
    rows, curves, model = gpu_check.check_training(config, steps=3, batch=4, dtype="bfloat16")
    by_check = {row.check: row for row in rows}
    assert len(curves["fp32"]) == len(curves["amp"]) == 3
    assert by_check["losses finite"].status == "pass"
    # The fused kernel is CUDA's: on the CPU the check sees none, and says so.
    assert by_check["FlashAttention calls per AMP step"].value == 0
    assert by_check["FlashAttention calls per AMP step"].status == "fail"
    assert model is not None


def test_inference_and_service_steps_on_the_export(tmp_path):
    config = load_config(str(gpu_check.FIXTURE_CONFIG))
    model = build_model(config["Arch"])
    rows = gpu_check.check_inference(config, model, str(tmp_path / "export"), device="cpu")
    statuses = {row.check: row.status for row in rows}
    assert statuses["fp32 max |diff| vs dygraph"] == "pass"
    assert statuses["TensorRT fp16"] == "skipped"
    assert {"fp32 text batch 1 (median, ms)", "fp32 image batch 1 (median, ms)"} <= set(statuses)
    rows = gpu_check.check_service(str(tmp_path / "export"), str(tmp_path), requests=20, device="cpu")
    assert [(row.check, row.value) for row in rows if row.check.endswith("errors")] == [
        ("1 in flight: errors", 0), ("32 in flight: errors", 0)]
