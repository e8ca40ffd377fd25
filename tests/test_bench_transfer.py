"""The fine-tuning benchmark's wiring, with the trainer and the scorer stood in for (fast)."""
import json
import os

import numpy as np
import pytest

from benchmarks import bench_transfer as bench


class FakeScorer:
    """Scores a state by its one number, so a test can tell which weights were scored."""

    def score(self, state, with_val=False):
        value = float(np.asarray(state["w"]).mean())
        scores = {"target": value, "source": 100 - value, "zeroshot": 50.0, "zs_seen": 60.0, "zs_held_out": 30.0}
        return {**scores, "target_val": value + 1} if with_val else scores


@pytest.fixture
def wired(monkeypatch, tmp_path):
    """The benchmark with ``fine_tune`` recording its overrides and leaving weights = the seed + 10."""
    calls = []
    monkeypatch.setattr(bench, "REPO", str(tmp_path))
    monkeypatch.setattr(bench, "Scorer", FakeScorer)
    states = {bench.SOURCE_MODEL: {"w": np.zeros(3, dtype=np.float32)}}

    def fine_tune(out, overrides):
        calls.append(overrides)
        states[os.path.relpath(out, str(tmp_path))] = {"w": np.full(3, 10.0 + overrides["Global.seed"], dtype=np.float32)}
        with open(os.path.join(out, "train_summary.json"), "w", encoding="utf-8") as f:
            json.dump({"step_seconds": 2.0 * overrides["Train.max_steps"]}, f)

    monkeypatch.setattr(bench, "fine_tune", fine_tune)
    monkeypatch.setattr(bench, "read_state", lambda path: states[os.path.normpath(path)])
    return calls, tmp_path


def test_rows_fine_tune_the_source_at_equal_steps_with_their_own_overrides(wired, capsys):
    calls, tmp_path = wired
    out = tmp_path / "runs.json"
    bench.main(["run", "--rows", "zeroshot", "full", "lit", "scratch", "--seeds", "0", "1", "--steps", "7", "--out", str(out)])
    assert len(calls) == 6
    for overrides in calls:
        assert overrides["Train.max_steps"] == 7 and overrides["Data.val"] is None and overrides["Train.resume"] == "never"
    full, lit, scratch = calls[0], calls[2], calls[4]
    assert full["Global.pretrained"] == bench.SOURCE_MODEL and "Optimizer.freeze" not in full
    assert lit["Optimizer.freeze"] == ["image"] and lit["Global.pretrained"] == bench.SOURCE_MODEL
    assert scratch["Global.pretrained"] is None
    assert len({c["Global.output_dir"] for c in calls}) == 6  # every run its own folder
    runs = json.loads(out.read_text(encoding="utf-8"))
    assert [(r["row"], r["seed"]) for r in runs] == [("zeroshot", 0), ("full", 0), ("full", 1), ("lit", 0), ("lit", 1), ("scratch", 0), ("scratch", 1)]
    assert runs[0]["target"] == 0.0 and runs[1]["target"] == 10.0 and runs[2]["target"] == 11.0
    assert runs[1]["seconds_per_step"] == 2.0
    table = capsys.readouterr().out
    assert "| full |  | 0 1 | 7 | 10.50 ± 0.71 |" in table


def test_lr_sweep_scores_the_val_split_and_a_rerun_replaces_its_runs(wired):
    calls, tmp_path = wired
    out = tmp_path / "lr.json"
    args = ["run", "--rows", "full", "--seeds", "0", "--steps", "5", "--lrs", "1e-4", "2e-4", "--out", str(out)]
    bench.main(args)
    bench.main(args)
    assert [c["Optimizer.lr"] for c in calls] == [1e-4, 2e-4, 1e-4, 2e-4]
    runs = json.loads(out.read_text(encoding="utf-8"))
    assert [(r["lr"], r["target_val"]) for r in runs] == [(1e-4, 11.0), (2e-4, 11.0)]


def test_zero_shot_accuracy_is_split_into_seen_and_held_out_classes():
    from ernievil2.demo.fashion_scenes import CLASSES

    held_out = {CLASSES[c].noun for c in bench.HELD_OUT}
    per_class = [{"class": c.noun, "images": 10 if c.noun in held_out else 20, "top1": 0.0 if c.noun in held_out else 0.5} for c in CLASSES]
    scores = bench.class_accuracies({"top1": 0.4, "per_class": per_class})
    assert scores == {"zeroshot": 40.0, "zs_seen": 50.0, "zs_held_out": 0.0}


def test_the_corpora_split_the_ten_classes_into_seen_and_held_out():
    assert sorted(bench.SEEN + bench.HELD_OUT) == list(range(10))
    assert "--classes" in bench.CORPORA[bench.SOURCE_DATA] and "--required-classes" in bench.CORPORA[bench.TARGET_DATA]


def test_wise_row_mixes_the_source_with_the_full_rows_model_of_each_seed(wired):
    calls, tmp_path = wired
    out = tmp_path / "wise.json"
    bench.main(["run", "--rows", "full", "--seeds", "0", "1", "--steps", "5", "--out", str(out)])
    bench.main(["run", "--rows", "wise", "--seeds", "0", "1", "--steps", "5", "--alphas", "0", "0.5", "1", "--out", str(out)])
    assert len(calls) == 2  # the wise row trains nothing
    runs = {(r["row"], r["seed"]): r for r in json.loads(out.read_text(encoding="utf-8"))}
    assert runs[("wise a=0", 1)]["target"] == 0.0  # the source
    assert runs[("wise a=0.5", 0)]["target"] == 5.0 and runs[("wise a=0.5", 1)]["target"] == 5.5
    assert runs[("wise a=1", 1)]["target"] == runs[("full", 1)]["target"] == 11.0


def test_a_labelled_variant_of_a_row_trains_into_its_own_folder(wired):
    calls, tmp_path = wired
    out = tmp_path / "variants.json"
    bench.main(["run", "--rows", "distill_sim", "--seeds", "0", "--steps", "5", "--out", str(out)])
    bench.main(["run", "--rows", "distill_sim", "--distill-weight", "0.3", "--set", "Train.batch_size=64", "--label", " b64",
                "--seeds", "0", "--steps", "5", "--out", str(out)])
    assert calls[0]["Global.output_dir"] != calls[1]["Global.output_dir"]
    assert calls[1]["Train.batch_size"] == 64
    assert [t["weight"] for t in calls[1]["Loss"]["terms"] if t["name"] == "distill"] == [0.3]
    assert [r["row"] for r in json.loads(out.read_text(encoding="utf-8"))] == ["distill_sim", "distill_sim w=0.3 b64"]
