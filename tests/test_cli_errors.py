"""Every tool answers a user's mistake with one line naming what and where, and a non-zero exit; no traceback."""
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO
from tests.helpers import write_pairs_tsv

TINY = str(REPO / "configs" / "tiny_official_fixture.yaml")


def tool(*args):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def assert_one_line_error(result, *words):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture(scope="module")
def garbage_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "garbage.pdparams"
    path.write_bytes(b"this is not a checkpoint\n" * 10)
    return str(path)


def test_export_with_missing_weights(tmp_path):
    result = tool("tools/export_model.py", "-c", TINY, "--weights", str(tmp_path / "none.pdparams"), "--output", str(tmp_path / "e"))
    assert_one_line_error(result, "none.pdparams")


def test_export_with_garbage_weights_names_the_file(tmp_path, garbage_weights):
    result = tool("tools/export_model.py", "-c", TINY, "--weights", garbage_weights, "--output", str(tmp_path / "e"))
    assert_one_line_error(result, "garbage.pdparams", "cannot read")


def test_export_with_a_bad_override(tmp_path, garbage_weights):
    result = tool("tools/export_model.py", "-c", TINY, "-o", "Tokenizer.max_lenn=3", "--weights", garbage_weights, "--output", str(tmp_path / "e"))
    assert_one_line_error(result, "Tokenizer.max_lenn", "max_len")


def test_train_with_a_negative_learning_rate(tmp_path):
    result = tool("tools/train.py", "-c", TINY, "-o", "Optimizer.lr=-1.0")
    assert_one_line_error(result, "Optimizer.lr", "> 0")


def test_train_with_a_misspelt_data_spec_fails_before_training(tmp_path):
    result = tool("tools/train.py", "-c", TINY, "-o", "Data.val={format: official_tsv, pth: x.tsv}")
    assert_one_line_error(result, "Data.val", "pth")


def test_eval_on_an_npz_with_no_arrays(tmp_path):
    path = tmp_path / "empty.npz"
    np.savez(path)
    assert_one_line_error(tool("tools/eval_retrieval.py", str(path)), "empty.npz", "missing arrays")


def test_eval_on_official_text_with_a_non_number(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("0.1 0.2\t0.3 0.4\t0\n0.1 abc\t0.3 0.4\t1\n", encoding="utf-8")
    assert_one_line_error(tool("tools/eval_retrieval.py", str(path)), f"{path}:2", "non-number")


def test_extract_features_with_a_broken_image_under_raise_names_the_line(tmp_path, garbage_weights):
    data = write_pairs_tsv(tmp_path / "d.tsv", 3)
    lines = data.read_text(encoding="utf-8").splitlines()
    text, image_id, b64, tags = lines[1].split("\t")
    lines[1] = "\t".join([text, image_id, b64[: len(b64) // 2], tags])
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = tool(
        "tools/extract_features.py", "-c", TINY, "--weights", str(REPO / "configs"), "--data", str(data),
        "--output", str(tmp_path / "f.npz"),
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_a_ctrl_c_that_paddle_wrapped_inside_a_backward_is_an_interruption():
    from ernievil2.cli import EXIT_INTERRUPTED, run

    def main(argv):
        raise OSError("(External)\n  Error message in backward of GradNodePyLayer__Linear\n  KeyboardInterrupt: <EMPTY MESSAGE>")

    assert run(main) == EXIT_INTERRUPTED
