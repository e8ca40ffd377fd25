"""From the official data file to the official numbers, through our two CLIs."""
import subprocess
import sys

import numpy as np

from ernievil2.evaluation.retrieval import load_features
from tests.conftest import REPO


def run(*args, check=True):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=str(REPO), check=check, timeout=300)


def test_data_file_to_official_table(shared_dir, tmp_path):
    fixture = shared_dir / "fixtures" / "official_ernievil2_tiny"
    feats, txt = tmp_path / "f.npz", tmp_path / "f.txt"
    run(REPO / "tools" / "extract_features.py", "-c", REPO / "configs" / "tiny_official_fixture.yaml",
        "--weights", fixture / "model.pdparams", "--data", fixture / "test.coco_cn.data",
        "--output", feats, "--official-txt", txt, "--num-workers", "1")
    features = load_features(feats)
    np.testing.assert_allclose(features.text_emb, np.load(fixture / "text_emb.npy"), atol=1e-5)
    np.testing.assert_allclose(features.image_emb, np.load(fixture / "image_emb.npy"), atol=1e-5)
    expected = (fixture / "official_eval_output.txt").read_text(encoding="utf-8").strip().splitlines()
    for source in (feats, txt):
        table = [line for line in run(REPO / "tools" / "eval_retrieval.py", source).stdout.splitlines() if line.startswith("|")]
        assert table == expected


def test_missing_weights_is_a_clear_error(tmp_path):
    result = run(REPO / "tools" / "extract_features.py", "-c", REPO / "configs" / "tiny_official_fixture.yaml",
                 "--weights", tmp_path / "nope.pdparams", "--data", tmp_path / "x.tsv", "--output", tmp_path / "f.npz", check=False)
    assert result.returncode == 2 and "nope.pdparams" in result.stderr and "Traceback" not in result.stderr
