"""The sigmoid (SigLIP) loss term against a numpy reference, its config checks, and its training state."""
import math
import shutil

import numpy as np
import paddle
import pytest

from ernievil2.config import DEFAULTS
from ernievil2.engine.optim import build_optimizer
from ernievil2.losses import LOSS_TERMS, SigmoidPairs, build_loss, check_loss_section, chunked_sigmoid_loss, sigmoid_block_loss
from ernievil2.models import build_model
from ernievil2.registry import ConfigError
from tests.helpers import TINY_ARCH, queue_loss, table_loss, write_pairs_tsv, write_train_config
from tests.test_engine import run_train

PAIR = [["image_v1", "text_v1", 1.0]]


def unit_rows(rng, rows, dim):
    x = rng.standard_normal((rows, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def tensor(array):
    return paddle.to_tensor(array, stop_gradient=False)


def np_log_sigmoid(z):
    return -np.logaddexp(0.0, -z)


def np_siglip(a, b, scale, bias):
    """SigLIP's loss over the whole batch and its gradients w.r.t. a, b, scale and bias, by hand."""
    n = len(a)
    cos = a @ b.T
    z = scale * cos + bias
    y = 2 * np.eye(n) - 1
    loss = -np_log_sigmoid(y * z).sum() / n
    # d/dz of -log σ(y z) = -y σ(-y z)
    g = -y / (1 + np.exp(y * z)) / n
    return loss, {"a": scale * g @ b, "b": scale * g.T @ a, "scale": (g * cos).sum(), "bias": g.sum()}


def test_single_process_loss_and_gradients_match_numpy():
    rng = np.random.default_rng(0)
    a_np, b_np = unit_rows(rng, 6, 4), unit_rows(rng, 6, 4)
    scale_np, bias_np = 7.5, -3.25
    a, b, scale, bias = tensor(a_np), tensor(b_np), tensor(np.float64(scale_np)), tensor(np.float64(bias_np))
    loss = chunked_sigmoid_loss(a, [b], scale, bias)
    loss.backward()
    ref_loss, ref = np_siglip(a_np, b_np, scale_np, bias_np)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-12)
    for name, t in (("a", a), ("b", b), ("scale", scale), ("bias", bias)):
        np.testing.assert_allclose(t.grad.numpy(), ref[name], rtol=1e-10, atol=1e-14, err_msg=name)


def test_block_loss_marks_positives_only_on_its_own_chunk():
    rng = np.random.default_rng(1)
    a_np, b_np = unit_rows(rng, 3, 5), unit_rows(rng, 3, 5)
    z = 4.0 * a_np @ b_np.T - 2.0
    own = sigmoid_block_loss(tensor(a_np), tensor(b_np), 4.0, -2.0, positives=True)
    other = sigmoid_block_loss(tensor(a_np), tensor(b_np), 4.0, -2.0, positives=False)
    np.testing.assert_allclose(float(own), -np_log_sigmoid((2 * np.eye(3) - 1) * z).sum(), rtol=1e-12)
    np.testing.assert_allclose(float(other), -np_log_sigmoid(-z).sum(), rtol=1e-12)


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_rank_losses_over_chunks_average_to_the_global_loss_and_gradient(world_size):
    """What the ring computes: each rank's rows against every rank's chunk, in the ring's order."""
    rng = np.random.default_rng(world_size)
    local = 3
    a_np, b_np = unit_rows(rng, world_size * local, 4), unit_rows(rng, world_size * local, 4)
    scale_np, bias_np = 10.0, -10.0
    ref_loss, ref = np_siglip(a_np, b_np, scale_np, bias_np)
    a, b, scale, bias = tensor(a_np), tensor(b_np), tensor(np.float64(scale_np)), tensor(np.float64(bias_np))
    chunks = [b[r * local : (r + 1) * local] for r in range(world_size)]
    losses = []
    for rank in range(world_size):
        # After k shifts rank r holds rank (r - k)'s chunk; chunk 0 is its own.
        arrived = [chunks[(rank - k) % world_size] for k in range(world_size)]
        losses.append(chunked_sigmoid_loss(a[rank * local : (rank + 1) * local], arrived, scale, bias, own=0))
    mean = sum(losses) / world_size
    mean.backward()
    np.testing.assert_allclose(float(mean), ref_loss, rtol=1e-12)
    for name, t in (("a", a), ("b", b), ("scale", scale), ("bias", bias)):
        np.testing.assert_allclose(t.grad.numpy(), ref[name], rtol=1e-10, atol=1e-14, err_msg=name)


def test_own_chunk_outside_the_chunks_is_rejected():
    x = paddle.ones([2, 3])
    with pytest.raises(ValueError, match="own chunk 2"):
        chunked_sigmoid_loss(x, [x, x], 1.0, 0.0, own=2)


def test_term_started_as_siglip_scores_normalised_features():
    term = SigmoidPairs(PAIR, bias_init=-10.0)
    assert math.isclose(float(term.scale()), 10.0, rel_tol=1e-6) and float(term.bias) == -10.0
    loss_fn = table_loss([], terms=[term])
    rng = np.random.default_rng(2)
    raw = {"image_v1": rng.standard_normal((5, 4)).astype("float32"), "text_v1": rng.standard_normal((5, 4)).astype("float32")}
    out = loss_fn({k: paddle.to_tensor(v) for k, v in raw.items()}, paddle.to_tensor(14.0))
    unit = {k: v / np.linalg.norm(v, axis=1, keepdims=True) for k, v in raw.items()}
    ref_loss, _ = np_siglip(unit["image_v1"].astype("float64"), unit["text_v1"].astype("float64"), 10.0, -10.0)
    np.testing.assert_allclose(float(out["loss"]), ref_loss, rtol=1e-5)
    np.testing.assert_allclose(float(out["loss/sigmoid/image_v1-text_v1"]), ref_loss, rtol=1e-5)
    assert float(out["sigmoid/bias"]) == -10.0 and math.isclose(float(out["sigmoid/scale"]), 10.0, rel_tol=1e-6)
    assert term.gathered_views == frozenset() and loss_fn.needs.views == {"image_v1", "text_v1"}


def test_weighted_pairs_share_one_scale_and_bias_and_add_to_info_nce():
    rng = np.random.default_rng(3)
    views = {v: paddle.to_tensor(unit_rows(rng, 4, 3).astype("float32")) for v in ("image_v1", "text_v1", "image_v2")}
    term = SigmoidPairs([["image_v1", "text_v1", 1.0], ["image_v2", "image_v1", 0.5]], scale_init=5.0, bias_init=-1.0)
    both = table_loss(PAIR, terms=[term])(views, paddle.to_tensor(10.0))
    alone = table_loss(PAIR)(views, paddle.to_tensor(10.0))
    siglip = {
        key: np_siglip(*(views[v].numpy().astype("float64") for v in key.split("-")), 5.0, -1.0)[0]
        for key in ("image_v1-text_v1", "image_v2-image_v1")
    }
    for key, value in siglip.items():
        np.testing.assert_allclose(float(both[f"loss/sigmoid/{key}"]), value, rtol=1e-5)
    np.testing.assert_allclose(
        float(both["loss"]), float(alone["loss"]) + siglip["image_v1-text_v1"] + 0.5 * siglip["image_v2-image_v1"], rtol=1e-5
    )
    assert len(list(term.parameters())) == 2


def test_scale_is_clamped_and_stops_its_gradient_at_the_bound():
    term = SigmoidPairs(PAIR, scale_init=4.0, max_logit_scale=4.0, global_batch=3)
    with paddle.no_grad():
        term.logit_scale_b.set_value(paddle.to_tensor([math.log(50.0)], dtype="float32"))
    rng = np.random.default_rng(4)
    views = {v: paddle.to_tensor(unit_rows(rng, 3, 3).astype("float32")) for v in ("image_v1", "text_v1")}
    out = table_loss([], terms=[term])(views, paddle.to_tensor(1.0))
    out["loss"].backward()
    assert math.isclose(float(out["sigmoid/scale"]), 4.0, rel_tol=1e-6)
    assert float(term.logit_scale_b.grad) == 0.0 and float(term.bias.grad) != 0.0


def sigmoid_loss_section(pairs, **options):
    table = [{"name": "info_nce", "pairs": pairs}] if pairs else []
    return {"terms": [*table, {"name": "sigmoid", "pairs": PAIR, **options}]}


def test_sigmoid_alone_needs_no_info_nce_pairs_but_nothing_at_all_is_still_an_error():
    check_loss_section(sigmoid_loss_section([]))
    with pytest.raises(ConfigError, match="Loss.terms"):
        check_loss_section({"terms": []})


@pytest.mark.parametrize(
    "options, key, message",
    [
        ({"scale_init": 0}, "Loss.terms[0].scale_init", "positive finite number, got 0"),
        ({"scale_init": 0.5}, "Loss.terms[0].scale_init", "outside the clamp"),
        ({"scale_init": 200.0}, "Loss.terms[0].scale_init", "outside the clamp"),
        ({"bias_init": "-10"}, "Loss.terms[0].bias_init", "finite number, got '-10'"),
        ({"bias_init": float("nan")}, "Loss.terms[0].bias_init", "finite number"),
        ({"max_logit_scale": True}, "Loss.terms[0].max_logit_scale", "positive finite number, got True"),
        ({"bias": -10.0}, "Loss.terms[0].bias", "unknown key.*did you mean 'bias_init'"),
        ({"pairs": [["image_v1", "image_v1", 1.0]]}, "Loss.terms[0].pairs[0]", "paired with itself"),
    ],
)
def test_bad_options_are_config_errors_naming_the_key(options, key, message):
    section = sigmoid_loss_section([])
    section["terms"][0].update(options)
    with pytest.raises(ConfigError, match=message) as err:
        check_loss_section(section)
    assert key in str(err.value)


@pytest.mark.parametrize("global_batch", [1, 16, 128, 32768])
def test_auto_bias_starts_at_minus_log_of_the_global_batch(global_batch):
    term = SigmoidPairs(PAIR, bias_init="auto", global_batch=global_batch)
    assert float(term.bias) == pytest.approx(-math.log(global_batch), abs=1e-6)
    # SigLIP's -10 is this start for its batch of 32k
    if global_batch == 32768:
        assert float(term.bias) == pytest.approx(-10.4, abs=0.01)


def test_the_trainer_gives_the_auto_bias_its_global_batch_and_a_config_cannot():
    section = sigmoid_loss_section([], bias_init="auto")
    loss = build_loss(section, global_batch=64)
    assert float(loss.term_layers[0].bias) == pytest.approx(-math.log(64), abs=1e-6)
    check_loss_section(section)  # validates without the trainer's batch
    with pytest.raises(ValueError, match="bias_init: auto needs the global batch size"):
        SigmoidPairs(PAIR)  # auto is the default
    section["terms"][0]["global_batch"] = 8
    with pytest.raises(ConfigError, match="set by the trainer") as err:
        build_loss(section, global_batch=64)
    assert "Loss.terms[0].global_batch" in str(err.value)


def test_training_with_the_auto_bias_logs_the_bias_of_its_global_batch(tmp_path):
    train = write_pairs_tsv(tmp_path / "train.tsv", 16)
    loss = sigmoid_loss_section([], bias_init="auto")
    log = run_train(write_train_config(tmp_path, train, Loss=loss), "Train.max_steps=1", "Train.log_every=1",
                    "Train.batch_size=8", "Train.accum_steps=2").stdout
    step = next(line for line in log.splitlines() if line.startswith("step 1/"))
    # 8 rows x 2 micro-batches on one rank: the bias starts at -ln 16 = -2.77 and moves by about lr
    assert "sigmoid_bias=-2.7" in step


def test_registered_by_name():
    assert "sigmoid" in LOSS_TERMS


def test_optimizer_trains_the_scale_and_bias_and_checkpoints_hold_them():
    paddle.seed(0)
    model = build_model(TINY_ARCH)
    loss_fn = build_loss(sigmoid_loss_section([], bias_init=-10.0))
    section = {**DEFAULTS["Optimizer"], "lr": 0.1, "weight_decay": 0.5, "grad_clip": None, "freeze": [], "image": None, "text": None}
    optimizer = build_optimizer(model, section, loss_fn)
    term = loss_fn.term_layers[0]
    trained = {id(p) for group in optimizer._param_groups for p in group["params"]}
    assert id(term.bias) in trained and id(term.logit_scale_b) in trained
    rng = np.random.default_rng(5)
    views = {v: paddle.to_tensor(rng.standard_normal((4, 8)).astype("float32"), stop_gradient=False) for v in ("image_v1", "text_v1")}
    loss_fn(views, model.logit_scale())["loss"].backward()
    optimizer.step()
    # Adam's first step moves each scalar by about lr, against its gradient; no decay pulls the bias to 0 faster.
    assert float(term.bias) == pytest.approx(-10.0 - 0.1 * np.sign(float(term.bias.grad)), abs=1e-3)
    assert sorted(loss_fn.state_dict()) == ["term_layers.0.bias", "term_layers.0.logit_scale_b"]


def test_training_checkpoints_the_scale_and_bias_and_resumes_exactly(tmp_path):
    train = write_pairs_tsv(tmp_path / "train.tsv", 24, seed=1)
    loss = {"terms": [{"name": "sigmoid", "pairs": PAIR}]}
    steps = ["Train.max_steps=4", "Train.save_every=2"]
    (tmp_path / "a").mkdir()
    log = run_train(write_train_config(tmp_path / "a", train, Loss=loss), *steps).stdout
    assert "sigmoid/image_v1-text_v1=" in log
    # the console shows the scale and bias the term trains, not the frozen InfoNCE temperature
    step_lines = [line for line in log.splitlines() if line.startswith("step ")]
    assert step_lines and all("sigmoid_scale=" in line and "sigmoid_bias=" in line for line in step_lines)
    assert not any(" scale=" in line for line in step_lines)
    straight = tmp_path / "a" / "out" / "checkpoints" / "step_000004"
    term_state = paddle.load(str(straight / "extra.pdparams"))["loss"]
    assert sorted(term_state) == ["term_layers.0.bias", "term_layers.0.logit_scale_b"]
    assert float(term_state["term_layers.0.bias"]) != -10.0  # trained
    # resume from step 2 in a second folder and compare everything at step 4
    (tmp_path / "b").mkdir()
    config_b = write_train_config(tmp_path / "b", train, Loss=loss)
    run_train(config_b, *steps)
    root_b = tmp_path / "b" / "out" / "checkpoints"
    shutil.rmtree(root_b / "step_000004")
    (root_b / "latest").write_text("step_000002\n")
    assert "at step 2" in run_train(config_b, *steps).stdout
    for name in ("model.pdparams", "extra.pdparams"):
        a, b = paddle.load(str(straight / name)), paddle.load(str(root_b / "step_000004" / name))
        a, b = (a, b) if name == "model.pdparams" else (a["loss"], b["loss"])
        assert sorted(a) == sorted(b)
        for key in a:
            np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


def test_the_model_temperature_counts_as_used_unless_the_sigmoid_term_is_alone():
    from ernievil2.losses import pairwise_term

    assert not table_loss([], terms=[SigmoidPairs(PAIR, global_batch=8)]).needs.logit_scale
    assert table_loss(PAIR, terms=[SigmoidPairs(PAIR, global_batch=8)]).needs.logit_scale
    other = pairwise_term("other", lambda a, b, logit_scale, a_all, b_all, rank: logit_scale)(PAIR)
    assert table_loss([], terms=[SigmoidPairs(PAIR, global_batch=8), other]).needs.logit_scale
    brivl = {"size": 8, "mode": "brivl"}
    assert queue_loss([], brivl, 4)[0].needs.logit_scale
    fixed = {**brivl, "temperature": {"init": 0.07}}
    assert not queue_loss([], fixed, 4)[0].needs.logit_scale
