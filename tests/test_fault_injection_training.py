"""Fault injection, run level: every user mistake and environment fault of a training run ends as it should.

Each case of ``CASES`` runs ``tools/train.py`` with one fault and checks the
outcome: exit code 2, one ``error:`` line naming what and where (no
traceback), no process left behind, no checkpoint written (so none half
written). The faults a test cannot make for real on every machine (a full
disk, a read-only file system) are raised where the code meets them, in
process. The data faults of single records are in test_fault_injection.py;
a changed config on resume in test_engine.py; a slow rank 0 under gloo in
test_engine_distributed.py.
"""
import base64
import errno
import os
import subprocess
import sys
import uuid

import paddle
import pytest

from ernievil2.registry import ConfigError
from tests.conftest import REPO
from tests.helpers import processes_tagged, write_pairs_tsv, write_train_config
from tests.test_fault_injection import live_children

pytestmark = pytest.mark.timeout(300)


def cut_images(path, lines):
    """The TSV at ``path`` with the JPEG of each given 0-based line cut short (a truncated file)."""
    rows = path.read_text(encoding="utf-8").splitlines()
    for n in lines:
        text, image_id, data, tags = rows[n].split("\t")
        rows[n] = "\t".join([text, image_id, base64.b64encode(base64.b64decode(data)[:-40]).decode("ascii"), tags])
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def spec(path):
    return f"{{format: official_tsv, path: {path}}}"


# name -> (overrides given the case's folder, words the error line must hold)
CASES = {
    "empty data file": (lambda d: [f"Data.train={spec((d / 'e.tsv').touch() or d / 'e.tsv')}"], ["Data.train", "e.tsv is empty"]),
    "data smaller than one batch": (
        lambda d: [f"Data.train={spec(write_pairs_tsv(d / 's.tsv', 3))}"], ["s.tsv", "no full batch of 4"]),
    "every record bad under skip": (
        lambda d: [f"Data.train={spec(cut_images(write_pairs_tsv(d / 'b.tsv', 6), range(6)))}", "Data.on_error=skip"],
        ["no full batch of 4", "skipped 6 bad records", "b.tsv", "truncated JPEG: 6"]),
    "no training data": (lambda d: ["Data.train=null"], ["Data.train: not given"]),
    "output path is a file": (
        lambda d: [f"Global.output_dir={(d / 'f').touch() or d / 'f'}"], ["Global.output_dir", "is a file, not a folder"]),
    "output path below a file": (
        lambda d: [f"Global.output_dir={(d / 'f').touch() or d / 'f' / 'out'}"], ["Global.output_dir", "Not a directory"]),
    "missing validation file": (lambda d: [f"Data.val={spec(d / 'nope.tsv')}"], ["Data.val", "not found", "nope.tsv"]),
    "a folder as a data file": (
        lambda d: [f"Data.train={spec((d / 'dir').mkdir() or d / 'dir')}"], ["Data.train", "is a folder, not a file"]),
    "missing zero-shot file": (
        lambda d: [f"Eval.zeroshot={{images: {d / 'i.tsv'}, labels: {d / 'l.tsv'}, classes: {d / 'c.txt'}}}"],
        ["Eval.zeroshot.images", "not found"]),
    "missing pretrained weights": (lambda d: [f"Global.pretrained={d / 'w.pdparams'}"], ["Global.pretrained", "not found"]),
    "negative batch size by -o": (lambda d: ["Train.batch_size=-2"], ["override -o Train.batch_size=-2", "must be > 0"]),
}


def run_train(config, overrides, tag):
    command = [sys.executable, "tools/train.py", "-c", str(config)] + [a for o in overrides for a in ("-o", o)]
    env = dict(os.environ, FAULT_INJECTION_RUN=tag, PYTHONWARNINGS="ignore")
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def train_tsv(tmp_path_factory):
    return write_pairs_tsv(tmp_path_factory.mktemp("data") / "train.tsv", 12)


def assert_one_error_line(code, stderr, words):
    assert code == 2, stderr[-3000:]
    assert "Traceback" not in stderr, stderr
    [line] = [text for text in stderr.splitlines() if text.startswith("error: ")]
    assert all(word in line for word in words), (words, line)


@pytest.mark.parametrize("case", list(CASES))
def test_a_mistake_is_one_error_line_and_exit_code_2(tmp_path, train_tsv, case, capsys):
    """In process, as ``tools/train.py`` runs it (one Paddle start for all the cases)."""
    from ernievil2.cli import run_command

    make_overrides, words = CASES[case]
    config = write_train_config(tmp_path, train_tsv, Train={"max_steps": 2, "save_every": 1})
    code = run_command("train", ["-c", str(config)] + [a for o in make_overrides(tmp_path) for a in ("-o", o)])
    assert_one_error_line(code, capsys.readouterr().err, words)
    assert not live_children()
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_no_full_batch_through_the_tool_with_decode_workers_leaves_no_process(tmp_path):
    data = cut_images(write_pairs_tsv(tmp_path / "b.tsv", 6), range(3))
    config = write_train_config(tmp_path, data, Data={"on_error": "skip", "num_workers": 2})
    tag = uuid.uuid4().hex
    result = run_train(config, [], tag)
    assert_one_error_line(result.returncode, result.stderr, ["b.tsv", "no full batch of 4", "skipped 3 bad records"])
    assert not processes_tagged("FAULT_INJECTION_RUN", tag)
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_a_small_corpus_with_one_bad_image_trains_under_skip(tmp_path):
    """5 good records and 1 truncated JPEG at batch 4: the epoch's last records fill the batch."""
    data = cut_images(write_pairs_tsv(tmp_path / "t.tsv", 6), [1])
    config = write_train_config(tmp_path, data, Data={"on_error": "skip", "shuffle_buffer": 0}, Train={"max_steps": 2, "save_every": 0})
    result = run_train(config, [], uuid.uuid4().hex)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipped 1 bad records" in result.stdout and sorted(os.listdir(tmp_path / "out" / "checkpoints")) == ["latest", "step_000002"]


# --- in process: faults of the machine ------------------------------------------------


@pytest.fixture
def tiny_run(tmp_path):
    """A tiny model and its optimizer, as a training config builds them."""
    from ernievil2.config import load_config
    from ernievil2.engine.optim import build_optimizer
    from ernievil2.models import build_model

    config = load_config(str(write_train_config(tmp_path, "unused.tsv")))
    paddle.seed(0)
    model = build_model(config["Arch"])
    return model, build_optimizer(model, config["Optimizer"])


def test_a_full_disk_during_a_save_is_a_clear_error_and_leaves_no_temporary_folder(tmp_path, tiny_run, monkeypatch):
    from ernievil2.checkpoint import training
    from ernievil2.checkpoint.state import CheckpointWriteError

    model, optimizer = tiny_run
    training.save_checkpoint(str(tmp_path), 1, model, optimizer, {}, {"step": 1})
    real_save = paddle.save

    def fills_the_disk(obj, path):
        if path.endswith("optimizer.pdopt"):
            with open(path, "wb") as f:
                f.write(b"half")
            raise OSError(errno.ENOSPC, "No space left on device", path)
        real_save(obj, path)

    monkeypatch.setattr(training.paddle, "save", fills_the_disk)
    root = tmp_path / "checkpoints"
    with pytest.raises(CheckpointWriteError) as info:
        training.save_checkpoint(str(tmp_path), 2, model, optimizer, {}, {"step": 2})
    assert f"no space left on the disk of {root} for checkpoint step 2: it needs about " in str(info.value)
    assert sorted(os.listdir(root)) == ["latest", "step_000001"]
    assert (root / "latest").read_text() == "step_000001\n"


def test_training_refuses_to_start_without_room_for_one_checkpoint(tmp_path, tiny_run):
    from ernievil2.checkpoint.state import CheckpointWriteError
    from ernievil2.checkpoint.training import check_free_space, estimate_checkpoint_bytes, save_checkpoint

    model, optimizer = tiny_run
    estimate = estimate_checkpoint_bytes(model, {})
    # The estimate is made before the optimizer has state; the first real checkpoint has it.
    out = model(paddle.rand([2, 3, 32, 32]), paddle.randint(1, 50, [2, 8]))
    (out["image"].mean() + out["text"].mean() + out["logit_scale"]).backward()
    optimizer.step()
    folder = save_checkpoint(str(tmp_path), 1, model, optimizer, {}, {"step": 1})
    written = sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder))
    assert 0.95 < estimate / written < 1.05, (estimate, written)
    check_free_space(str(tmp_path), estimate)
    with pytest.raises(CheckpointWriteError, match=r"free on its disk, one checkpoint needs about 95367431640625.0 MiB"):
        check_free_space(str(tmp_path), 10**20)


def test_a_read_only_output_folder_is_named_before_anything_is_built(tmp_path, monkeypatch):
    from ernievil2.engine import build

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(build.tempfile, "mkstemp", read_only)
    with pytest.raises(ConfigError, match="Global.output_dir: cannot write into .*out: Read-only file system"):
        build.prepare_output_dir(str(tmp_path / "out"), "c.yaml")


def test_checkpoints_and_atomic_files_follow_the_umask(tmp_path, tiny_run):
    from ernievil2.checkpoint.training import save_checkpoint
    from ernievil2.files import atomic_text_file

    model, optimizer = tiny_run
    old = os.umask(0o022)
    try:
        folder = save_checkpoint(str(tmp_path), 1, model, optimizer, {}, {"step": 1})
        with atomic_text_file(str(tmp_path / "deploy.yaml")) as f:
            f.write("x: 1\n")
    finally:
        os.umask(old)
    assert oct(os.stat(folder).st_mode & 0o777) == oct(0o755)
    assert oct(os.stat(tmp_path / "deploy.yaml").st_mode & 0o777) == oct(0o644)
    assert oct(os.stat(tmp_path / "checkpoints" / "latest").st_mode & 0o777) == oct(0o644)


def test_weights_can_be_named_by_the_latest_pointer(tmp_path, tiny_run):
    from ernievil2.checkpoint import read_model_state
    from ernievil2.checkpoint.training import save_checkpoint

    model, optimizer = tiny_run
    save_checkpoint(str(tmp_path), 1, model, optimizer, {}, {"step": 1})
    state = read_model_state(str(tmp_path / "checkpoints" / "latest"))
    assert sorted(state) == sorted(model.state_dict())
