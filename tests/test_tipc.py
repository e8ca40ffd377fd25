"""The TIPC chain (test_tipc/): lite_train_lite_infer end to end, bad configs, failing commands.

The scripts run in a subprocess with the repository as working folder, on a copy of
the shipped config whose data paths point into ``tmp_path``, with the output root
in ``tmp_path`` (``TIPC_OUTPUT_ROOT``): nothing is written into the repository.
"""
import itertools
import os
import re
import subprocess

import pytest

from ernievil2.demo import fashion_scenes as fs
from tests.conftest import REPO

CONFIG = REPO / "test_tipc" / "configs" / "ernievil2_demo" / "train_infer_python.txt"
PREPARE = REPO / "test_tipc" / "prepare.sh"
CHAIN = REPO / "test_tipc" / "test_train_inference_python.sh"
MODE = "lite_train_lite_infer"
DATA_IN_CONFIG = "./test_tipc/data/ernievil2_demo"


def run(script, config, mode=MODE, output_root=None):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    if output_root is not None:
        env["TIPC_OUTPUT_ROOT"] = str(output_root)
    return subprocess.run(
        ["bash", str(script), str(config), mode], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


def config_lines():
    return CONFIG.read_text(encoding="utf-8").splitlines()


def write_config(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def replace_line(lines, key, value):
    """``lines`` with the value of the line whose key is ``key`` replaced."""
    matches = [i for i, line in enumerate(lines) if line.split(":", 1)[0] == key]
    assert len(matches) == 1, key
    out = list(lines)
    out[matches[0]] = f"{key}:{value}"
    return out


@pytest.fixture(scope="module")
def lite_config(tmp_path_factory):
    """The shipped config with its data in a temporary folder, prepared for lite_train_lite_infer."""
    if not fs.has_source_files(fs.DEBIAN_SOURCE_DIR):
        message = f"Fashion-MNIST not installed ({fs.INSTALL_HINT})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    folder = tmp_path_factory.mktemp("tipc")
    text = CONFIG.read_text(encoding="utf-8")
    assert DATA_IN_CONFIG in text
    config = folder / "train_infer_python.txt"
    config.write_text(text.replace(DATA_IN_CONFIG, str(folder / "data")), encoding="utf-8")
    first = run(PREPARE, config)
    assert first.returncode == 0, first.stdout + first.stderr
    again = run(PREPARE, config)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("up to date") == 3, again.stdout  # data, vocab, inference inputs
    assert len(os.listdir(folder / "data" / "lite" / "infer_imgs")) == 64
    return config


def results(output_root, mode=MODE):
    return (output_root / "ernievil2_demo" / mode / "results_python.log").read_text(encoding="utf-8").splitlines()


def expected_cpu_inference():
    """(tower, oneDNN, threads, batch size) of every CPU inference command of the shipped config."""
    return sorted(itertools.product(("image", "text"), (True, False), ("1", "2"), ("1", "16")))


def inference_key(command):
    tower = {"embed-images": "image", "embed-texts": "text"}[re.search(r"infer\.py (embed-\w+)", command).group(1)]
    threads = re.search(r"--threads (\d+)", command).group(1)
    batch = re.search(r"--batch-size (\d+)", command).group(1)
    return tower, "--no-onednn" not in command, threads, batch


def test_lite_train_lite_infer_runs_every_command(lite_config, tmp_path):
    result = run(CHAIN, lite_config, output_root=tmp_path)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    lines = results(tmp_path)
    assert not [line for line in lines if line.startswith("Run failed")], log
    done = [line.split(" - ", 1)[1] for line in lines if line.startswith("Run successfully with command - ")]
    scripts = [re.search(r"tools/\w+\.py", command).group(0) for command in done]
    for script in ("tools/train.py", "tools/extract_features.py", "tools/eval_retrieval.py", "tools/export_model.py"):
        assert scripts.count(script) == 1, (script, lines)
    cpu = sorted(inference_key(c) for c in done if "tools/infer.py" in c and "--device cpu" in c)
    assert cpu == expected_cpu_inference(), lines
    gpu = [c for c in done if "--device gpu" in c]
    if "CUDA: no" in result.stdout:
        assert len(done) == 4 + len(expected_cpu_inference()), lines
        assert not gpu
        # gpu_list entries "0" and "0,1", and the GPU inference alternatives: skipped with a note.
        assert sum(line.startswith("Skipped - ") and "no CUDA" in line for line in lines) == 3, lines
    assert f"{len(done)} succeeded, 0 failed" in result.stdout
    # Each command's output is in its own log beside results_python.log.
    mode_dir = tmp_path / "ernievil2_demo" / MODE
    assert (mode_dir / "norm_train_cpu_amp_False_train.log").read_text(encoding="utf-8").count("step 5/5") == 1
    assert len(list(mode_dir.glob("norm_train_cpu_amp_False_infer_*.log"))) == len(cpu)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("-o Train.amp", "Fasle", r"line 6 \(-o Train.amp\): 'Fasle': a boolean must be written True or False"),
        ("--threads", "1||2", r"line 39 \(--threads\): malformed alternative list '1\|\|2'"),
        ("-o Train.max_steps", "lite_train_lite_infr=5", r"line 7 \(-o Train.max_steps\): unknown mode 'lite_train_lite_infr'"),
        ("-o Train.batch_size", "whole_train_whole_infer=64", r"line 9 \(-o Train.batch_size\): no value for mode lite_train_lite_infer"),
        ("gpu_list", "0|0;1", r"line 4 \(gpu_list\): '0;1'"),
        ("quant_export", "tools/quant.py", r"line 32 \(quant_export\): .*must be null"),
        ("eval_metrics", "tools/eval_retrieval.py --json $HOME/x", r"line 26 \(eval_metrics\): .*never given to a shell"),
    ],
)
def test_bad_value_is_refused_naming_the_line(tmp_path, key, value, message):
    config = write_config(tmp_path / "bad.txt", replace_line(config_lines(), key, value))
    result = run(CHAIN, config, output_root=tmp_path / "out")
    assert result.returncode == 2
    assert re.search(message, result.stderr), result.stderr
    assert str(config) in result.stderr
    assert not (tmp_path / "out").exists()  # refused before anything ran
    prepared = run(PREPARE, config)
    assert prepared.returncode == 2 and re.search(message, prepared.stderr), prepared.stderr


def test_misplaced_key_and_unknown_mode_are_refused(tmp_path):
    lines = config_lines()
    lines[6], lines[7] = lines[7], lines[6]  # -o Train.max_steps <-> -o Global.output_dir
    result = run(CHAIN, write_config(tmp_path / "swapped.txt", lines))
    assert result.returncode == 2
    assert "line 7: expected key '-o Train.max_steps' (train_params section), found '-o Global.output_dir', which belongs at line 8" in result.stderr
    result = run(CHAIN, CONFIG, mode="lite_train_lite")
    assert result.returncode == 2 and "unknown mode 'lite_train_lite'" in result.stderr


def test_failing_command_fails_the_run_and_is_logged(lite_config, tmp_path):
    lines = lite_config.read_text(encoding="utf-8").splitlines()
    broken = replace_line(lines, "norm_train", "tools/no_such_train.py -c configs/demo/multiview.yaml")
    result = run(CHAIN, write_config(tmp_path / "broken.txt", broken), output_root=tmp_path / "out")
    assert result.returncode == 1, result.stdout + result.stderr
    logged = results(tmp_path / "out")
    failed = [line for line in logged if line.startswith("Run failed with command - ")]
    assert len(failed) == 1 and "python3 tools/no_such_train.py -c configs/demo/multiview.yaml" in failed[0], logged
    assert not [line for line in logged if line.startswith("Run successfully")]
    # What depends on the failed training is skipped and said so, not run.
    assert any("its training failed" in line for line in logged if line.startswith("Skipped - "))
    assert "0 succeeded, 1 failed" in result.stdout
    train_log = tmp_path / "out" / "ernievil2_demo" / MODE / "norm_train_cpu_amp_False_train.log"
    assert "no_such_train.py" in train_log.read_text(encoding="utf-8")
