"""Fault injection: a corpus with every kind of bad record the docs list, through the pipeline and the tools.

For each fault, with 0, 1 and 2 decode workers, under ``raise`` and ``skip``:
- ``raise`` stops with the fault's ``file:line`` (in-process, every fault; through
  the tools, one fault per run);
- ``skip`` leaves out exactly the injected faults, lists each once in the skip
  report, counts the long caption as truncated (kept), and keeps every other
  record with its own text and image, checked by embedding each one alone;
- no process outlives its run;
- the whole module stays under ``SUITE_SECONDS``.
"""
import base64
import os
import subprocess
import sys
import time
import uuid

import cv2
import numpy as np
import paddle
import pytest

from ernievil2.config import load_config
from ernievil2.data.augment import TrainTransform
from ernievil2.data.errors import TRUNCATED, DataError
from ernievil2.data.image_ops import EvalTransform
from ernievil2.data.pipeline import TrainStream
from ernievil2.data.tokenizer import ErnieTokenizer
from ernievil2.evaluation.embed import embed_split
from tests.conftest import REPO
from tests.helpers import COLOURS, SHAPES, jpeg_b64, processes_tagged, scene, write_train_config

SUITE_SECONDS = 900
# A hang (the failure this suite exists for) fails the test instead of stalling CI.
pytestmark = pytest.mark.timeout(300)
WORKERS = (0, 1, 2)
GOOD = 11  # good records besides the long caption: 12 with it, three batches of 4
BATCH = 4
MAX_LEN = 16


def b64(data):
    return base64.b64encode(data).decode("ascii")


def png_bytes(rgb):
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return data.tobytes()


def jpeg_bytes(rgb):
    return base64.b64decode(jpeg_b64(rgb))


# name -> (line bytes given (caption, image id, image rgb), reason the report must give; None = kept, truncated)
FAULTS = {
    "bad base64": (lambda t, i, rgb: f"{t}\t{i}\t@@not*base64@@{'A' * 80}".encode(), "invalid base64"),
    "not an image": (lambda t, i, rgb: f"{t}\t{i}\t{b64(b'plain text, not an image' * 4)}".encode(), "undecodable image"),
    "truncated JPEG": (lambda t, i, rgb: f"{t}\t{i}\t{b64(jpeg_bytes(rgb)[:-40])}".encode(), "truncated JPEG"),
    "truncated PNG": (lambda t, i, rgb: f"{t}\t{i}\t{b64(png_bytes(rgb)[:-20])}".encode(), "truncated PNG"),
    "wrong column count": (lambda t, i, rgb: f"{t}\t{i}".encode(), "wrong column count"),
    "empty caption": (lambda t, i, rgb: f"\t{i}\t{jpeg_b64(rgb)}".encode(), "empty text"),
    "blank line": (lambda t, i, rgb: b"", "blank line"),
    "bad UTF-8": (lambda t, i, rgb: b"\xff\xfe" + f"{t}\t{i}\t{jpeg_b64(rgb)}".encode(), "not UTF-8"),
    "tab in caption": (lambda t, i, rgb: f"{t}\t{t}\t{i}\t{jpeg_b64(rgb)}".encode(), "columns shifted"),
    "zero-byte image": (lambda t, i, rgb: f"{t}\t{i}\t".encode(), "empty base64"),
    "1x1 image": (lambda t, i, rgb: f"{t}\t{i}\t{b64(png_bytes(rgb[:1, :1]))}".encode(), "image too small"),
    "caption longer than max_len": (lambda t, i, rgb: f"{t * 6}\t{i}\t{jpeg_b64(rgb)}".encode(), None),
}
BAD = [name for name, (_, reason) in FAULTS.items() if reason]


def good_record(n):
    colour, shape = list(COLOURS)[n % len(COLOURS)], SHAPES[(n // len(COLOURS)) % len(SHAPES)]
    return f"第{n}号{colour}{shape}", f"img{n}", scene(colour, shape)


def write_corpus(path, faults):
    """Good lines with each named fault between them; returns {fault name: 1-based line}."""
    lines, where = [], {}
    for n in range(GOOD):
        text, image_id, rgb = good_record(n)
        lines.append(f"{text}\t{image_id}\t{jpeg_b64(rgb)}".encode())
        if n < len(faults):
            text, image_id, rgb = good_record(100 + n)
            lines.append(FAULTS[faults[n]][0](text, f"bad{n}", rgb))
            where[faults[n]] = len(lines)
    for name in faults[GOOD:]:
        text, image_id, rgb = good_record(200)
        lines.append(FAULTS[name][0](text, f"late-{name}", rgb))
        where[name] = len(lines)
    if "caption longer than max_len" not in faults:
        text, image_id, rgb = good_record(300)
        lines.append(FAULTS["caption longer than max_len"][0](text, "long", rgb))
        where["caption longer than max_len"] = len(lines)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return where


@pytest.fixture(scope="module", autouse=True)
def suite_clock():
    started = time.time()
    yield
    assert time.time() - started < SUITE_SECONDS, f"the fault-injection suite took {time.time() - started:.0f} s"


@pytest.fixture(scope="module")
def tokenizer():
    from ernievil2.resource_files import resolve_resource

    return ErnieTokenizer(resolve_resource("ernie-3.0-base-zh/vocab.txt"), max_len=MAX_LEN)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("faults") / "corpus.tsv"
    return path, write_corpus(path, list(FAULTS))


def live_children():
    """This process's children, except multiprocessing's resource tracker (one per interpreter, by design)."""
    import psutil

    return [p for p in psutil.Process().children(recursive=True) if "resource_tracker" not in " ".join(p.cmdline())]


def stream(path, tokenizer, workers, on_error):
    return TrainStream(
        {"format": "official_tsv", "path": str(path)}, tokenizer, TrainTransform({"image_size": 32, "resize_short": 32}),
        BATCH, seed=0, shuffle_buffer=0, num_workers=workers, on_error=on_error,
    )


# --- in process: every fault, every worker count ---------------------------------------


@pytest.mark.parametrize("workers", WORKERS)
@pytest.mark.parametrize("fault", BAD)
def test_raise_names_the_faults_line_in_the_training_stream(tmp_path, tokenizer, fault, workers):
    path = tmp_path / "one.tsv"
    line = write_corpus(path, [fault])[fault]
    s = stream(path, tokenizer, workers, "raise")
    with pytest.raises(DataError) as info:
        for _ in zip(range(3), s):
            pass
    s.close()
    assert (info.value.path, info.value.line) == (str(path), line)
    assert info.value.reason.startswith(FAULTS[fault][1])
    assert not live_children()


@pytest.mark.parametrize("workers", WORKERS)
def test_skip_in_the_training_stream_leaves_out_exactly_the_faults(corpus, tokenizer, workers):
    path, where = corpus
    s = stream(path, tokenizer, workers, "skip")
    batches = [b for _, b in zip(range(3), s)]
    s.close()
    assert not live_children()
    expected = {f"{path}:{where[name]}": FAULTS[name][1] for name in BAD}
    assert {k: v.split(":")[0] for k, v in s.counter.skipped.items()} == {k: v.split(":")[0] for k, v in expected.items()}
    assert all(s.counter.skipped[k].startswith(v) for k, v in expected.items())
    assert s.counter.truncated == {f"{path}:{where['caption longer than max_len']}"}
    # every kept record has its own caption: the text ids say which good record it is
    kept = [ids for b in batches for ids in b["text"]]
    assert len(kept) == 3 * BATCH
    captions = [tokenizer.encode([good_record(n)[0]])[0] for n in range(GOOD)]
    assert sum(any(np.array_equal(c[: len(k)], k) for c in captions) for k in kept) == GOOD


@pytest.mark.parametrize("workers", WORKERS)
@pytest.mark.parametrize("fault", BAD)
def test_raise_names_the_faults_line_when_embedding(tmp_path, tokenizer, tiny_model, fault, workers):
    path = tmp_path / "one.tsv"
    line = write_corpus(path, [fault])[fault]
    with pytest.raises(DataError) as info:
        embed_split(tiny_model, {"format": "official_tsv", "path": str(path)}, tokenizer, EVAL, 4, workers, "raise", printer=lambda m: None)
    assert (info.value.path, info.value.line) == (str(path), line)
    assert not live_children()


EVAL = EvalTransform(32, 32)


@pytest.fixture(scope="module")
def tiny_model():
    from ernievil2.models import build_model
    from tests.helpers import TINY_ARCH

    paddle.seed(0)
    model = build_model(TINY_ARCH)
    model.eval()
    return model


@pytest.mark.parametrize("workers", WORKERS)
def test_skip_when_embedding_keeps_every_good_pair_aligned(corpus, tokenizer, tiny_model, workers):
    path, where = corpus
    features, counter = embed_split(tiny_model, {"format": "official_tsv", "path": str(path)}, tokenizer, EVAL, 4, workers, "skip", printer=lambda m: None)
    assert not live_children()
    assert sorted(counter.skipped) == sorted(f"{path}:{where[name]}" for name in BAD)
    assert counter.truncated == {f"{path}:{where['caption longer than max_len']}"}
    assert len(features.text_emb) == GOOD + 1
    assert_rows_are_their_own(features, path, tiny_model, tokenizer)


def assert_rows_are_their_own(features, path, model, tokenizer):
    """Each row's text and image embeddings equal those of its own line's caption and image, embedded alone."""
    lines = path.read_bytes().split(b"\n")
    for row, where in enumerate(features.text_ids):
        line = int(str(where).rpartition(":")[2])
        text, _, data = lines[line - 1].decode("utf-8").split("\t")[:3]
        rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        with paddle.no_grad():
            image = model.encode_image(paddle.to_tensor(EVAL(rgb)[None])).numpy()[0]
            caption = model.encode_text(paddle.to_tensor(tokenizer.encode([text]))).numpy()[0]
        np.testing.assert_allclose(features.image_emb[row], image, atol=1e-5, err_msg=f"image of {where}")
        np.testing.assert_allclose(features.text_emb[row], caption, atol=1e-5, err_msg=f"text of {where}")


# --- through the tools --------------------------------------------------------------------


def run_tool(args, tag):
    env = dict(os.environ, FAULT_INJECTION_RUN=tag, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=300)


def left_behind(tag):
    return processes_tagged("FAULT_INJECTION_RUN", tag)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus):
    """A 3-step training run on the faulty corpus (skip, 2 workers): its folder and config."""
    path, _ = corpus
    folder = tmp_path_factory.mktemp("trained")
    config = write_train_config(
        folder, path, Data={"on_error": "skip", "num_workers": 2, "shuffle_buffer": 0}, Tokenizer={"max_len": MAX_LEN},
        Train={"max_steps": 3, "batch_size": BATCH, "save_every": 0},
    )
    tag = uuid.uuid4().hex
    result = run_tool(["tools/train.py", "-c", str(config)], tag)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not left_behind(tag)
    return folder, config


@pytest.mark.parametrize("workers", WORKERS)
def test_train_skip_reports_every_fault_once(tmp_path, corpus, workers):
    path, where = corpus
    config = write_train_config(
        tmp_path, path, Data={"on_error": "skip", "num_workers": workers, "shuffle_buffer": 0}, Tokenizer={"max_len": MAX_LEN},
        Train={"max_steps": 3, "batch_size": BATCH, "save_every": 0},
    )
    tag = uuid.uuid4().hex
    result = run_tool(["tools/train.py", "-c", str(config)], tag)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not left_behind(tag)
    report = read_report(tmp_path / "out" / "skipped.tsv")
    assert {k: v for k, v in report.items() if v != TRUNCATED} == {f"{path}:{where[n]}": FAULTS[n][1] for n in BAD}
    assert report[f"{path}:{where['caption longer than max_len']}"] == TRUNCATED
    log = (tmp_path / "out" / "train.log").read_text(encoding="utf-8")
    assert f"skipped {len(BAD)} bad records" in log and "1 captions truncated" in log


def read_report(path):
    """{where: reason prefix as FAULTS names it, or TRUNCATED}."""
    rows = [line.split("\t", 1) for line in path.read_text(encoding="utf-8").splitlines()[1:]]
    prefixes = [reason for _, reason in FAULTS.values() if reason]
    return {w: r if r == TRUNCATED else next(p for p in prefixes if r.startswith(p)) for w, r in rows}


# One fault per run under raise, a different one for each (tool, workers): every fault is met by a tool.
RAISE_RUNS = [(tool, workers) for tool in ("train", "extract_features") for workers in WORKERS] + [("build_index", 0)]


@pytest.mark.parametrize("index", range(len(RAISE_RUNS)), ids=[f"{t}-{w}w" for t, w in RAISE_RUNS])
def test_tools_under_raise_exit_with_the_faults_line(tmp_path, trained, exported, index):
    tool, workers = RAISE_RUNS[index]
    fault = BAD[index % len(BAD)]
    path = tmp_path / "one.tsv"
    line = write_corpus(path, [fault])[fault]
    folder, config = trained
    args = {
        "train": ["tools/train.py", "-c", str(config), "-o", f"Data.train={{format: official_tsv, path: {path}}}",
                  "-o", "Data.on_error=raise", "-o", f"Data.num_workers={workers}", "-o", f"Global.output_dir={tmp_path / 'o'}"],
        "extract_features": ["tools/extract_features.py", "-c", str(config), "--weights", str(folder / "out"),
                             "--data", str(path), "--output", str(tmp_path / "f.npz"), "--num-workers", str(workers)],
        "build_index": ["tools/build_index.py", "--model", str(exported), "--tsv", str(path), "--output", str(tmp_path / "g")],
    }[tool]
    tag = uuid.uuid4().hex
    result = run_tool(args, tag)
    assert result.returncode == 2, (fault, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr
    assert f"{path}:{line}" in result.stderr and FAULTS[fault][1] in result.stderr
    assert not left_behind(tag)


@pytest.mark.parametrize("workers", WORKERS)
def test_extract_features_skip_keeps_good_pairs_aligned(tmp_path, corpus, trained, tokenizer, workers):
    path, where = corpus
    folder, config = trained
    output = tmp_path / "f.npz"
    tag = uuid.uuid4().hex
    result = run_tool(
        ["tools/extract_features.py", "-c", str(config), "--weights", str(folder / "out"), "--data", str(path),
         "--output", str(output), "--num-workers", str(workers), "--on-error", "skip"], tag,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert not left_behind(tag)
    report = read_report(tmp_path / "f.skipped.tsv")
    assert {k for k, v in report.items() if v != TRUNCATED} == {f"{path}:{where[n]}" for n in BAD}
    from ernievil2.checkpoint import load_pretrained
    from ernievil2.evaluation.retrieval import load_features
    from ernievil2.models import build_model

    model = build_model(load_config(str(config))["Arch"])
    load_pretrained(model, str(folder / "out"))
    model.eval()
    features = load_features(str(output))
    assert len(features.text_emb) == GOOD + 1
    assert_rows_are_their_own(features, path, model, tokenizer)


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    folder, config = trained
    out = tmp_path_factory.mktemp("export") / "model"
    result = run_tool(["tools/export_model.py", "-c", str(config), "--weights", str(folder / "out"), "--output", str(out), "--no-check"], uuid.uuid4().hex)
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def test_build_index_skip_reports_every_fault(tmp_path, corpus, exported):
    path, where = corpus
    tag = uuid.uuid4().hex
    result = run_tool(["tools/build_index.py", "--model", str(exported), "--tsv", str(path), "--output", str(tmp_path / "g"), "--on-error", "skip"], tag)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not left_behind(tag)
    report = read_report(tmp_path / "g.skipped.tsv")
    assert {k for k, v in report.items() if v != TRUNCATED} == {f"{path}:{where[n]}" for n in BAD}
    assert f"skipped {len(BAD)} bad records" in result.stdout


def test_infer_embed_images_skip_reports_every_fault(tmp_path, corpus, exported):
    path, where = corpus
    tag = uuid.uuid4().hex
    output = tmp_path / "images.npz"
    result = run_tool(["tools/infer.py", "embed-images", "--model", str(exported), "--tsv", str(path), "--output", str(output), "--on-error", "skip"], tag)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not left_behind(tag)
    report = read_report(tmp_path / "images.skipped.tsv")
    assert set(report) == {f"{path}:{where[n]}" for n in BAD}
    assert len(np.load(output)["ids"]) == GOOD + 1
