"""One --data / --format for the tools: formats recognised, and a mismatch named both ways."""
import json
import os
import subprocess
import sys

import cv2
import pytest

from ernievil2.data.sources import DataFormatError, data_spec
from tests.conftest import REPO
from tests.helpers import jpeg_b64, scene, write_pairs_tsv


def run_tool(name, *args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, str(REPO / "tools" / f"{name}.py"), *map(str, args)],
                            capture_output=True, text=True, env=env, timeout=300)
    return result.returncode, result.stdout, result.stderr


@pytest.fixture
def corpora(tmp_path):
    """The same three pictures in the three formats."""
    tsv = write_pairs_tsv(tmp_path / "pairs.tsv", 3)
    images = tmp_path / "imgs"
    images.mkdir()
    jsonl_rows, clip_images, clip_texts = [], [], []
    for i, (colour, shape) in enumerate([("红色", "方块"), ("蓝色", "圆形"), ("黄色", "方块")]):
        rgb = scene(colour, shape, 40)
        cv2.imwrite(str(images / f"{i}.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        jsonl_rows.append(json.dumps({"text": f"一个{colour}的{shape}", "image": f"imgs/{i}.jpg"}, ensure_ascii=False))
        clip_images.append(f"p{i}\t{jpeg_b64(rgb)}")
        clip_texts.append(json.dumps({"text_id": i, "text": f"一个{colour}的{shape}", "image_ids": [f"p{i}"]}, ensure_ascii=False))
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("\n".join(jsonl_rows) + "\n", encoding="utf-8")
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "test_imgs.tsv").write_text("\n".join(clip_images) + "\n", encoding="utf-8")
    (clip / "test_texts.jsonl").write_text("\n".join(clip_texts) + "\n", encoding="utf-8")
    return {"official_tsv": tsv, "jsonl_folder": jsonl, "chinese_clip": clip, "images": images}


def test_auto_recognises_the_three_formats(corpora):
    assert data_spec(str(corpora["official_tsv"])) == {"format": "official_tsv", "path": str(corpora["official_tsv"])}
    assert data_spec(str(corpora["jsonl_folder"]))["format"] == "jsonl_folder"
    assert data_spec(str(corpora["chinese_clip"])) == {"format": "chinese_clip", "root": str(corpora["chinese_clip"]), "split": "test"}
    assert data_spec(str(corpora["jsonl_folder"]), image_root="x") == {"format": "jsonl_folder", "path": str(corpora["jsonl_folder"]), "image_root": "x"}


def test_a_mismatch_names_the_format_expected_and_the_one_seen(corpora):
    with pytest.raises(DataFormatError, match=r"--format official_tsv expects a file of text <TAB> image_id <TAB> base64 "
                                              r"lines, but it looks like chinese_clip .*: pass --format chinese_clip"):
        data_spec(str(corpora["chinese_clip"]), "official_tsv")
    with pytest.raises(DataFormatError, match=r"--format jsonl_folder expects a file of JSON lines.*looks like official_tsv"):
        data_spec(str(corpora["official_tsv"]), "jsonl_folder")
    with pytest.raises(DataFormatError, match=r"cannot tell its format: it is a folder without test_texts.jsonl "
                                              r"\(holding 0.jpg, 1.jpg, 2.jpg\); expected official_tsv"):
        data_spec(str(corpora["images"]))
    with pytest.raises(FileNotFoundError, match="no such file"):
        data_spec(str(corpora["images"] / "none.tsv"))


@pytest.mark.parametrize("fmt", ["official_tsv", "jsonl_folder", "chinese_clip"])
def test_check_data_reads_each_format_without_being_told(corpora, fmt):
    code, out, err = run_tool("check_data", "--data", corpora[fmt], "--split", "test", "--num-workers", "0")
    assert code == 0, err
    assert "records: 3 read; images: 3 decoded" in out


def test_a_tool_given_the_wrong_format_says_which_it_expected_and_saw(corpora):
    code, _, err = run_tool("check_data", "--data", corpora["images"], "--num-workers", "0")
    assert code == 2 and err.startswith("error: --data") and "cannot tell its format" in err and err.count("\n") == 1
    code, _, err = run_tool("check_data", "--data", corpora["official_tsv"], "--format", "chinese_clip")
    assert code == 2 and "--format chinese_clip expects a folder" in err and "looks like official_tsv" in err


def test_build_index_reads_any_pair_format(corpora, tmp_path, shared_dir):
    from ernievil2.config import load_config
    from ernievil2.inference.export import export_model, load_model

    weights = str(shared_dir / "fixtures" / "official_ernievil2_tiny" / "model.pdparams")
    config = load_config(str(REPO / "configs" / "tiny_official_fixture.yaml"))
    export_model(load_model(config, weights), config, weights, str(tmp_path / "export"))
    for fmt in ("jsonl_folder", "chinese_clip"):
        out = tmp_path / f"index_{fmt}"
        code, stdout, err = run_tool("build_index", "--model", tmp_path / "export", "--data", corpora[fmt], "--output", out)
        assert code == 0, err
        assert "wrote 3 images and 3 captions" in stdout
        items = json.loads((out / "items.json").read_text(encoding="utf-8"))
        assert items["texts"] == ["一个红色的方块", "一个蓝色的圆形", "一个黄色的方块"]
