"""A tower and a loss term from outside the package, through the registries alone, train a step."""
import subprocess
import sys

import paddle
import pytest
import yaml

from ernievil2.config import load_config
from ernievil2.registry import ConfigError
from tests.conftest import REPO
from tests.helpers import write_pairs_tsv, write_train_config

TOY_TOWER = {"name": "ToyImage", "img_size": 32, "out_dim": 32}
TOY_TERM = {"name": "cosine_distance", "pairs": [["image_v1", "text_v1", 0.5]]}


@pytest.fixture
def toy_config(tmp_path):
    train = write_pairs_tsv(tmp_path / "train.tsv", 12, seed=4)
    arch = {"image_tower": TOY_TOWER, "text_tower": {"name": "ErnieText", "hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64, "max_position_embeddings": 32}}
    loss = {"name": "MultiViewContrastive", "pairs": [["image_v1", "text_v1", 1.0]], "terms": [TOY_TERM]}
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
