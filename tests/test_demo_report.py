"""Example queries through the exported model: printed ranking and the picture."""
import json

import pytest
from PIL import Image

from ernievil2.config import load_config
from ernievil2.demo.report import _font, demo_report, pick_queries, wrap_caption
from ernievil2.inference.export import export_model, load_model
from ernievil2.inference.predictor import ExportedModel
from tests.conftest import REPO


@pytest.fixture(scope="module")
def exported(shared_dir, tmp_path_factory):
    fixture = shared_dir / "fixtures" / "official_ernievil2_tiny"
    config = load_config(str(REPO / "configs" / "tiny_official_fixture.yaml"))
    weights = str(fixture / "model.pdparams")
    out = tmp_path_factory.mktemp("export") / "model"
    export_model(load_model(config, weights), config, weights, str(out))
    # the fixture's 20 photos in the Chinese-CLIP layout
    root = tmp_path_factory.mktemp("split")
    rows = [line.rstrip("\n").split("\t") for line in (fixture / "test.coco_cn.data").open(encoding="utf-8")]
    (root / "test_imgs.tsv").write_text("".join(f"{r[1]}\t{r[2]}\n" for r in rows), encoding="utf-8")
    (root / "test_texts.jsonl").write_text(
        "".join(json.dumps({"text_id": i, "text": r[0], "image_ids": [r[1]]}, ensure_ascii=False) + "\n" for i, r in enumerate(rows)),
        encoding="utf-8",
    )
    return ExportedModel(str(out)), root, rows


def test_report_lists_top_k_per_query_and_draws_them(exported, tmp_path):
    model, root, rows = exported
    text, png = demo_report(model, str(root), "test", str(tmp_path), queries=3, k=4)
    lines = text.splitlines()
    assert sum(line.startswith("query: ") for line in lines) == 3
    ranked = [line for line in lines if line.startswith("  ")]
    assert len(ranked) == 12
    gallery = {r[1] for r in rows}
    assert all(line.split()[2] in gallery for line in ranked)
    scores = [float(line.split("score ")[1].split()[0]) for line in ranked[:4]]
    assert scores == sorted(scores, reverse=True)
    width, height = Image.open(png).size
    assert width == 4 * 128 and height == 3 * (128 + 50)


def test_query_choice_and_caption_wrapping():
    texts = [(f"caption {i}", {str(i)}) for i in range(10)]
    assert [t for t, _ in pick_queries(texts, 3)] == ["caption 0", "caption 3", "caption 6"]
    font = _font(18)
    if font is None:
        pytest.skip("no CJK font installed (Debian fonts-wqy-microhei)")
    wrapped = wrap_caption("一条很长很长的说明" * 20, font, 200)
    assert wrapped.count("\n") == 1 and wrapped.endswith("…")
    assert all(font.getlength(line) <= 200 for line in wrapped.split("\n"))


def write_run(folder, t2i, i2t, steps, seconds):
    folder.mkdir(parents=True)
    directions = {"text2image": {"r1": t2i, "mean_recall": t2i}, "image2text": {"r1": i2t, "mean_recall": i2t}}
    metrics = {"official": {**directions, "mean": {"mean_recall": (t2i + i2t) / 2}}}
    (folder / "eval_metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    (folder / "train_summary.json").write_text(json.dumps({"steps": steps, "step_seconds": seconds}), encoding="utf-8")
    return folder


def test_compare_tables_trained_runs_against_the_first(tmp_path):
    from ernievil2.commands import demo_report as command

    single = write_run(tmp_path / "single", 0.30, 0.20, 200, 100.0)
    multi = write_run(tmp_path / "multi", 0.45, 0.30, 160, 101.4)
    lines = []
    command.print = lines.append  # the command's output, without a subprocess
    try:
        assert command.main(["--compare", f"single-view={single}", f"multi-view={multi}"]) == 0
    finally:
        del command.print
    table = lines[0].splitlines()
    assert table[2] == "| single-view | 200 | 100 | 30.00 | 20.00 | 25.00 | 1.00x |"
    assert table[3] == "| multi-view | 160 | 101 | 45.00 | 30.00 | 37.50 | 1.50x |"


def test_compare_names_a_folder_that_was_not_trained_with_evaluation(tmp_path):
    from ernievil2.demo.report import load_trained_run

    with pytest.raises(ValueError, match="no eval_metrics.json .*Data.val"):
        load_trained_run(str(tmp_path))
