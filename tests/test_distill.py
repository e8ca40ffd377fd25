"""The distill loss term: its maths against numpy, its config errors, and a short run with a frozen teacher."""
import copy
import os
import shutil
import subprocess
import sys

import numpy as np
import paddle
import pytest

from ernievil2.config import load_config
from ernievil2.engine.build import build_trainer
from ernievil2.engine.steps import batch_to_tensors, encode_views
from ernievil2.losses.distill import TeacherBatch, feature_distillation, similarity_distillation
from ernievil2.losses.loss import build_loss, check_loss_section
from ernievil2.registry import ConfigError
from tests.conftest import REPO
from tests.helpers import TINY_ARCH, write_pairs_tsv, write_train_config


def unit(rows):
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def leaf(array):
    tensor = paddle.to_tensor(array)
    tensor.stop_gradient = False
    return tensor


def log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def kl_and_logit_grad(teacher_logits, student_logits):
    """Mean over rows of KL(softmax(t) || softmax(s)) and its gradient in the student's logits."""
    log_p, log_q = log_softmax(teacher_logits), log_softmax(student_logits)
    p, q = np.exp(log_p), np.exp(log_q)
    rows = len(p)
    return (p * (log_p - log_q)).sum(axis=1).mean(), (q - p) / rows


def numpy_similarity(sa, sb, ta, tb, s_scale, t_scale):
    """The loss and its gradients in ``sa``, ``sb`` and the student's scale, by hand."""
    value, grad_sa, grad_sb, grad_scale = 0.0, np.zeros_like(sa), np.zeros_like(sb), 0.0
    for x, y, tx, ty, gx, gy in ((sa, sb, ta, tb, grad_sa, grad_sb), (sb, sa, tb, ta, grad_sb, grad_sa)):
        loss, g = kl_and_logit_grad(t_scale * tx @ ty.T, s_scale * x @ y.T)
        value += loss / 2
        gx += s_scale * g @ y / 2
        gy += s_scale * g.T @ x / 2
        grad_scale += (g * (x @ y.T)).sum() / 2
    return value, grad_sa, grad_sb, grad_scale


def test_feature_distillation_value_and_gradient_match_numpy():
    rng = np.random.default_rng(0)
    student, teacher = rng.standard_normal((6, 5)), rng.standard_normal((6, 5))
    s = leaf(student)
    loss = feature_distillation(s, paddle.to_tensor(teacher))
    loss.backward()
    norms = np.linalg.norm(student, axis=1, keepdims=True)
    t_hat = unit(teacher)
    cosine = (student * t_hat).sum(axis=1, keepdims=True) / norms
    np.testing.assert_allclose(float(loss), (1 - cosine).mean(), rtol=1e-12)
    # d/ds of -(s·t̂)/|s|, averaged over the rows
    expected = -(t_hat / norms - cosine * student / norms**2) / len(student)
    np.testing.assert_allclose(s.grad.numpy(), expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("t_scale", [7.0, 20.0])
def test_similarity_distillation_value_and_gradients_match_numpy(t_scale):
    rng = np.random.default_rng(1)
    sa, sb, ta, tb = (unit(rng.standard_normal((5, 4))) for _ in range(4))
    a, b, scale = leaf(sa), leaf(sb), leaf(np.array(12.0))
    loss = similarity_distillation(a, b, paddle.to_tensor(ta), paddle.to_tensor(tb), scale, paddle.to_tensor(t_scale))
    loss.backward()
    value, grad_a, grad_b, grad_scale = numpy_similarity(sa, sb, ta, tb, 12.0, t_scale)
    assert value > 0.01
    np.testing.assert_allclose(float(loss), value, rtol=1e-10)
    np.testing.assert_allclose(a.grad.numpy(), grad_a, rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(b.grad.numpy(), grad_b, rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(float(scale.grad), grad_scale, rtol=1e-9)


def test_both_modes_are_zero_when_the_student_is_the_teacher():
    rng = np.random.default_rng(2)
    a, b = (paddle.to_tensor(unit(rng.standard_normal((8, 6)))) for _ in range(2))
    assert abs(float(feature_distillation(a, a))) < 1e-12
    assert abs(float(similarity_distillation(a, b, a, b, 10.0, 10.0))) < 1e-12
    # a different temperature alone makes the student's rows sharper or flatter than the teacher's
    assert float(similarity_distillation(a, b, a, b, 10.0, 20.0)) > 1e-3


def test_gathered_rows_give_the_single_process_loss_on_the_whole_batch():
    rng = np.random.default_rng(3)
    sa, sb, ta, tb = (paddle.to_tensor(unit(rng.standard_normal((8, 4)))) for _ in range(4))
    whole = float(similarity_distillation(sa, sb, ta, tb, 9.0, 11.0))
    ranks = [
        float(similarity_distillation(sa[r * 4 : (r + 1) * 4], sb[r * 4 : (r + 1) * 4], ta[r * 4 : (r + 1) * 4], tb[r * 4 : (r + 1) * 4],
                                      9.0, 11.0, sa, sb, ta, tb, rank=r))
        for r in range(2)
    ]
    assert abs(np.mean(ranks) - whole) < 1e-12
    with pytest.raises(ValueError, match="gathered together"):
        similarity_distillation(sa, sb, ta, tb, 9.0, 11.0, student_a_all=sa, student_b_all=sb)


def distill_section(**term):
    return {"terms": [{"name": "info_nce", "pairs": [["image_v1", "text_v1", 1.0]]}, {"name": "distill", **term}]}


def test_the_loss_reads_the_teachers_rows_and_logs_the_term():
    rng = np.random.default_rng(4)
    student = {v: paddle.to_tensor(rng.standard_normal((4, 6)).astype("float32")) for v in ("image_v1", "text_v1")}
    teacher = {v: paddle.to_tensor(rng.standard_normal((4, 6)).astype("float32")) for v in ("image_v1", "text_v1")}
    unit_rows = {v: paddle.nn.functional.normalize(x, axis=-1) for v, x in {**student, **{f"t.{k}": t for k, t in teacher.items()}}.items()}
    scale, t_scale = paddle.to_tensor(10.0), paddle.to_tensor(14.0)

    loss = build_loss(distill_section(weight=0.5))  # similarity, image_v1 x text_v1, each model's own scale
    assert loss.needs.teacher.source is None and loss.needs.teacher.views == {"image_v1", "text_v1"} and loss.needs.logit_scale
    out = loss(student, scale, teacher=TeacherBatch(teacher, t_scale))
    expected = similarity_distillation(unit_rows["image_v1"], unit_rows["text_v1"], unit_rows["t.image_v1"], unit_rows["t.text_v1"], scale, t_scale)
    np.testing.assert_allclose(float(out["loss/distill"]), float(expected), rtol=1e-6)
    np.testing.assert_allclose(float(out["loss"]), float(out["loss/image_v1-text_v1"]) + 0.5 * float(expected), rtol=1e-6)
    # a fixed temperature is used for both models
    fixed = build_loss(distill_section(temperature=0.05))(student, scale, teacher=TeacherBatch(teacher, t_scale))
    expected = similarity_distillation(unit_rows["image_v1"], unit_rows["text_v1"], unit_rows["t.image_v1"], unit_rows["t.text_v1"], 20.0, 20.0)
    np.testing.assert_allclose(float(fixed["loss/distill"]), float(expected), rtol=1e-6)

    feature = build_loss({"terms": [{"name": "distill", "mode": "feature", "views": ["text_v1", "image_v1"], "teacher": "/w.pdparams"}]})
    assert feature.needs.teacher.source == "/w.pdparams" and not feature.needs.logit_scale
    out = feature(student, scale, teacher=TeacherBatch(teacher, t_scale))
    expected = (float(feature_distillation(student["image_v1"], teacher["image_v1"])) + float(feature_distillation(student["text_v1"], teacher["text_v1"]))) / 2
    np.testing.assert_allclose(float(out["loss"]), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="teacher="):
        feature(student, scale)
    with pytest.raises(ValueError, match="only with one"):
        build_loss({"terms": distill_section()["terms"][:1]})(student, scale, teacher=TeacherBatch(teacher, t_scale))


@pytest.mark.parametrize(
    "term, key, message",
    [
        ({"mode": "features"}, "Loss.terms[1].mode", "unknown distillation mode 'features'"),
        ({"views": ["image_v1", "image_v2"]}, "Loss.terms[1].views", "one image view against one text view"),
        ({"views": ["image_v1", "text_v1", "tag"]}, "Loss.terms[1].views", "one image view against one text view"),
        ({"views": ["image_v1", "txt"]}, "Loss.terms[1].views[1]", "unknown view 'txt'"),
        ({"mode": "feature", "temperature": 0.1}, "Loss.terms[1].temperature", "only mode similarity"),
        ({"temperature": 0}, "Loss.terms[1].temperature", "positive"),
        ({"teacher": ""}, "Loss.terms[1].teacher", "a path of weights"),
        ({"teachers": None}, "Loss.terms[1].teachers", "unknown key"),
    ],
)
def test_bad_distill_terms_are_config_errors_naming_the_key(term, key, message):
    with pytest.raises(ConfigError, match=message) as err:
        check_loss_section(distill_section(**term))
    assert err.value.key == key


def test_a_second_distill_term_is_refused():
    section = distill_section(mode="feature")
    section["terms"].append({"name": "distill"})
    with pytest.raises(ConfigError, match="a second distill term") as err:
        check_loss_section(section)
    assert err.value.key == "Loss.terms[2]"


def test_feature_mode_takes_any_views():
    check_loss_section(distill_section(mode="feature", views=["image_v1", "image_v2", "tag"]))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny model trained two steps (the stand-in for the released one) and the data to fine-tune on."""
    folder = tmp_path_factory.mktemp("distill")
    train = write_pairs_tsv(folder / "train.tsv", 24, seed=8)
    config = write_train_config(folder, train, Train={"max_steps": 2, "save_every": 0})
    build_trainer(load_config(str(config))).train()
    return folder / "out", train


def state(layer):
    return {name: value.numpy().copy() for name, value in layer.state_dict().items()}


def test_two_steps_with_the_pretrained_teacher_train_the_student_only(tmp_path, pretrained):
    source, train = pretrained
    loss = {"terms": [{"name": "info_nce", "pairs": [["image_v1", "text_v1", 1.0]]},
                      {"name": "distill", "mode": "similarity", "views": ["image_v1", "text_v1"], "teacher": None, "temperature": None}]}
    config = write_train_config(
        tmp_path, train, Loss=loss, Global={"pretrained": str(source)},
        Train={"max_steps": 2, "save_every": 0, "batch_size": 2, "accum_steps": 2, "patch_keep": {"image_v1": 0.5}},
    )
    trainer = build_trainer(load_config(str(config)))
    teacher, student = state(trainer.teacher.model), state(trainer.model)
    assert sorted(teacher) == sorted(student)
    for name in student:  # both start from the pretrained weights
        np.testing.assert_array_equal(teacher[name], student[name], err_msg=name)
    assert all(p.stop_gradient for p in trainer.teacher.model.parameters()) and not trainer.teacher.model.training
    trainer.train()
    after = state(trainer.teacher.model)
    for name in teacher:
        np.testing.assert_array_equal(after[name], teacher[name], err_msg=name)
    moved = [name for name, value in state(trainer.model).items() if not np.array_equal(value, student[name])]
    assert len(moved) > len(student) // 2
    log = (tmp_path / "out" / "train.log").read_text(encoding="utf-8")
    assert "distillation teacher: " + str(source) in log and "M parameters, frozen" in log
    # at step 1 the student is the teacher but for its dropout and dropped patches: a small loss, not zero
    first = float(log.split("step 1/2 ")[1].split(" distill=")[1].split()[0])
    assert 0 < first < 1
    # the checkpoint holds the student and the loss, never the teacher
    saved = paddle.load(os.path.join(tmp_path, "out", "checkpoints", "step_000002", "model.pdparams"))
    assert sorted(saved) == sorted(student)
    extra = paddle.load(os.path.join(tmp_path, "out", "checkpoints", "step_000002", "extra.pdparams"))
    assert not any("teacher" in key for key in extra)


def test_a_teacher_of_null_without_pretrained_weights_is_a_one_line_error(tmp_path, pretrained):
    config = write_train_config(tmp_path, pretrained[1], Loss=distill_section())
    result = subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), "-c", str(config)],
                            capture_output=True, text=True, cwd=str(REPO), timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Loss.terms[1].teacher" in result.stderr and "Global.pretrained" in result.stderr
    assert "Traceback" not in result.stderr
    config = write_train_config(tmp_path, pretrained[1], Loss=distill_section(teacher=str(tmp_path / "nowhere.pdparams")))
    missing = subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), "-c", str(config)],
                             capture_output=True, text=True, cwd=str(REPO), timeout=300)
    assert missing.returncode == 2 and "Loss.terms[1].teacher" in missing.stderr and "nowhere.pdparams" in missing.stderr, missing.stderr[-2000:]


@pytest.mark.parametrize("mode", ["similarity", "feature"])
def test_the_teachers_rows_line_up_with_the_students_over_micro_batches(tmp_path, pretrained, mode):
    """Without dropout the student at step 0 is the teacher: the term is 0 only if every row meets its own."""
    source, train = pretrained
    arch = copy.deepcopy(TINY_ARCH)
    arch["text_tower"].update(hidden_dropout=0.0, attention_dropout=0.0)
    loss = {"terms": [{"name": "info_nce", "pairs": [["image_v1", "text_v1", 1.0]]},
                      {"name": "distill", "mode": mode, "views": ["image_v1", "text_v1"]}]}
    config = write_train_config(tmp_path, train, Arch=arch, Loss=loss, Global={"pretrained": str(source)},
                                Train={"max_steps": 2, "save_every": 0, "batch_size": 3, "accum_steps": 2})
    trainer = build_trainer(load_config(str(config)))
    batches = iter(trainer.stream)
    try:
        micro = [batch_to_tensors(next(batches)) for _ in range(2)]
        assert abs(trainer.run_step(micro)["loss/distill"]) < 1e-6
        # the rows of the second micro-batch against the teacher's of the first: far from 0
        shuffled = trainer.teacher.batch_for(micro[::-1])
        features, scale = encode_views(trainer.model, {k: paddle.concat([m[k] for m in micro]) for k in micro[0]}, trainer.needs.views)
        assert float(trainer.loss_fn(features, scale, teacher=shuffled)["loss/distill"]) > 1e-2
    finally:
        trainer.stream.close()


def train_cli(config):
    """``tools/train.py`` in a process of its own (a resumed optimizer finds its parameters by their names, which
    count the layers a process has built)."""
    result = subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), "-c", str(config)],
                            capture_output=True, text=True, cwd=str(REPO), timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def test_a_resumed_run_rebuilds_the_teacher_and_ends_where_the_straight_run_does(tmp_path, pretrained):
    source, train = pretrained
    loss = {"terms": [{"name": "info_nce", "pairs": [["image_v1", "text_v1", 1.0]]}, {"name": "distill", "mode": "similarity"}]}
    outs = []
    for name in ("straight", "resumed"):
        (tmp_path / name).mkdir()
        config = write_train_config(tmp_path / name, train, Loss=loss, Global={"pretrained": str(source)},
                                    Train={"max_steps": 4, "save_every": 2, "batch_size": 4})
        train_cli(config)
        outs.append(tmp_path / name / "out" / "checkpoints")
    shutil.rmtree(outs[1] / "step_000004")
    (outs[1] / "latest").write_text("step_000002\n")
    log = train_cli(tmp_path / "resumed" / "config.yaml")
    assert "distillation teacher: " in log and "at step 2" in log
    straight, resumed = (paddle.load(str(out / "step_000004" / "model.pdparams")) for out in outs)
    assert sorted(straight) == sorted(resumed)
    for key in straight:
        np.testing.assert_array_equal(np.asarray(straight[key]), np.asarray(resumed[key]), err_msg=key)
