"""configs/finetune/ernievil2_base_vit16.yaml: loads as shipped (the released model by name, no
download), and two training steps of it run on the tiny official fixture's weights."""
import json
import math
import re

import numpy as np

from ernievil2.checkpoint import read_model_state
from ernievil2.checkpoint.released import RELEASED, released_name
from ernievil2.config import check_named_files, load_config
from ernievil2.engine.build import build_trainer
from tests.conftest import REPO
from tests.helpers import write_pairs_tsv

FINETUNE = str(REPO / "configs" / "finetune" / "ernievil2_base_vit16.yaml")
TINY = str(REPO / "configs" / "tiny_official_fixture.yaml")


def test_the_config_loads_as_shipped_with_the_released_name(tmp_path, monkeypatch):
    monkeypatch.setenv("ERNIEVIL2_HOME", str(tmp_path / "home"))
    config = load_config(FINETUNE)
    assert config["Global"]["pretrained"] == "ernie_vil-2.0-base-zh"
    assert released_name(config["Global"]["pretrained"]) in RELEASED
    base = load_config(str(REPO / "configs" / "ernievil2_base_vit16.yaml"))
    # The released model's architecture, tokenizer and preprocessing, unchanged.
    assert config["Arch"]["text_tower"]["pooler"] == "tanh"
    for section in ("Tokenizer", "Preprocess"):
        assert config[section] == base[section]
    assert {k: v for k, v in config["Arch"]["text_tower"].items() if k != "pooler"} == base["Arch"]["text_tower"]
    assert config["Arch"]["image_tower"] == base["Arch"]["image_tower"]
    # The training-start check accepts the name once the placeholder data is given, and fetches nothing.
    train = write_pairs_tsv(tmp_path / "train.tsv", 4)
    check_named_files(load_config(FINETUNE, [f"Data.train.path={train}", f"Data.replay.path={train}", "Data.val=null"]))
    assert not (tmp_path / "home").exists()


def test_two_steps_on_the_tiny_official_fixture(tmp_path, shared_dir):
    weights = shared_dir / "fixtures" / "official_ernievil2_tiny" / "model.pdparams"
    tiny = load_config(TINY)
    train = write_pairs_tsv(tmp_path / "train.tsv", 8)
    out = tmp_path / "out"
    overrides = [f"{section}={json.dumps(tiny[section])}" for section in ("Arch", "Tokenizer", "Preprocess")] + [
        f"Global.pretrained={weights}",
        f"Global.output_dir={out}",
        f"Data.train.path={train}",
        f"Data.replay.path={write_pairs_tsv(tmp_path / 'general.tsv', 8)}",  # the recipe's replay, a corpus of its own
        "Data.val=null",
        "Data.num_workers=0",
        "Train.max_steps=2",
        "Train.batch_size=4",
        "Train.log_every=1",
        # The recipe's warmup is 60 steps: at its second step the lr would move nothing measurable.
        "Optimizer.warmup_steps=1",
    ]
    config = load_config(FINETUNE, overrides)
    assert config["Optimizer"]["lr"] == load_config(FINETUNE)["Optimizer"]["lr"]  # the recipe's own lr and decays
    build_trainer(config).train()  # what tools/train.py runs

    log = (out / "train.log").read_text(encoding="utf-8")
    assert f"loaded weights from {weights}" in log and "replay: " in log
    losses = [float(v) for v in re.findall(r"step \d+/2 loss=(\S+)", log)]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses), log
    start, end = read_model_state(str(weights)), read_model_state(str(out))
    assert sorted(start) == sorted(end)
    moved = [k for k in start if not np.array_equal(np.asarray(start[k].numpy()), np.asarray(end[k].numpy()))]
    assert all(np.isfinite(np.asarray(v.numpy())).all() for v in end.values())
    # Both towers trained: a block of each moved.
    assert any(k.startswith("visual.blocks.") for k in moved) and any(k.startswith("text_model.encoder_stack.") for k in moved), moved
