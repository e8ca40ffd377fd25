"""The fine-tuning tools: weight interpolation (function, command, sweep, Train.wise_ft_alpha) and
locking a tower's layers by count (Optimizer.<tower>.unlocked_layers)."""
import copy
import json
import re

import numpy as np
import paddle
import pytest

from ernievil2 import cli
from ernievil2.checkpoint import read_model_state
from ernievil2.checkpoint.interpolate import interpolate_states
from ernievil2.config import load_config
from ernievil2.data.image_ops import EvalTransform
from ernievil2.data.tokenizer import build_tokenizer
from ernievil2.engine.build import build_trainer
from ernievil2.engine.optim import build_optimizer, lock_layers
from ernievil2.engine.steps import train_step
from ernievil2.engine.trainer import evaluate_model
from ernievil2.models import build_model
from ernievil2.registry import ConfigError
from tests.helpers import TINY_ARCH, table_loss, write_train_config
from tests.test_engine import PAIRS, final_weights, optimizer_section, random_batch, run_train, train_data  # noqa: F401  (a fixture)
from tests.test_zeroshot import tiny  # noqa: F401  (a fixture)


def random_state(seed, shapes=(("w", (3, 4)), ("b", (4,))), steps=7):
    rng = np.random.default_rng(seed)
    state = {name: paddle.to_tensor(rng.standard_normal(shape).astype("float32")) for name, shape in shapes}
    state["step"] = paddle.to_tensor(np.array([steps], dtype="int64"))
    return state


def bits(value):
    return np.asarray(value.numpy() if isinstance(value, paddle.Tensor) else value).tobytes()


def test_interpolation_gives_each_model_back_bitwise_at_0_and_1_and_the_mean_at_half():
    start, end = random_state(0), random_state(1)
    start["w"][0, 0] = -0.0  # the formula alone would give +0.0 back at alpha 0
    for alpha, side in ((0.0, start), (1.0, end)):
        mixed = interpolate_states(start, end, alpha)
        assert sorted(mixed) == sorted(side)
        assert all(bits(mixed[k]) == bits(side[k]) for k in side), alpha
    half = interpolate_states(start, end, 0.5)
    for key in ("w", "b"):
        np.testing.assert_allclose(half[key].numpy(), (start[key].numpy() + end[key].numpy()) / 2, rtol=1e-6)
        assert half[key].dtype == paddle.float32
    assert int(half["step"]) == 7
    quarter = interpolate_states({k: v.numpy() for k, v in start.items()}, {k: v.numpy() for k, v in end.items()}, 0.25)
    np.testing.assert_allclose(quarter["w"], 0.75 * start["w"].numpy() + 0.25 * end["w"].numpy(), rtol=1e-6)


def test_interpolation_errors_name_the_keys():
    start, end = random_state(0), random_state(1)
    with pytest.raises(ValueError, match="only in the start: b; only in the end: extra"):
        interpolate_states(start, {**{k: v for k, v in end.items() if k != "b"}, "extra": end["b"]}, 0.5)
    with pytest.raises(ValueError, match=r"differ in shape: w \[3, 4\] vs \[4, 3\]"):
        interpolate_states(start, {**end, "w": end["w"].reshape([4, 3])}, 0.5)
    with pytest.raises(ValueError, match="integer values differ .*: step"):
        interpolate_states(start, random_state(1, steps=8), 0.5)
    for alpha in (-0.1, 1.5):
        with pytest.raises(ValueError, match="alpha must be in"):
            interpolate_states(start, end, alpha)


def tiny_model_weights(path, seed, arch=TINY_ARCH):
    paddle.seed(seed)
    paddle.save(build_model(arch).state_dict(), str(path))
    return path


def test_interpolate_command_round_trip(tmp_path, capsys):
    a, b = tiny_model_weights(tmp_path / "a.pdparams", 1), tiny_model_weights(tmp_path / "b.pdparams", 2)
    run = lambda *args: cli.run_command("convert_checkpoint", ["interpolate", *map(str, args)])  # noqa: E731
    assert run(a, b, "--alpha", "0.5", tmp_path / "half.pdparams") == 0
    assert run(a, b, "--alpha", "0", tmp_path / "zero.pdparams") == 0
    start, end = paddle.load(str(a)), paddle.load(str(b))
    half, zero = paddle.load(str(tmp_path / "half.pdparams")), paddle.load(str(tmp_path / "zero.pdparams"))
    assert sorted(half) == sorted(start)
    for key in start:
        np.testing.assert_allclose(half[key].numpy(), (start[key].numpy() + end[key].numpy()) / 2, rtol=1e-5, atol=1e-7, err_msg=key)
        assert bits(zero[key]) == bits(start[key]), key
    model = build_model(TINY_ARCH)  # the result loads strictly into the architecture
    model.set_state_dict(read_model_state(str(tmp_path / "half.pdparams")))
    assert "tensors: 0.5 x" in capsys.readouterr().out

    deeper = tiny_model_weights(tmp_path / "deeper.pdparams", 3, {**TINY_ARCH, "image_tower": {**TINY_ARCH["image_tower"], "depth": 2}})
    assert run(a, deeper, "--alpha", "0.5", tmp_path / "x.pdparams") == cli.EXIT_USER_ERROR
    assert "error: the two models have different keys: only in the end: visual.blocks.1." in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run(a, b, "--alpha", "1.5", tmp_path / "x.pdparams")
    assert "--alpha: must be in [0, 1], got 1.5" in capsys.readouterr().err
    assert not (tmp_path / "x.pdparams").exists()


def test_sweep_prints_each_alpha_as_evaluated_and_writes_the_best(tiny, tmp_path, capsys):  # noqa: F811
    root = tiny["root"]
    b = tiny_model_weights(tmp_path / "b.pdparams", 11)
    overrides = [
        f"Data.val={{format: official_tsv, path: {root / 'pairs.tsv'}}}",
        f"Eval.zeroshot={{images: {root / 'imgs.tsv'}, labels: {root / 'labels.tsv'}, classes: {root / 'classes.txt'}}}",
    ]
    argv = ["sweep", tiny["weights"], str(b), "-c", tiny["config"], "--alphas", "0,0.5,1", "--out", str(tmp_path / "best.pdparams")]
    assert cli.run_command("convert_checkpoint", argv + [a for o in overrides for a in ("-o", o)]) == 0
    out = capsys.readouterr().out
    assert "alpha  T2I R@1  I2T R@1 MeanRecall zero-shot top-1" in out
    rows = {float(m[0]): [float(x) for x in m[1:]] for m in re.findall(r"^\s*([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", out, re.M)}
    assert sorted(rows) == [0.0, 0.5, 1.0]
    best = float(re.search(r"best alpha: ([\d.]+) \(the highest MeanRecall, official protocol\)", out).group(1))
    assert rows[best][2] == max(row[2] for row in rows.values())

    # Each row is the trainer's evaluation of that interpolation; the file written is the best one.
    config = load_config(tiny["config"], overrides)
    start, end = read_model_state(tiny["weights"]), read_model_state(str(b))
    model = build_model(config["Arch"])
    tokenizer, transform = build_tokenizer(config), EvalTransform.from_config(config["Preprocess"])
    for alpha in (0.0, 1.0):
        model.set_state_dict(interpolate_states(start, end, alpha))
        results = evaluate_model(model, config, tokenizer, transform, log=lambda _: None)
        official = results["official"]
        expected = [official["text2image"]["r1"], official["image2text"]["r1"], official["mean"]["mean_recall"], results["zeroshot"]["top1"]]
        np.testing.assert_allclose(rows[alpha], np.round(np.array(expected) * 100, 2), atol=0.006)
    written, expected = paddle.load(str(tmp_path / "best.pdparams")), interpolate_states(start, end, best)
    assert sorted(written) == sorted(expected) and all(bits(written[k]) == bits(expected[k]) for k in expected)


def test_sweep_needs_a_validation_split_and_good_alphas(tiny, tmp_path, capsys):  # noqa: F811
    argv = ["sweep", tiny["weights"], tiny["weights"], "-c", tiny["config"]]
    assert cli.run_command("convert_checkpoint", argv) == cli.EXIT_USER_ERROR
    assert "Data.val: not given: the sweep evaluates each mixing weight on it" in capsys.readouterr().err
    val = f"Data.val={{format: official_tsv, path: {tiny['root'] / 'pairs.tsv'}}}"
    assert cli.run_command("convert_checkpoint", argv + ["-o", val, "--alphas", "0,1.2"]) == cli.EXIT_USER_ERROR
    assert "alpha must be in [0, 1], got 1.2" in capsys.readouterr().err
    assert cli.run_command("convert_checkpoint", argv + ["-o", val, "--alphas", "0,half"]) == cli.EXIT_USER_ERROR
    assert "--alphas: 'half' is not a number" in capsys.readouterr().err


def test_wise_ft_alpha_leaves_the_interpolated_model_in_the_output_folder_and_evaluates_it(tmp_path, train_data):  # noqa: F811
    train, val = train_data
    pretrained = tiny_model_weights(tmp_path / "pretrained.pdparams", 5)
    config = write_train_config(
        tmp_path, train, {"format": "official_tsv", "path": str(val)},
        Global={"pretrained": str(pretrained)}, Train={"max_steps": 2, "save_every": 2, "wise_ft_alpha": 0.25},
    )
    result = run_train(config)
    out = tmp_path / "out"
    fine_tuned = final_weights(out, 2)  # the checkpoint keeps the fine-tuned weights
    expected = interpolate_states(paddle.load(str(pretrained)), fine_tuned, 0.25)
    final = paddle.load(str(out / "model.pdparams"))
    assert sorted(final) == sorted(expected)
    for key in expected:
        np.testing.assert_array_equal(final[key].numpy(), expected[key].numpy(), err_msg=key)
    assert any(not np.array_equal(final[k].numpy(), fine_tuned[k].numpy()) for k in final)
    assert f"final model: 0.25 x the fine-tuned weights + 0.75 x {pretrained} (Train.wise_ft_alpha) -> {out / 'model.pdparams'}" in result.stdout
    assert all(bits(read_model_state(str(out))[k]) == bits(final[k]) for k in final)  # --weights OUTPUT_DIR reads it

    # The final evaluation is the interpolated model's.
    loaded = load_config(str(config))
    model = build_model(loaded["Arch"])
    model.set_state_dict(final)
    results = evaluate_model(model, loaded, build_tokenizer(loaded), EvalTransform.from_config(loaded["Preprocess"]), log=lambda _: None)
    assert json.loads((out / "eval_metrics.json").read_text(encoding="utf-8"))["official"] == results["official"]

    # A later run in the folder without the option does not leave this run's final model standing for its own.
    again = run_train(config, "Train.wise_ft_alpha=null", "Train.max_steps=3")
    assert f"removed {out / 'model.pdparams'}, an earlier run's final model" in again.stdout
    assert not (out / "model.pdparams").exists()


def test_wise_ft_alpha_config_errors(tmp_path, train_data):  # noqa: F811
    config = write_train_config(tmp_path, train_data[0])
    with pytest.raises(ConfigError, match="Train.wise_ft_alpha: mixes the fine-tuned weights with Global.pretrained's, which is not set"):
        load_config(str(config), ["Train.wise_ft_alpha=0.5"])
    with pytest.raises(ConfigError, match=r"Train.wise_ft_alpha: must be in \[0, 1\], got 1.5"):
        load_config(str(config), ["Train.wise_ft_alpha=1.5"])
    inside = tmp_path / "out" / "checkpoints" / "step_000002"
    inside.mkdir(parents=True)
    tiny_model_weights(inside / "model.pdparams", 0)
    loaded = load_config(str(config), ["Train.wise_ft_alpha=0.5", f"Global.pretrained={inside}"])
    with pytest.raises(ConfigError, match="Train.wise_ft_alpha: mixes with Global.pretrained .* which lies in Global.output_dir"):
        build_trainer(loaded)


def deep_model():
    arch = copy.deepcopy(TINY_ARCH)
    arch["image_tower"].update(depth=2, drop_rate=0.0)
    arch["text_tower"].update(num_layers=2, vocab_size=50, hidden_dropout=0.0, attention_dropout=0.0)
    paddle.seed(0)
    return build_model(arch)


@pytest.mark.parametrize("image, text", [(1, 0), (2, None), (4, 3), (0, 1)])
def test_unlocked_layers_train_exactly_the_last_layer_groups(image, text):
    model = deep_model()
    section = optimizer_section(lr=1e-3, image={"unlocked_layers": image}, text={"unlocked_layers": text}, layer_decay=0.8)
    groups = {kind: tower.layer_groups() for kind, tower in model.towers().items()}
    assert [len(g) for g in groups.values()] == [4, 4]  # embeddings, 2 blocks, head
    expected_locked = set()
    for kind, count in (("image", image), ("text", text)):
        if count is not None:
            expected_locked |= {model.tower_prefix(kind) + name for group in groups[kind][: 4 - count] for name in group}
    before = {name: p.numpy().copy() for name, p in model.named_parameters()}
    loss = table_loss(PAIRS)
    optimizer = build_optimizer(model, section, loss)
    train_step(model, loss, random_batch(8, 0), loss.needs.views)
    optimizer.step()
    unchanged = {name for name, p in model.named_parameters() if np.array_equal(p.numpy(), before[name])}
    assert unchanged == expected_locked
    assert {name for name, p in model.named_parameters() if p.stop_gradient} == expected_locked
    # Locked layers take no optimizer state (moments), layer decay or not.
    held = {id(p) for group in optimizer._param_groups for p in group["params"]}
    assert {name for name, p in model.named_parameters() if id(p) not in held} == expected_locked


def test_unlocked_layers_errors_name_the_key():
    model = build_model({**TINY_ARCH, "image_tower": {"name": "PaddleClas", "backbone": "EfficientNetB0", "out_dim": TINY_ARCH["text_tower"]["hidden_size"]}})
    with pytest.raises(ConfigError, match="Optimizer.image.unlocked_layers: the PaddleClasTower tower has no layer_groups"):
        lock_layers(model, optimizer_section(image={"unlocked_layers": 1}))
    assert lock_layers(model, optimizer_section(text={"unlocked_layers": 1}))
    with pytest.raises(ConfigError, match="Optimizer.text.unlocked_layers: 5 is more than the 4 layer groups of the ErnieText"):
        lock_layers(deep_model(), optimizer_section(text={"unlocked_layers": 5}))


def test_unlocked_layers_is_checked_when_the_config_loads(tmp_path, train_data):  # noqa: F811
    config = write_train_config(tmp_path, train_data[0])
    with pytest.raises(ConfigError, match="Optimizer.image.unlocked_layers: must be >= 0, got -1"):
        load_config(str(config), ["Optimizer.image.unlocked_layers=-1"])
    with pytest.raises(ConfigError, match="Optimizer.text.unlocked_layers: expected int"):
        load_config(str(config), ["Optimizer.text.unlocked_layers=1.5"])
    assert load_config(str(config), ["Optimizer.text.unlocked_layers=2"])["Optimizer"]["text"]["unlocked_layers"] == 2
