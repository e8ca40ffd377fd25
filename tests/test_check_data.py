"""ernievil2-check-data: a corpus read through as training reads it, every image decoded, and a report."""
import base64
import json
import os
import subprocess
import sys

import cv2
import numpy as np

from ernievil2.config import default_config
from ernievil2.data.check import check_corpus, percentiles
from ernievil2.data.tokenizer import build_tokenizer
from tests.conftest import REPO
from tests.helpers import jpeg_b64, scene, write_pairs_tsv

TOOL = REPO / "tools" / "check_data.py"


def run_tool(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True, env=env, timeout=300)
    return result.returncode, result.stdout, result.stderr


def cut_jpeg_b64():
    ok, data = cv2.imencode(".jpg", np.full((40, 40, 3), 128, np.uint8))
    assert ok
    return base64.b64encode(data.tobytes()[:-30]).decode()


def flawed_tsv(tmp_path):
    """Six lines: two good, a cut-off JPEG (line 3), a wrong column count (line 4),
    the bytes of img0 again under id dup (line 5), img0's caption again with a 60-character text (line 6)."""
    red, blue = jpeg_b64(scene("红色", "方块", 40)), jpeg_b64(scene("蓝色", "圆形", 56))
    lines = [
        f"一个红色的方块\timg0\t{red}",
        f"一个蓝色的圆形\timg1\t{blue}",
        f"一张坏掉的图片\timg2\t{cut_jpeg_b64()}",
        "只有一列",
        f"又一个红色的方块\tdup\t{red}",
        f"一个红色的方块\timg0\t{red}",
        f"{'长' * 60}\timg1\t{blue}",
    ]
    path = tmp_path / "pairs.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_percentiles_are_values_that_occurred():
    assert percentiles([5, 1, 3, 2, 4]) == {50: 3, 90: 5, 99: 5, 100: 5}
    assert percentiles([7]) == {50: 7, 90: 7, 99: 7, 100: 7}
    assert percentiles([]) == {}


def test_report_counts_every_flaw(tmp_path):
    path = flawed_tsv(tmp_path)
    report = check_corpus([{"format": "official_tsv", "path": str(path)}], build_tokenizer(default_config()))
    assert report.records == 6  # the line with one column is not a record
    assert set(report.counter.skipped) == {f"{path}:3", f"{path}:4"}
    assert "truncated JPEG" in report.counter.skipped[f"{path}:3"]
    assert report.duplicate_images == {"dup": "img0"}
    assert report.duplicate_captions == 1
    assert sorted(report.sizes) == [(40, 40), (40, 40), (56, 56)]  # img0, dup, img1 decoded once each
    assert report.cut == 1 and max(report.caption_tokens) == 62


def test_tool_exit_code_and_report_lines(tmp_path):
    path = flawed_tsv(tmp_path)
    listing = tmp_path / "bad.tsv"
    code, out, err = run_tool("--data", path, "--num-workers", "2", "--report", listing)
    assert code == 1, err
    assert "records: 6 read; images: 3 decoded" in out
    assert "bad records: 2" in out
    assert f"{path}:3: truncated JPEG" in out and f"{path}:4: " in out
    assert "max_len 48: 1 of 6 captions would be cut" in out
    assert "1 images whose bytes repeat another id's (dup = img0); 1 captions repeated" in out
    assert "width 40-56" in out
    assert f"{path}:3\t" in listing.read_text(encoding="utf-8")


def test_a_clean_corpus_exits_0_in_every_format(tmp_path):
    tsv = write_pairs_tsv(tmp_path / "clean.tsv", 6)
    code, out, err = run_tool("--data", tsv, "--num-workers", "0")
    assert code == 0, err
    assert "bad records: none" in out and "records: 6 read" in out
    folder = tmp_path / "imgs"
    folder.mkdir()
    rows = []
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.jpg"), scene("绿色", "圆形", 30 + i))
        rows.append(json.dumps({"text": f"第{i}张", "image": f"imgs/{i}.jpg"}, ensure_ascii=False))
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("\n".join(rows) + "\n", encoding="utf-8")
    code, out, err = run_tool("--data", jsonl, "--format", "jsonl_folder")
    assert code == 0, err
    assert "records: 3 read; images: 3 decoded" in out and "width 30-32" in out


def test_a_config_checks_its_training_data_with_its_tokenizer(tmp_path):
    tsv = write_pairs_tsv(tmp_path / "train.tsv", 4)
    config = tmp_path / "c.yaml"
    config.write_text(
        f"_base_: {REPO / 'configs' / 'ernievil2_base_vit16.yaml'}\n"
        f"Data: {{train: {{format: official_tsv, path: {tsv}}}, num_workers: 0}}\nTokenizer: {{max_len: 6}}\n",
        encoding="utf-8",
    )
    code, out, err = run_tool("-c", config)
    assert code == 0, err
    assert "records: 4 read" in out and "max_len 6: 4 of 4 captions would be cut" in out


def test_a_missing_file_is_one_error_line(tmp_path):
    code, out, err = run_tool("--data", tmp_path / "none.tsv")
    assert code == 2 and err.startswith("error: ") and "none.tsv" in err and "Traceback" not in err
