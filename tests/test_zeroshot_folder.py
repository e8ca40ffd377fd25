"""eval_zeroshot --data: a folder per class, read as the image TSV + labels + classes set is."""
import base64
import json

import cv2
import numpy as np
import pytest

from ernievil2 import cli
from ernievil2.data.classes import check_zeroshot_spec
from tests.helpers import scene
from tests.test_zeroshot import model_args, reference_scores, tiny  # noqa: F401  (tiny is a fixture)


def test_a_folder_per_class_scores_like_the_model(tiny, tmp_path, capsys):  # noqa: F811
    folder = tmp_path / "by_class"
    images = []
    for n, (colour, shape) in enumerate(tiny["kinds"]):
        (folder / f"{colour}{shape}").mkdir(parents=True, exist_ok=True)
        ok, data = cv2.imencode(".png", cv2.cvtColor(scene(colour, shape), cv2.COLOR_RGB2BGR))
        (folder / f"{colour}{shape}" / f"i{n:02d}.png").write_bytes(data.tobytes())
    names = sorted(p.name for p in folder.iterdir())
    for name in names:
        images += [base64.b64encode(p.read_bytes()).decode() for p in sorted((folder / name).iterdir())]
    labels = [names.index(name) for name in names for _ in sorted((folder / name).iterdir())]
    out = tmp_path / "report.json"
    assert cli.run_command("eval_zeroshot", model_args(tiny) + ["--data", str(folder), "--json", str(out)]) == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    scores, _ = reference_scores(tiny, images, [[f"图中有{n}", f"一张{n}的图片"] for n in names])
    ranks = np.array([(row > row[label] + 1e-6).sum() for row, label in zip(scores, labels)])
    assert report["images"] == 10 and report["classes"] == len(names)
    assert report["top1"] == np.mean(ranks < 1)
    assert f"zero-shot: 10 images, {len(names)} classes" in capsys.readouterr().out


def test_a_folder_without_class_folders_or_a_file_is_one_error(tiny, tmp_path, capsys):  # noqa: F811
    flat = tmp_path / "flat"
    flat.mkdir()
    cv2.imwrite(str(flat / "a.png"), scene("红色", "方块"))
    assert cli.run_command("eval_zeroshot", model_args(tiny) + ["--data", str(flat)]) == 2
    assert "no class folders: a zero-shot folder holds one sub-folder of images per class" in capsys.readouterr().err
    assert cli.run_command("eval_zeroshot", model_args(tiny) + ["--data", str(flat / "a.png")]) == 2
    assert "expected a folder holding a sub-folder of images per class, got a file" in capsys.readouterr().err


def test_the_spec_takes_a_folder_or_the_three_files_not_both():
    check_zeroshot_spec({"folder": "x", "templates": None})
    with pytest.raises(ValueError, match="not both"):
        check_zeroshot_spec({"folder": "x", "classes": "c.txt"})
    with pytest.raises(ValueError, match="missing key 'images'.*or 'folder'"):
        check_zeroshot_spec({"labels": "l", "classes": "c"})
