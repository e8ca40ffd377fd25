"""The trainer's pieces (schedule, optimizer groups, steps) and the train CLI end to end."""
import copy
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import paddle
import pytest

from ernievil2.config import DEFAULTS
from ernievil2.engine.optim import freeze_towers, lr_at, param_groups, param_settings
from ernievil2.engine.steps import accumulated_step, train_step, use_tags_as_text
from ernievil2.models import build_model
from ernievil2.models.tower import layer_scales
from ernievil2.registry import ConfigError
from tests.conftest import REPO
from tests.helpers import TINY_ARCH, table_loss, write_pairs_tsv, write_train_config

PAIRS = [["image_v1", "text_v1", 1.0], ["image_v2", "text_v2", 1.0], ["image_v1", "image_v2", 0.5], ["text_v1", "text_v2", 0.5], ["image_v1", "tag", 0.5]]


def tiny_model(dropout):
    arch = copy.deepcopy(TINY_ARCH)
    arch["text_tower"].update(hidden_dropout=dropout, attention_dropout=dropout, vocab_size=50)
    arch["image_tower"].update(drop_rate=dropout)
    paddle.seed(0)
    return build_model(arch)


def random_batch(n, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, 50, size=(n, 10))
    ids[:, 0], ids[:, -1] = 1, 2
    ids[: n // 2, 7:] = 0
    return {
        "image_v1": paddle.to_tensor(rng.standard_normal((n, 3, 32, 32)).astype("float32")),
        "image_v2": paddle.to_tensor(rng.standard_normal((n, 3, 32, 32)).astype("float32")),
        "text": paddle.to_tensor(ids),
        "tag": paddle.to_tensor(np.roll(ids, 1, axis=1)),
    }


def split(batch, parts):
    return [{k: v[i * len(v) // parts : (i + 1) * len(v) // parts] for k, v in batch.items()} for i in range(parts)]


def grads(model):
    return {n: p.grad.numpy().copy() for n, p in model.named_parameters() if p.grad is not None}


def test_lr_schedule():
    assert lr_at(0, 1.0, 10, 100) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 10, 100) == pytest.approx(1.0)
    assert lr_at(10, 1.0, 10, 100) == pytest.approx(1.0)
    assert lr_at(55, 1.0, 10, 100) == pytest.approx(0.5)
    assert lr_at(100, 1.0, 10, 100, min_lr_ratio=0.1) == pytest.approx(0.1)
    with pytest.raises(AssertionError):
        lr_at(101, 1.0, 10, 100)


def optimizer_section(**values):
    return {**copy.deepcopy(DEFAULTS["Optimizer"]), "image": {}, "text": {}, "grad_clip": None, **values}


def test_param_groups_decay_layers_and_freezing():
    model = tiny_model(0.0)
    names = [n for n, _ in model.named_parameters()]
    no_decay = model.no_weight_decay()
    assert "visual.blocks.0.attn.qkv.weight" not in no_decay and "visual.patch_embed.proj.weight" not in no_decay
    assert {"visual.blocks.0.attn.qkv.bias", "visual.norm_pre.weight", "text_model.word_emb.weight",
            "visual.positional_embedding", "contrastive_loss_mm.temperature_b", "text_model.encoder_stack.block.0.ln1.weight"} <= no_decay
    assert [len(tower.layer_groups()) for tower in model.towers().values()] == [3, 3]  # stem, 1 block, head
    scales = layer_scales(model.visual, 0.5)
    assert scales["blocks.0.mlp.fc1.weight"] == 0.5
    assert scales["patch_embed.proj.weight"] == 0.25
    assert scales["norm_post.weight"] == 1.0
    groups = param_groups(model, optimizer_section(weight_decay=0.1, layer_decay=0.5))
    assert sum(len(g["params"]) for g in groups) == len(names)
    frozen = freeze_towers(model, ["image"])
    assert frozen and all(n.startswith("visual.") for n in frozen)
    assert sum(len(g["params"]) for g in param_groups(model, optimizer_section(weight_decay=0.1))) == len(names) - len(frozen)
    with pytest.raises(ValueError, match="unknown tower 'img'"):
        freeze_towers(model, ["img"])


def test_tag_choice_is_deterministic_and_rate_respected():
    draws = [use_tags_as_text(5, step, 0.3) for step in range(2000)]
    assert draws == [use_tags_as_text(5, step, 0.3) for step in range(2000)]
    assert 0.26 < np.mean(draws) < 0.34
    assert not any(use_tags_as_text(5, step, 0.0) for step in range(100))


def test_accumulated_step_equals_one_full_batch_step():
    loss = table_loss(PAIRS)
    batch = random_batch(8, 0)
    model = tiny_model(0.0)
    full = train_step(model, loss, batch, loss.needs.views)
    expected = grads(model)
    model.clear_gradients()
    accumulated = accumulated_step(model, loss, split(batch, 2), loss.needs.views)
    got = grads(model)
    assert float(accumulated["loss"]) == pytest.approx(float(full["loss"]), rel=1e-6)
    assert sorted(got) == sorted(expected)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_accumulated_step_replays_dropout_exactly():
    """With dropout on, the cached and the re-encoded features must be the same draw."""
    loss = table_loss(PAIRS)
    parts = split(random_batch(8, 1), 2)
    model = tiny_model(0.2)
    model.train()
    state = paddle.get_rng_state()
    accumulated_step(model, loss, parts, loss.needs.views)
    got = grads(model)
    model.clear_gradients()
    # Reference: the same micro-batch forwards in one graph, from the same RNG state.
    paddle.set_rng_state(state)
    from ernievil2.engine.steps import encode_views

    features = [encode_views(model, p, loss.needs.views)[0] for p in parts]
    stacked = {v: paddle.concat([f[v] for f in features]) for v in features[0]}
    loss(stacked, model.logit_scale())["loss"].backward()
    expected = grads(model)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-6, err_msg=name)
    # and dropout really was on: a different RNG state gives different gradients
    model.clear_gradients()
    paddle.seed(12345)
    accumulated_step(model, loss, parts, loss.needs.views)
    assert any(not np.allclose(grads(model)[n], expected[n]) for n in expected)


# --- the CLI ----------------------------------------------------------------


def run_train(config, *overrides, check=True, **kwargs):
    cmd = [sys.executable, str(REPO / "tools" / "train.py"), "-c", str(config)]
    for item in overrides:
        cmd += ["-o", item]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO), check=check, timeout=600, **kwargs)


def final_weights(out_dir, step):
    return paddle.load(os.path.join(out_dir, "checkpoints", f"step_{step:06d}", "model.pdparams"))


@pytest.fixture(scope="module")
def train_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    return write_pairs_tsv(folder / "train.tsv", 40, seed=1), write_pairs_tsv(folder / "val.tsv", 12, seed=2)


def test_train_cli_logs_evaluates_and_writes_checkpoints(tmp_path, train_data):
    train, val = train_data
    config = write_train_config(tmp_path, train, {"format": "official_tsv", "path": str(val)})
    result = run_train(config)
    out = tmp_path / "out"
    log = (out / "train.log").read_text(encoding="utf-8")
    assert "step 4/4" in log and "samples/s" in log and "eta" in log
    assert "Text2Image" in log and (out / "eval_metrics.json").is_file()
    assert sorted(os.listdir(out / "checkpoints")) == ["latest", "step_000002", "step_000004"]
    assert any(name.endswith(".log") or "vdlrecords" in name for name in os.listdir(out / "vdl"))
    state = pickle.loads((out / "checkpoints" / "step_000004" / "trainer_state.pkl").read_bytes())
    assert state["step"] == 4 and state["ranks"][0]["position"]["records"] > 0
    assert result.returncode == 0


def test_every_evaluation_is_a_line_of_the_learning_curve(tmp_path, train_data):
    train, val = train_data
    config = write_train_config(tmp_path, train, {"format": "official_tsv", "path": str(val)}, Train={"eval_every": 2})
    run_train(config)
    history = [json.loads(line) for line in (tmp_path / "out" / "eval_history.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [h["step"] for h in history] == [2, 4]
    summary = json.loads((tmp_path / "out" / "train_summary.json").read_text(encoding="utf-8"))
    assert [h["samples"] for h in history] == [8, 16]  # batch 4, one process
    assert 0 < history[0]["train_seconds"] < history[1]["train_seconds"] == pytest.approx(summary["step_seconds"], abs=1e-3)
    final = json.loads((tmp_path / "out" / "eval_metrics.json").read_text(encoding="utf-8"))
    assert history[-1]["official"]["mean"] == final["official"]["mean"]


def test_killed_run_resumes_exactly(tmp_path, train_data):
    train, _ = train_data
    steps = ["Train.max_steps=6", "Train.save_every=3"]
    (tmp_path / "a").mkdir()
    straight = write_train_config(tmp_path / "a", train)
    run_train(straight, *steps)
    reference = final_weights(tmp_path / "a" / "out", 6)

    (tmp_path / "b").mkdir()
    interrupted = write_train_config(tmp_path / "b", train)
    out = tmp_path / "b" / "out"
    cmd = [sys.executable, str(REPO / "tools" / "train.py"), "-c", str(interrupted)] + sum((["-o", s] for s in steps), [])
    proc = subprocess.Popen(cmd, cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "step_000003" / "trainer_state.pkl").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Whatever the kill interrupted, only complete checkpoints count: resume from step 3.
    if (out / "checkpoints" / "step_000006").exists():
        shutil.rmtree(out / "checkpoints" / "step_000006")
    (out / "checkpoints" / "latest").write_text("step_000003\n")
    resumed = run_train(interrupted, *steps)
    assert "resumed from" in resumed.stdout and "at step 3" in resumed.stdout
    got = final_weights(out, 6)
    for key, value in reference.items():
        np.testing.assert_array_equal(got[key].numpy(), value.numpy(), err_msg=key)


def test_bad_config_key_fails_with_its_name(tmp_path, train_data):
    config = write_train_config(tmp_path, train_data[0])
    result = run_train(config, "Train.max_stpes=3", check=False)
    assert result.returncode == 2
    assert "Train.max_stpes: unknown key" in result.stderr and "did you mean 'max_steps'" in result.stderr


def test_bad_records_are_skipped_and_counted_or_raised(tmp_path, train_data):
    lines = train_data[0].read_text(encoding="utf-8").splitlines()
    lines[3] = "一个没有图片的行"
    text, image_id, _, tags = lines[5].split("\t")
    lines[5] = "\t".join([text, image_id, "bm90IGFuIGltYWdl", tags])  # valid base64, not an image
    bad = tmp_path / "bad.tsv"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = write_train_config(tmp_path, bad, Data={"on_error": "skip"})
    run_train(config, "Train.max_steps=10", "Train.save_every=0")  # 40 records: the whole file is read
    log = (tmp_path / "out" / "train.log").read_text(encoding="utf-8")
    assert "skipped 2 bad records" in log and "bad.tsv:4: wrong column count" in log, log
    config = write_train_config(tmp_path, bad, Data={"on_error": "raise"})
    result = run_train(config, "Train.max_steps=2", "Train.resume=never", check=False)
    assert "Traceback" not in result.stderr
    assert result.returncode != 0 and f"{bad}:4" in result.stderr


def test_recompute_gives_the_same_gradients():
    loss = table_loss(PAIRS)
    batch = random_batch(4, 3)
    model = tiny_model(0.0)
    train_step(model, loss, batch, loss.needs.views)
    expected = grads(model)
    model.clear_gradients()
    model.set_grad_checkpointing()
    train_step(model, loss, batch, loss.needs.views)
    for name, value in expected.items():
        np.testing.assert_allclose(grads(model)[name], value, rtol=1e-5, atol=1e-7, err_msg=name)


def test_bfloat16_autocast_step_runs_with_fp32_loss():
    loss = table_loss(PAIRS[:1])
    model = tiny_model(0.0)
    autocast = lambda: paddle.amp.auto_cast(enable=True, dtype="bfloat16", level="O1")  # noqa: E731
    terms = train_step(model, loss, random_batch(4, 4), loss.needs.views, autocast=autocast)
    assert terms["loss"].dtype == paddle.float32 and np.isfinite(float(terms["loss"]))
    assert all(p.grad is not None for p in model.parameters() if not p.stop_gradient)


def test_a_run_resumes_exactly_in_a_process_that_built_other_models(tmp_path, train_data):
    """Parameter and optimizer-moment names come from per-process counters; a checkpoint must not depend on them."""
    from ernievil2.config import load_config
    from ernievil2.engine.build import build_trainer

    train, _ = train_data
    (tmp_path / "a").mkdir()
    run_train(write_train_config(tmp_path / "a", train), "Train.max_steps=4")  # a fresh process
    reference = final_weights(tmp_path / "a" / "out", 4)
    build_model(TINY_ARCH)  # this process has named other layers before: the counters are not at zero
    (tmp_path / "b").mkdir()
    for steps in (2, 4):  # two runs in this process, the second resumed from the first's checkpoint
        trainer = build_trainer(load_config(str(write_train_config(tmp_path / "b", train, Train={"max_steps": steps}))))
        trainer.train()
    assert trainer.step == 4 and "at step 2" in (tmp_path / "b" / "out" / "train.log").read_text(encoding="utf-8")
    got = final_weights(tmp_path / "b" / "out", 4)
    assert got.keys() == reference.keys()
    for key, value in reference.items():
        np.testing.assert_array_equal(got[key].numpy(), value.numpy(), err_msg=key)


def test_momentum_queue_trains_checkpoints_and_resumes_exactly(tmp_path, train_data):
    train, _ = train_data
    loss = {"terms": [
        {"name": "info_nce", "pairs": [["image_v1", "text_v1", 1.0]]},
        {"name": "momentum_queue", "size": 8, "mode": "both", "momentum": 0.9, "warmup_steps": 1, "mask_same_image": True},
    ]}
    steps = ["Train.max_steps=6", "Train.save_every=3"]
    (tmp_path / "a").mkdir()
    straight = write_train_config(tmp_path / "a", train, Loss=loss)
    log = run_train(straight, *steps).stdout
    assert "brivl=" in log
    ckpt = tmp_path / "a" / "out" / "checkpoints"
    extra = paddle.load(str(ckpt / "step_000006" / "extra.pdparams"))
    assert int(extra["momentum"]["queue.filled"]) == 8 and any(k.startswith("encoder.") for k in extra["momentum"])
    # resume from step 3 in a second folder and compare everything at step 6
    (tmp_path / "b").mkdir()
    resumed = write_train_config(tmp_path / "b", train, Loss=loss)
    run_train(resumed, "Train.max_steps=6", "Train.save_every=3")
    out_b = tmp_path / "b" / "out" / "checkpoints"
    shutil.rmtree(out_b / "step_000006")
    (out_b / "latest").write_text("step_000003\n")
    assert "at step 3" in run_train(resumed, *steps).stdout
    for name in ("model.pdparams", "extra.pdparams"):
        a = paddle.load(str(ckpt / "step_000006" / name))
        b = paddle.load(str(out_b / "step_000006" / name))
        flat_a = a if name == "model.pdparams" else {**a["loss"], **{f"m.{k}": v for k, v in a["momentum"].items()}}
        flat_b = b if name == "model.pdparams" else {**b["loss"], **{f"m.{k}": v for k, v in b["momentum"].items()}}
        assert sorted(flat_a) == sorted(flat_b)
        for key in flat_a:
            np.testing.assert_array_equal(np.asarray(flat_a[key]), np.asarray(flat_b[key]), err_msg=key)


def checkpoint_arrays(step_dir):
    """``{file/key: array}`` of a checkpoint's model and extra state, nested dicts flattened."""
    out = {}
    for name in ("model.pdparams", "extra.pdparams"):
        pending = [(name, paddle.load(str(step_dir / name)))]
        while pending:
            prefix, value = pending.pop()
            if isinstance(value, dict):
                pending += [(f"{prefix}/{k}", v) for k, v in value.items()]
            else:
                out[prefix] = np.asarray(value)
    return out


def test_a_momentum_checkpoint_of_the_layout_before_the_queue_was_one_object_resumes_exactly(tmp_path, train_data):
    """Before, the encoder was saved as ``momentum_model`` and the queues (ids and caption ids too) inside the
    loss's state."""
    queue = {"name": "momentum_queue", "size": 8, "mode": "both", "momentum": 0.9, "warmup_steps": 1}
    pairs = {"name": "info_nce", "pairs": [["image_v1", "text_v1", 1.0]]}
    loss = {"positives": {"mode": "masked", "same_caption": True}, "terms": [pairs, queue]}
    runs = {}
    for run in ("straight", "resumed"):
        (tmp_path / run).mkdir()
        runs[run] = write_train_config(tmp_path / run, train_data[0], Loss=loss)
    steps = ["Train.max_steps=6", "Train.save_every=3"]
    for config in runs.values():
        run_train(config, *steps)
    ckpt = tmp_path / "resumed" / "out" / "checkpoints"
    shutil.rmtree(ckpt / "step_000006")
    (ckpt / "latest").write_text("step_000003\n")
    extra = paddle.load(str(ckpt / "step_000003" / "extra.pdparams"))
    momentum = extra.pop("momentum")
    extra["momentum_model"] = {k.removeprefix("encoder."): v for k, v in momentum.items() if k.startswith("encoder.")}
    extra["loss"].update({k: v for k, v in momentum.items() if k.startswith("queue.")})
    assert len(extra["momentum_model"]) + len(extra["loss"]) == len(momentum)  # the loss has no state of its own
    paddle.save(extra, str(ckpt / "step_000003" / "extra.pdparams"))

    assert "at step 3" in run_train(runs["resumed"], *steps).stdout
    expected = checkpoint_arrays(tmp_path / "straight" / "out" / "checkpoints" / "step_000006")
    got = checkpoint_arrays(ckpt / "step_000006")
    assert sorted(got) == sorted(expected) and "extra.pdparams/momentum/queue.caption_ids" in got
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_a_checkpoint_without_a_queue_is_refused_with_one_error_line_when_the_run_lists_one(tmp_path, train_data):
    run_train(write_train_config(tmp_path, train_data[0]), "Train.max_steps=2", "Train.save_every=0")
    loss = {"terms": [{"name": "info_nce", "pairs": [["image_v1", "text_v1", 1.0]]}, {"name": "momentum_queue", "size": 8, "mode": "both"}]}
    refused = run_train(write_train_config(tmp_path, train_data[0], Loss=loss), "Train.max_steps=3", "Train.force_resume=true", check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
    [line] = [text for text in refused.stderr.splitlines() if text.startswith("error: ")]
    assert "step_000002 has no momentum queue, but Loss.terms lists a momentum_queue" in line


def test_accumulation_with_queue_and_tags_over_micro_batches_of_different_lengths(tmp_path):
    """Each micro-batch is trimmed to its own longest text, so their lengths differ."""
    train = write_pairs_tsv(tmp_path / "train.tsv", 16, seed=5)
    lines = train.read_text(encoding="utf-8").splitlines()
    # Every fourth caption (and tag list) is much longer: micro-batches of 2 get lengths 7 or 15.
    lines = [
        line if i % 4 else "\t".join([line.split("\t")[0] + "，摆在一张白色的桌子上面", *line.split("\t")[1:-1], line.split("\t")[-1] + "、桌子、白色背景"])
        for i, line in enumerate(lines)
    ]
    train.write_text("\n".join(lines) + "\n", encoding="utf-8")
    loss = {"terms": [
        {"name": "info_nce", "pairs": [["image_v1", "text_v1", 1.0], ["image_v1", "tag", 0.5]]},
        {"name": "momentum_queue", "size": 8, "mode": "extra_negatives", "momentum": 0.9, "mask_same_image": True},
    ]}
    config = write_train_config(tmp_path, train, Loss=loss, Data={"shuffle_buffer": 0})
    result = run_train(config, "Train.batch_size=2", "Train.accum_steps=2", "Train.max_steps=4", "Train.save_every=0", check=False)
    log = (tmp_path / "out" / "train.log").read_text(encoding="utf-8")
    assert "step 4/4" in log, result.stdout[-2000:] + result.stderr[-2000:]


def test_tag_view_of_its_own_length_goes_through_the_text_tower_unpadded():
    loss = table_loss(PAIRS)
    model = tiny_model(0.0)
    model.eval()
    batch = random_batch(4, 6)
    short = dict(batch, tag=batch["tag"][:, :6])
    padded = dict(batch, tag=paddle.concat([short["tag"], paddle.zeros([4, 4], dtype="int64")], axis=1))
    from ernievil2.engine.steps import encode_views, view_inputs

    texts = view_inputs(short, loss.needs.views)[3]
    assert [list(t.shape) for t in texts] == [[8, 10], [4, 6]]
    assert list(view_inputs(padded, loss.needs.views)[3].shape) == [12, 10]
    # tags standing in for the captions: every text view reads the tag ids, one stack
    assert list(view_inputs(short, loss.needs.views, tags_as_text=True)[3].shape) == [12, 6]
    separate, _ = encode_views(model, short, loss.needs.views)
    stacked, _ = encode_views(model, padded, loss.needs.views)
    assert list(separate) == list(stacked)
    for view in separate:  # padding is masked, so the two layouts give the same features
        np.testing.assert_allclose(separate[view].numpy(), stacked[view].numpy(), atol=2e-6, err_msg=view)
    np.testing.assert_allclose(separate["tag"].numpy(), model.text_model(short["tag"]).numpy(), atol=1e-6)


def test_resume_skips_an_unreadable_checkpoint_and_cleans_temporary_folders(tmp_path, train_data):
    config = write_train_config(tmp_path, train_data[0])
    run_train(config, "Train.max_steps=6", "Train.save_every=3")
    root = tmp_path / "out" / "checkpoints"
    weights = root / "step_000006" / "model.pdparams"
    weights.write_bytes(weights.read_bytes()[:100])  # a cut-off write
    leftover = root / ".step_000009-x1y2"
    leftover.mkdir()
    (leftover / "model.pdparams").write_bytes(b"half")
    result = run_train(config, "Train.max_steps=7", "Train.save_every=0")
    assert "Traceback" not in result.stderr
    assert f"resume: skipped {root / 'step_000006'}" in result.stdout and "model.pdparams" in result.stdout
    assert "at step 3" in result.stdout
    assert f"removed {leftover}" in result.stdout and not leftover.exists()
    assert (root / "step_000007").is_dir()


def test_an_unreadable_checkpoint_named_in_train_resume_is_a_one_line_error(tmp_path, train_data):
    config = write_train_config(tmp_path, train_data[0])
    run_train(config, "Train.max_steps=3", "Train.save_every=0")
    step = tmp_path / "out" / "checkpoints" / "step_000003"
    (step / "optimizer.pdopt").write_bytes(b"\x80\x04garbage")
    result = run_train(config, "Train.max_steps=4", f"Train.resume={step}", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{step / 'optimizer.pdopt'}: cannot be read" in result.stderr


def test_skipped_records_are_listed_once_in_a_report(tmp_path, train_data):
    lines = train_data[0].read_text(encoding="utf-8").splitlines()
    text, image_id, b64, tags = lines[7].split("\t")
    lines[7] = "\t".join([text, image_id, b64[: len(b64) // 2], tags])  # a cut-off JPEG
    bad = tmp_path / "bad.tsv"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = write_train_config(tmp_path, bad, Data={"on_error": "skip", "num_workers": 1})
    run_train(config, "Train.max_steps=25", "Train.save_every=0")  # 25 x 4 records: the file is read 2.5 times
    report = (tmp_path / "out" / "skipped.tsv").read_text(encoding="utf-8").splitlines()
    assert report == ["where\treason", f"{bad}:8\t" + report[1].split("\t", 1)[1]]
    assert report[1].split("\t")[1].startswith("truncated JPEG")
    assert "skipped 1 bad records" in (tmp_path / "out" / "train.log").read_text(encoding="utf-8")


def test_each_tower_has_its_own_lr_weight_decay_and_layer_decay():
    model = tiny_model(0.0)
    section = optimizer_section(lr=1e-3, weight_decay=0.1, image={"lr": 1e-4, "weight_decay": 0.0}, text={"layer_decay": 0.5})
    settings = param_settings(model, section)
    assert settings["visual.blocks.0.attn.qkv.weight"] == (pytest.approx(0.1), 0.0)
    assert settings["text_model.encoder_stack.block.0.ffn.i.weight"] == (0.5, 0.1)
    assert settings["text_model.word_emb.weight"] == (0.25, 0.0)
    assert settings["contrastive_loss_mm.temperature_b"] == (1.0, 0.0)


def test_layer_decay_on_a_tower_without_layer_groups_names_the_key():
    model = build_model({**TINY_ARCH, "image_tower": {"name": "PaddleClas", "backbone": "EfficientNetB0", "out_dim": TINY_ARCH["text_tower"]["hidden_size"]}})
    with pytest.raises(ConfigError, match="Optimizer.image.layer_decay: the PaddleClasTower tower has no layer_groups"):
        param_groups(model, optimizer_section(layer_decay=0.65))
    assert param_groups(model, optimizer_section(text={"layer_decay": 0.65}))


def test_positives_with_a_queue_over_micro_batches_and_one_caption_per_image(tmp_path):
    """The trainer hands the loss the ids it asks for (image and caption) over the step's micro-batches."""
    train = write_pairs_tsv(tmp_path / "train.tsv", 16, seed=6)  # few colours and shapes: captions repeat
    lines = train.read_text(encoding="utf-8").splitlines()
    lines = ["\t".join([line.split("\t")[0], f"img{i // 2}", *line.split("\t")[2:]]) for i, line in enumerate(lines)]
    train.write_text("\n".join(lines) + "\n", encoding="utf-8")  # two captions per image
    loss = {
        "positives": {"mode": "multi_positive", "same_caption": True},
        "terms": [{"name": "info_nce", "pairs": [["image_v1", "text_v1", 1.0]]}, {"name": "momentum_queue", "size": 8, "mode": "both", "momentum": 0.9}],
    }
    config = write_train_config(tmp_path, train, Loss=loss, Data={"shuffle_buffer": 0, "one_caption_per_image": True})
    result = run_train(config, "Train.batch_size=2", "Train.accum_steps=2", "Train.max_steps=4", "Train.save_every=0", check=False)
    log = (tmp_path / "out" / "train.log").read_text(encoding="utf-8")
    assert "step 4/4" in log and "brivl=" in log, result.stdout[-2000:] + result.stderr[-2000:]
    extra = paddle.load(str(tmp_path / "out" / "checkpoints" / "step_000004" / "extra.pdparams"))
    assert (np.asarray(extra["momentum"]["queue.caption_ids"]) >= 0).all() and (np.asarray(extra["momentum"]["queue.ids"]) >= 0).all()


# --- resume knows its run ---------------------------------------------------------


def test_a_changed_run_is_refused_on_resume_with_the_changed_keys_and_the_original_config_kept(tmp_path, train_data):
    config = write_train_config(tmp_path, train_data[0])
    run_train(config, "Train.max_steps=3", "Train.save_every=0")
    out = tmp_path / "out"
    original = (out / "config.yaml").read_text(encoding="utf-8")
    state = pickle.loads((out / "checkpoints" / "step_000003" / "trainer_state.pkl").read_bytes())
    assert state["config"]["Train"]["batch_size"] == 4 and "_source_" not in state["config"]

    refused = run_train(config, "Train.max_steps=5", "Train.batch_size=2", "Global.seed=4", check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    [line] = [text for text in refused.stderr.splitlines() if text.startswith("error: ")]
    assert "Train.resume" in line and "Train.force_resume" in line
    assert "Global.seed (3 -> 4)" in line and "Train.batch_size (4 -> 2)" in line and "max_steps" not in line
    assert sorted(os.listdir(out / "checkpoints")) == ["latest", "step_000003"]

    done = run_train(config, "Train.max_steps=3", check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "Train.max_steps: 3 is not above the step of the checkpoint" in done.stderr

    forced = run_train(config, "Train.max_steps=4", "Train.batch_size=2", "Train.force_resume=true")
    assert "at step 3" in forced.stdout
    assert "resume: changed since the checkpoint: " in forced.stdout and "Train.batch_size (4 -> 2)" in forced.stdout
    assert "(forced)" in forced.stdout
    allowed = run_train(config, "Train.max_steps=5", "Train.batch_size=2", "Train.log_every=2")
    assert "Train.log_every (1 -> 2), Train.max_steps (4 -> 5)" in allowed.stdout and "(forced)" not in allowed.stdout
    assert (out / "config.yaml").read_text(encoding="utf-8") == original
    resumed = [n for n in sorted(os.listdir(out)) if n.startswith("config.resume")]
    assert resumed == ["config.resume_step_000003.yaml", "config.resume_step_000004.yaml"]
    assert "batch_size: 2" in (out / resumed[0]).read_text(encoding="utf-8")


def test_resume_checks_ranks_and_names_every_changed_key(tmp_path):
    from ernievil2.config import load_config
    from ernievil2.engine.resume import changed_keys, check_resumable, is_allowed

    config = load_config(str(write_train_config(tmp_path, "a.tsv")))
    state = {"step": 3, "world_size": 2, "config": copy.deepcopy(config)}
    with pytest.raises(ConfigError, match="written by 2 ranks, this run has 1"):
        check_resumable(config, "ckpt", state, 1, print)
    with pytest.raises(ConfigError, match="written by 2 ranks, this run has 1"):
        check_resumable({**config, "Train": {**config["Train"], "force_resume": True}}, "ckpt", state, 1, print)
    changed = copy.deepcopy(config)
    changed["Data"]["train"]["path"] = "b.tsv"
    changed["Optimizer"]["freeze"] = ["image"]
    changed["Loss"]["terms"] = [{"name": "info_nce", "pairs": [["image_v1", "text_v1", 1.0]]}]
    changed["Eval"]["batch_size"] = 8
    changes = changed_keys(config, changed)
    assert sorted(changes) == ["Data.train.path", "Eval.batch_size", "Loss.terms", "Optimizer.freeze"]
    assert [key for key in changes if is_allowed(key)] == ["Eval.batch_size"]
    with pytest.raises(ConfigError) as info:
        check_resumable(changed, "ckpt", state, 2, print)
    assert "Data.train.path ('a.tsv' -> 'b.tsv')" in str(info.value) and "Loss.terms ([{'name': 'info_nce', " in str(info.value)
    assert "Eval.batch_size" not in str(info.value)
    logged = []
    check_resumable(config, "ckpt", {**state, "config": {**config, "Train": {**config["Train"], "max_steps": 10}}}, 2, logged.append)
    assert logged == [f"resume: changed since the checkpoint: Train.max_steps (10 -> {config['Train']['max_steps']})"]
