"""Zero-shot classification and tagging: the maths against numpy, the files, the two commands end to end."""
import base64
import json
import subprocess
import sys

import numpy as np
import paddle
import pytest

from ernievil2 import cli
from ernievil2.config import load_config
from ernievil2.data.classes import read_class_names, read_templates
from ernievil2.data.errors import DataError, SkipCounter
from ernievil2.data.image_ops import EvalTransform
from ernievil2.data.readers import decode_image_bytes, iter_labelled_images, iter_official_tsv
from ernievil2.data.tokenizer import build_tokenizer
from ernievil2.evaluation import zeroshot as zs
from ernievil2.models import build_model
from ernievil2.registry import ConfigError
from tests.conftest import REPO
from tests.helpers import COLOURS, SHAPES, jpeg_b64, scene, write_pairs_tsv, write_train_config

# ----------------------------------------------------------------------------- maths


def test_class_embeddings_normalise_each_prompt_then_the_mean():
    rng = np.random.default_rng(0)
    prompts = rng.normal(size=(3, 4, 8)).astype(np.float32)
    expected = np.zeros((3, 8), np.float32)
    for c in range(3):
        unit = [p / np.linalg.norm(p) for p in prompts[c]]
        mean = np.mean(unit, axis=0)
        expected[c] = mean / np.linalg.norm(mean)
    np.testing.assert_allclose(zs.class_embeddings(prompts), expected, rtol=1e-5, atol=1e-6)
    # A prompt's length does not weigh: scaling one changes nothing.
    scaled = prompts.copy()
    scaled[1, 2] *= 50
    np.testing.assert_allclose(zs.class_embeddings(scaled), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="classes, templates, dim"):
        zs.class_embeddings(prompts[0])


def test_fill_templates_goes_class_by_class_and_leaves_other_braces():
    assert zs.fill_templates(["图中有{}", "{}的照片{x}"], ["包", "裤子"]) == ["图中有包", "包的照片{x}", "图中有裤子", "裤子的照片{x}"]


def test_ranks_topk_and_accuracy_match_a_sort():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 4, size=(50, 7)).astype(np.float32)  # many exact ties
    labels = rng.integers(0, 7, size=50)
    ranks = zs.true_class_ranks(scores, labels)
    for row, label, rank in zip(scores, labels, ranks):
        assert rank == sum(s > row[label] for s in row)  # ties count in the image's favour
    order = zs.topk_indices(scores, 3)
    for row, top in zip(scores, order):
        reference = sorted(range(7), key=lambda c: (-row[c], c))[:3]
        assert list(top) == reference
    accuracy = zs.topk_accuracy(ranks, ks=(1, 5))
    assert accuracy == {"top1": np.mean(ranks < 1), "top5": np.mean(ranks < 5)}
    assert zs.topk_indices(scores, 99).shape == (50, 7)


def test_confusion_per_class_and_most_confused():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    preds = np.array([0, 1, 1, 1, 0, 2, 0, 0, 1])
    confusion = zs.confusion_matrix(labels, preds, 4)
    expected = np.zeros((4, 4), int)
    for t, p in zip(labels, preds):
        expected[t, p] += 1
    np.testing.assert_array_equal(confusion, expected)
    ranks = (preds != labels).astype(int) * 3  # wrong ones at rank 3: top-5 all right
    rows = zs.per_class(confusion, ranks, labels)
    assert rows[0] == {"images": 3, "top1": 1 / 3, "top5": 1.0, "precision": 1 / 4}  # class 0 predicted 4 times
    assert rows[2]["top1"] == 0.25 and rows[2]["precision"] == 1.0
    assert rows[3] == {"images": 0, "top1": None, "top5": None, "precision": None}
    # (true, predicted, count, share): 2->0 twice first; 0->1 twice next (ties by index); then the ones.
    assert zs.most_confused(confusion, 3) == [(0, 1, 2, 2 / 3), (2, 0, 2, 0.5), (1, 0, 1, 0.5)]


def test_report_on_a_hand_example():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.1, 0.8, 0.1], [0.6, 0.5, 0.4]])
    report = zs.zeroshot_report(scores, [0, 2, 0, 1], ["a", "b", "c"], n_confused=5)
    assert (report["images"], report["classes"], report["top1"], report["top5"]) == (4, 3, 0.5, 1.0)
    assert report["mean_per_class_top1"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert [row["class"] for row in report["per_class"]] == ["a", "b", "c"]
    assert report["most_confused"] == [
        {"true": "a", "predicted": "b", "count": 1, "share_of_true": 0.5},
        {"true": "b", "predicted": "a", "count": 1, "share_of_true": 1.0},
    ]
    text = zs.format_report(report)
    assert "top-1 50.0%" in text and "| b | 1 | 0.0 | 100.0 | 0.0 |" in text
    with pytest.raises(ValueError, match="scores of shape"):
        zs.zeroshot_report(scores, [0, 1], ["a", "b", "c"])


def test_softmax_and_tag_selection():
    logits = np.array([[1.0, 3.0, 2.0, 3.0], [0.0, 0.0, 10.0, 0.0]])
    reference = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    probs = zs.softmax(logits)
    np.testing.assert_allclose(probs, reference)
    assert zs.select_tags(probs, top_k=2) == [[1, 3], [2, 0]]
    assert zs.select_tags(probs, threshold=0.1) == [[1, 3, 2], [2]]  # 0.40, 0.40, 0.15 (0.05 out)
    assert zs.select_tags(probs, top_k=2, threshold=0.1) == [[1, 3], [2]]
    assert zs.select_tags(probs, threshold=0.999) == [[], [2]]  # 0.99986
    with pytest.raises(ValueError):
        zs.select_tags(probs)


def test_tag_precision_recall():
    scores = zs.tag_precision_recall([["a", "b"], ["c"], []], [["a"], ["c", "d"], ["e"]])
    assert (scores["hits"], scores["predicted"], scores["true"]) == (2, 3, 4)
    assert scores["precision"] == pytest.approx(2 / 3) and scores["recall"] == 0.5
    assert scores["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    with pytest.raises(ValueError):
        zs.tag_precision_recall([["a"]], [])


# ----------------------------------------------------------------------------- files


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_class_names_with_and_without_ids(tmp_path):
    plain = read_class_names(write(tmp_path / "a.txt", "包\n\n裤子\n"))
    assert plain.names == plain.labels == ("包", "裤子") and plain.lines == (1, 3)
    with_ids = read_class_names(write(tmp_path / "b.txt", "\ufeff7\t一个包\n9\t一条裤子\r\n"))
    assert with_ids.names == ("一个包", "一条裤子") and with_ids.labels == ("7", "9") and with_ids.index == {"7": 0, "9": 1}


@pytest.mark.parametrize(
    "text, line, reason",
    [
        ("包\n1\t裤子\n", 2, "mixed lines"),
        ("1\t包\n\t裤子\n", 2, "empty class id"),
        ("1\t包\n2\t \n", 2, "empty class name"),
        ("包\n裤子\n包\n", 3, "repeated class name 'a' (first on line 1)".replace("'a'", "'包'")),
        ("1\t包\t多\n", 1, "wrong column count"),
        ("\n\n", None, "no classes"),
    ],
)
def test_bad_class_files_name_the_line(tmp_path, text, line, reason):
    path = write(tmp_path / "classes.txt", text)
    with pytest.raises(DataError) as err:
        read_class_names(path)
    assert err.value.line == line and reason in str(err.value) and str(path) in str(err.value)


def test_templates_default_and_bad(tmp_path):
    default = read_templates()
    assert len(default) >= 10 and all(t.count("{}") == 1 for t in default)
    assert read_templates(write(tmp_path / "t.txt", "图中有{}\n\n{}的照片\n")) == ("图中有{}", "{}的照片")
    for text, line in (("图中有{}\n没有槽\n", 2), ("{}和{}\n", 1)):
        with pytest.raises(DataError, match=r"t2\.txt:%d: a template needs exactly one" % line):
            read_templates(write(tmp_path / "t2.txt", text))


def image_line(image_id, colour="红色", shape="方块"):
    return f"{image_id}\t{jpeg_b64(scene(colour, shape))}\n"


def test_labelled_images_read_and_bad_lines_are_located(tmp_path):
    images = write(tmp_path / "imgs.tsv", image_line("a") + image_line("b", "蓝色") + image_line("c"))
    labels = write(tmp_path / "labels.tsv", "b\t蓝\na\t红\n")
    records = list(iter_labelled_images(images, labels, SkipCounter()))
    assert [(r.image_id, r.label, r.where, r.image_where) for r in records] == [
        ("b", "蓝", f"{labels}:1", f"{images}:2"),
        ("a", "红", f"{labels}:2", f"{images}:1"),
    ]
    assert decode_image_bytes(records[0].image, records[0].image_where).shape == (32, 32, 3)
    bad = write(tmp_path / "bad.tsv", "a\t红\nzz\t红\na\t蓝\nb\n c \t\n")
    counter = SkipCounter("skip")
    assert [r.image_id for r in iter_labelled_images(images, bad, counter)] == ["a"]
    assert counter.skipped == {
        f"{bad}:2": f"unknown image id: 'zz' is not in {images}",
        f"{bad}:3": "repeated image id: 'a' is labelled on line 1 already",
        f"{bad}:4": "wrong column count: found 1, expected 2 (image_id, label)",
        f"{bad}:5": "empty label",
    }


# ----------------------------------------------------------------------------- commands end to end


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random model's config and weights, labelled coloured shapes, their classes, and a pairs TSV."""
    root = tmp_path_factory.mktemp("zeroshot")
    config_path = write_train_config(root, write_pairs_tsv(root / "pairs.tsv", 12, seed=4))
    config = load_config(str(config_path))
    paddle.seed(0)
    model = build_model(config["Arch"])
    weights = root / "tiny.pdparams"
    paddle.save(model.state_dict(), str(weights))
    rng = np.random.default_rng(5)
    kinds = [(list(COLOURS)[rng.integers(len(COLOURS))], SHAPES[rng.integers(2)]) for _ in range(10)]
    write(root / "imgs.tsv", "".join(image_line(f"i{n}", c, s) for n, (c, s) in enumerate(kinds)))
    write(root / "labels.tsv", "".join(f"i{n}\t{c}{s}\n" for n, (c, s) in enumerate(kinds)))
    names = [f"{c}{s}" for c in COLOURS for s in SHAPES]
    write(root / "classes.txt", "".join(f"{n}\t一个{n[:2]}的{n[2:]}\n" for n in names))
    write(root / "templates.txt", "图中有{}\n一张{}的图片\n")
    return {"root": root, "config": str(config_path), "weights": str(weights), "kinds": kinds, "names": names}


def reference_scores(tiny, images_b64, class_prompts):
    """Scores computed directly from the model, without any of the zero-shot code."""
    config = load_config(tiny["config"])
    model = build_model(config["Arch"])
    model.set_state_dict(paddle.load(tiny["weights"]))
    model.eval()
    transform = EvalTransform.from_config(config["Preprocess"])
    pixels = np.stack([transform(decode_image_bytes(base64.b64decode(b), "x")) for b in images_b64])
    tokenizer = build_tokenizer(config)
    with paddle.no_grad():
        image = model.encode_image(paddle.to_tensor(pixels)).numpy()
        classes = []
        for prompts in class_prompts:
            emb = model.encode_text(paddle.to_tensor(tokenizer.encode(prompts))).numpy()
            emb /= np.linalg.norm(emb, axis=1, keepdims=True)
            mean = emb.mean(axis=0)
            classes.append(mean / np.linalg.norm(mean))
        scale = float(model.logit_scale())
    return image @ np.array(classes).T, scale


def model_args(tiny):
    return ["-c", tiny["config"], "--weights", tiny["weights"], "--templates", str(tiny["root"] / "templates.txt"), "--num-workers", "0"]


def test_eval_zeroshot_end_to_end(tiny, capsys):
    root = tiny["root"]
    out = root / "report.json"
    argv = model_args(tiny) + ["--images", str(root / "imgs.tsv"), "--labels", str(root / "labels.tsv"),
                               "--classes", str(root / "classes.txt"), "--json", str(out), "--batch-size", "3"]
    assert cli.run_command("eval_zeroshot", argv) == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    images = [line.split("\t")[1] for line in (root / "imgs.tsv").read_text(encoding="utf-8").splitlines()]
    prompts = [[f"图中有一个{n[:2]}的{n[2:]}", f"一张一个{n[:2]}的{n[2:]}的图片"] for n in tiny["names"]]
    scores, _ = reference_scores(tiny, images, prompts)
    labels = [tiny["names"].index(c + s) for c, s in tiny["kinds"]]
    ranks = np.array([(row > row[label] + 1e-6).sum() for row, label in zip(scores, labels)])
    assert report["images"] == 10 and report["classes"] == 8 and report["templates"] == 2
    assert report["top1"] == np.mean(ranks < 1) and report["top5"] == np.mean(ranks < 5)
    assert sum(row["images"] for row in report["per_class"]) == 10
    assert "zero-shot: 10 images, 8 classes" in capsys.readouterr().out


def test_make_tags_round_trips_through_the_official_reader(tiny, capsys):
    root = tiny["root"]
    out = root / "tagged.tsv"
    argv = model_args(tiny) + ["--data", str(root / "pairs.tsv"), "--vocab", str(root / "classes.txt"),
                               "--top-k", "2", "--output", str(out), "--evaluate", "--batch-size", "5"]
    assert cli.run_command("make_tags", argv) == 0
    source = list(iter_official_tsv(root / "pairs.tsv", SkipCounter()))
    tagged = list(iter_official_tsv(out, SkipCounter()))
    assert [(r.text, r.image_id, r.image) for r in tagged] == [(r.text, r.image_id, r.image) for r in source]
    prompts = [[f"图中有一个{n[:2]}的{n[2:]}", f"一张一个{n[:2]}的{n[2:]}的图片"] for n in tiny["names"]]
    scores, scale = reference_scores(tiny, [base64.b64encode(r.image).decode() for r in source], prompts)
    for record, row in zip(tagged, scores):
        expected = [tiny["names"][i] for i in np.argsort(-row, kind="stable")[:2]]
        assert list(record.tags) == expected
    printed = capsys.readouterr().out
    assert "tagged 12 images" in printed and "against the input's tags: precision" in printed


def test_make_tags_with_a_paddleclas_classifier(tiny, tmp_path, capsys):
    from ernievil2.data.image_ops import EvalTransform
    from ernievil2.models.cnn import PaddleClasTower

    root = tiny["root"]
    paddle.seed(1)
    net = PaddleClasTower("MobileNetV3_small_x0_35", out_dim=len(tiny["names"])).net
    net.eval()
    weights = tmp_path / "mobilenet.pdparams"
    paddle.save(net.state_dict(), str(weights))
    out = tmp_path / "tagged.tsv"
    argv = ["--paddleclas", "MobileNetV3_small_x0_35", "--paddleclas-weights", str(weights), "--image-size", "32", "--resize-short", "32",
            "--data", str(root / "pairs.tsv"), "--vocab", str(root / "classes.txt"), "--top-k", "3", "--threshold", "0.05", "--output", str(out)]
    assert cli.run_command("make_tags", argv) == 0
    source = list(iter_official_tsv(root / "pairs.tsv", SkipCounter()))
    tagged = list(iter_official_tsv(out, SkipCounter()))
    transform = EvalTransform(32, 32)
    pixels = np.stack([transform(decode_image_bytes(r.image, r.where)) for r in source])
    with paddle.no_grad():
        logits = net(paddle.to_tensor(pixels)).numpy().astype(np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    for record, row in zip(tagged, probs):
        expected = [tiny["names"][i] for i in np.argsort(-row, kind="stable")[:3] if row[i] >= 0.05]
        assert list(record.tags) == expected
    # A vocabulary of another size than the classifier: the error says why.
    short = write(tmp_path / "short.txt", "红色方块\n蓝色方块\n")
    argv[argv.index("--vocab") + 1] = str(short)
    assert cli.run_command("make_tags", argv) == 2
    assert "built with 2 classes: one a line of the vocabulary" in capsys.readouterr().err


def run_tool(name, *args):
    return subprocess.run([sys.executable, str(REPO / "tools" / f"{name}.py"), *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def test_bad_inputs_are_one_line_errors_naming_file_and_line(tiny, tmp_path, capsys):
    root = tiny["root"]
    bad_labels = write(tmp_path / "labels.tsv", "i0\t红色方块\ni1\t紫色方块\n")
    argv = model_args(tiny) + ["--images", str(root / "imgs.tsv"), "--labels", str(bad_labels), "--classes", str(root / "classes.txt")]
    assert cli.run_command("eval_zeroshot", argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {bad_labels}:2: unknown label: '紫色方块' is not a class id of {root / 'classes.txt'}"]
    bad_vocab = write(tmp_path / "vocab.txt", "红色方块\n红色,蓝色\n")
    argv = model_args(tiny) + ["--data", str(root / "pairs.tsv"), "--vocab", str(bad_vocab), "--top-k", "1", "--output", str(tmp_path / "o.tsv")]
    assert cli.run_command("make_tags", argv) == 2
    assert f"error: {bad_vocab}:2: tag '红色,蓝色' holds a tag separator" in capsys.readouterr().err
    bad_templates = write(tmp_path / "t.txt", "图中有{}\n没有槽\n")
    result = run_tool("make_tags", "-c", tiny["config"], "--weights", tiny["weights"], "--data", root / "pairs.tsv",
                      "--vocab", root / "classes.txt", "--templates", bad_templates, "--threshold", "0.5", "--output", tmp_path / "o.tsv")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {bad_templates}:2: a template needs exactly one {{}} for the class name, found 0: '没有槽'"
    ]
    assert not (tmp_path / "o.tsv").exists()


# ----------------------------------------------------------------------------- config and trainer


def test_eval_zeroshot_config_is_checked_at_load(tiny, tmp_path):
    with pytest.raises(ConfigError, match=r"Eval\.zeroshot.*unknown key 'clases'"):
        load_config(tiny["config"], ["Eval.zeroshot={images: a.tsv, labels: b.tsv, clases: c.txt}"])
    with pytest.raises(ConfigError, match=r"Eval\.zeroshot.*missing key 'classes'"):
        load_config(tiny["config"], ["Eval.zeroshot={images: a.tsv, labels: b.tsv}"])
    config = load_config(tiny["config"], ["Eval.zeroshot={images: a.tsv, labels: b.tsv, classes: c.txt}"])
    assert config["Eval"]["zeroshot"]["classes"] == "c.txt"


def test_trainer_evaluates_zeroshot_without_a_retrieval_set(tiny, tmp_path):
    from ernievil2.engine.build import build_trainer

    root = tiny["root"]
    spec = f"{{images: {root / 'imgs.tsv'}, labels: {root / 'labels.tsv'}, classes: {root / 'classes.txt'}}}"
    config = load_config(tiny["config"], [f"Global.output_dir={tmp_path / 'out'}", "Train.max_steps=2", f"Eval.zeroshot={spec}"])
    metrics = build_trainer(config).train()
    assert set(metrics) == {"zeroshot"} and metrics["zeroshot"]["images"] == 10
    written = json.loads((tmp_path / "out" / "eval_metrics.json").read_text(encoding="utf-8"))
    assert written["zeroshot"]["top1"] == metrics["zeroshot"]["top1"]
    assert "zero-shot: 10 images" in (tmp_path / "out" / "train.log").read_text(encoding="utf-8")
    (curve,) = [json.loads(line) for line in (tmp_path / "out" / "eval_history.jsonl").read_text(encoding="utf-8").splitlines()]
    assert curve["step"] == 2 and curve["zeroshot"]["top1"] == metrics["zeroshot"]["top1"]
