"""A tower, loss terms and a data format from outside the package, through the registries alone, train."""
import math
import subprocess
import sys

import cv2
import paddle
import pytest
import yaml

from ernievil2.config import load_config
from ernievil2.registry import ConfigError
from tests.conftest import REPO
from tests.helpers import COLOURS, SHAPES, scene, write_pairs_tsv, write_train_config

TOY_TOWER = {"name": "ToyImage", "img_size": 32, "out_dim": 32}
TOY_TERM = {"name": "cosine_distance", "pairs": [["image_v1", "text_v1", 0.5]]}


@pytest.fixture
def toy_config(tmp_path):
    train = write_pairs_tsv(tmp_path / "train.tsv", 12, seed=4)
    arch = {"image_tower": TOY_TOWER, "text_tower": {"name": "ErnieText", "hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64, "max_position_embeddings": 32}}
    loss = {"terms": [{"name": "info_nce", "pairs": [["image_v1", "text_v1", 1.0]]}, TOY_TERM]}
    path = write_train_config(tmp_path, train, Loss=loss, Train={"max_steps": 1, "save_every": 0})
    # Arch replaced in the file, not through write_train_config, which updates the shared TINY_ARCH in place.
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    path.write_text(yaml.safe_dump({**config, "Arch": arch}, allow_unicode=True), encoding="utf-8")
    return path


def test_the_toy_names_are_unknown_until_registered(toy_config):
    with pytest.raises(ConfigError, match="unknown image tower 'ToyImage'"):
        load_config(str(toy_config))


def test_a_registered_toy_tower_and_loss_term_train_one_step(toy_config, tmp_path):
    script = REPO / "tests" / "extension" / "toy_train.py"
    result = subprocess.run(
        [sys.executable, str(script), "-c", str(toy_config)], capture_output=True, text=True, cwd=str(REPO), timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    log = (tmp_path / "out" / "train.log").read_text(encoding="utf-8")
    assert "step 1/1" in log and "cosine_distance/image_v1-text_v1=" in log, log
    weights = paddle.load(str(tmp_path / "out" / "checkpoints" / "step_000001" / "model.pdparams"))
    assert list(weights["visual.proj.weight"].shape) == [3 * 32 * 32, 32]


OWN_TERM = {"name": "own_scale_info_nce", "weight": 0.5, "pairs": [["image_v1", "text_v1", 1.0]], "scale_init": 5.0}


def run_toy_train(config):
    script = REPO / "tests" / "extension" / "toy_train.py"
    return subprocess.run([sys.executable, str(script), "-c", str(config)], capture_output=True, text=True, cwd=str(REPO), timeout=600)


def test_a_term_with_its_own_parameter_keys_and_log_line_is_one_file_and_one_registry_line(tmp_path):
    """tests/extension/own_scale_term.py, registered by one line of toy_train.py: checked at load, trained, logged, saved."""
    train = write_pairs_tsv(tmp_path / "train.tsv", 8, seed=5)
    loss = {"terms": [{"name": "info_nce", "pairs": [["image_v1", "text_v1", 1.0]]}, OWN_TERM]}
    config = write_train_config(tmp_path, train, Loss=loss, Train={"max_steps": 1, "save_every": 0})
    result = run_toy_train(config)
    assert result.returncode == 0, result.stderr[-2000:]
    step = next(line for line in (tmp_path / "out" / "train.log").read_text(encoding="utf-8").splitlines() if line.startswith("step 1/1"))
    assert "own_scale=5.00" in step and "own_scale/image_v1-text_v1=" in step and " scale=" in step, step
    state = paddle.load(str(tmp_path / "out" / "checkpoints" / "step_000001" / "extra.pdparams"))["loss"]
    assert list(state) == ["term_layers.0.log_scale"]
    assert 0 < abs(float(state["term_layers.0.log_scale"]) - math.log(5.0)) < 2e-3  # one Adam step of lr 1e-3

    for options, message in (
        ({"scale_init": 0}, "Loss.terms[1].scale_init: must be a number in [1, 100], got 0"),
        ({"scale": 5.0}, "Loss.terms[1].scale: unknown key; OwnScaleInfoNCE takes: pairs, scale_init; did you mean 'scale_init'?"),
        ({"weight": -1}, "Loss.terms[1].weight: weight must be a positive finite number, got -1"),
    ):
        bad = {"terms": [loss["terms"][0], {**{k: v for k, v in OWN_TERM.items() if k != "scale_init"}, **options}]}
        result = run_toy_train(write_train_config(tmp_path, train, Loss=bad))
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert result.stderr.strip().splitlines()[-1].startswith("error:")


def test_a_registered_data_format_feeds_training_and_its_spec_is_checked_at_load(tmp_path):
    """toy_train.py's caption_folder: the spec's keys are checked against its signature, a bad record is skipped and counted."""
    folder = tmp_path / "pairs"
    folder.mkdir()
    for i in range(9):
        colour, shape = list(COLOURS)[i % 4], SHAPES[i % 2]
        cv2.imwrite(str(folder / f"p{i}.jpg"), cv2.cvtColor(scene(colour, shape), cv2.COLOR_RGB2BGR))
        if i != 4:
            (folder / f"p{i}.txt").write_text(f"一个{colour}的{shape}\n", encoding="utf-8")
    data = {"train": {"format": "caption_folder", "folder": str(folder)}, "on_error": "skip", "num_workers": 0, "shuffle_buffer": 0}
    config = write_train_config(tmp_path, tmp_path / "unused.tsv", Data=data, Train={"max_steps": 2, "save_every": 0})
    result = run_toy_train(config)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "step 2/2" in (tmp_path / "out" / "train.log").read_text(encoding="utf-8")
    skipped = (tmp_path / "out" / "skipped.tsv").read_text(encoding="utf-8")
    assert "p4.jpg" in skipped and "no caption file p4.txt beside it" in skipped

    data["train"] = {"format": "caption_folder", "foldr": str(folder)}
    result = run_toy_train(write_train_config(tmp_path, tmp_path / "unused.tsv", Data=data))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "Data.train: unknown key 'foldr' in 'caption_folder' data spec; allowed keys: folder; did you mean 'folder'?" in result.stderr
