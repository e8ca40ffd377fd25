"""Fine-tuning a pre-trained model on a small corpus of one's own, and what it forgets.

    python -m benchmarks.bench_transfer prepare                  # the two corpora and the source model
    python -m benchmarks.bench_transfer run --rows full lit --seeds 0 1 2 --out runs/transfer.json
    python -m benchmarks.bench_transfer run --rows full --lrs 5e-5 1e-4 2e-4 5e-4 --seeds 0 --out runs/lr.json
    python -m benchmarks.bench_transfer report runs/transfer.json

No download: both corpora come from the demo generator (tools/make_demo_data.py).
- *Source*: FashionScenes scenes of 7 of the 10 garment classes with the demo's sentence
  captions; a demo-size model pre-trained on it with `make demo`'s recipe and the released
  model's 40k vocabulary (configs/demo/pretrain_full_vocab.yaml) stands in for the released model.
- *Target*: 1,000 training pairs (500 val, 2,000 test) of scenes that each hold a garment of
  the 3 held-out classes, captioned as product titles (``韩版 红色连衣裙 蓝色凉鞋``): new
  objects and new wording at once.

Every row fine-tunes the source model with configs/demo/finetune.yaml for the same number of
steps (only the row's overrides differ) and is scored on three things, official protocol:
target MeanRecall (the target test split: what the user wants), source MeanRecall (the source
test split: what must not be lost), and zero-shot top-1 over the 10 garment classes (how
general the model stays; the 7 seen and the 3 held-out classes also apart). ``--lrs`` runs
the rows at each learning rate, scored on the target val split too (that is how the rates are
tuned: on val, never on test). The ``wise`` row trains nothing: it mixes the source weights
with the ``full`` row's fine-tuned ones, (1 - alpha) * source + alpha * fine-tuned, at each
``--alphas`` (WiSE-FT), so ``full`` must have run with the same seeds and steps.
Results are merged into ``--out`` (a run of the same row, seed, steps and lr replaces the
old one) and tabled on stdout; ``report`` tables a saved file.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE_DATA = "demo_data/transfer/source"
TARGET_DATA = "demo_data/transfer/target"
# General-domain pairs a user can get besides their own (public captioned images): here 1,000 new
# scenes of the source's kind, none of them seen in pre-training, mixed into the target corpus.
REFERENCE_DATA = "demo_data/transfer/reference"
MIXED_TRAIN = "demo_data/transfer/target_and_reference.tsv"
SOURCE_MODEL = "output/transfer/source"
WORK = "output/transfer/runs"
PRETRAIN_CONFIG = "configs/demo/pretrain_full_vocab.yaml"
FINETUNE_CONFIG = "configs/demo/finetune.yaml"
# Fashion-MNIST labels: the source sees 7 classes; every target scene holds one of the other 3
# (Dress, Sandal, Bag: one garment, one shoe, one accessory, unlike any seen class in shape).
HELD_OUT = (3, 5, 8)
SEEN = tuple(c for c in range(10) if c not in HELD_OUT)
CORPORA = {
    SOURCE_DATA: ["--num-train", "10000", "--num-test", "2000", "--classes", ",".join(map(str, SEEN))],
    TARGET_DATA: [
        "--seed", "1", "--num-train", "1000", "--num-val", "500", "--num-test", "2000", "--num-zeroshot", "0",
        "--required-classes", ",".join(map(str, HELD_OUT)), "--caption-style", "title",
    ],
    REFERENCE_DATA: ["--seed", "2", "--num-train", "1000", "--num-test", "0", "--num-zeroshot", "0", "--classes", ",".join(map(str, SEEN))],
}
INTRA = [["image_v1", "text_v1", 1.0], ["image_v1", "image_v2", 0.5], ["text_v1", "text_v2", 0.5]]
# base.yaml's views: a crop of the canvas and a light blur, so that image_v2 is another look.
TWO_VIEWS = {"Augment": {"image_size": 64, "resize_short": 72, "blur": {"p": 0.5, "kernel": 3, "sigma": [0.1, 1.0]}}}
TEMPERATURE = {"init": 0.07, "learnable": True, "max_logit_scale": 100}


def loss(*terms):
    return {"Loss": {"temperature": TEMPERATURE, "terms": list(terms)}}


def info_nce(pairs):
    return {"name": "info_nce", "pairs": pairs}


PLAIN = info_nce([["image_v1", "text_v1", 1.0]])
# The rows: (overrides of configs/demo/finetune.yaml, what the row is). ``None``: not trained.
ROWS = {
    "zeroshot": (None, "the source model as it is"),
    "scratch": ({"Global.pretrained": None, "Optimizer.lr": 1.0e-3}, "from scratch on the target corpus (the demo's pre-training lr)"),
    "full": ({}, "full fine-tuning"),
    "lit": ({"Optimizer.freeze": ["image"]}, "image tower locked (LiT)"),
    "text_locked": ({"Optimizer.freeze": ["text"]}, "text tower locked"),
    "last_n": (
        {"Optimizer.image.unlocked_layers": 3, "Optimizer.text.unlocked_layers": 2},
        "the last blocks unlocked: image 2 of 4 + head, text 1 of 2 + head",
    ),
    "llrd": ({"Optimizer.layer_decay": 0.6}, "layer-wise lr decay 0.6"),
    "wise": (None, "WiSE-FT: (1 - alpha) * source + alpha * full"),
    "distill_sim": (loss(PLAIN, {"name": "distill", "mode": "similarity", "weight": 1.0}), "+ similarity distillation from the source"),
    "distill_feat": (loss(PLAIN, {"name": "distill", "mode": "feature", "weight": 1.0}), "+ feature distillation from the source"),
    "intra": ({**loss(info_nce(INTRA)), **TWO_VIEWS}, "+ intra-modal pairs (image-image, text-text 0.5)"),
    "replay": ({"Data.train": {"format": "official_tsv", "path": MIXED_TRAIN}}, "the target corpus mixed with 1,000 general-domain pairs"),
    "replay_share": (
        {"Data.replay": {"format": "official_tsv", "path": f"{REFERENCE_DATA}/train.tsv"}, "Data.replay_share": 0.5},
        "half of each batch from the 1,000 general-domain pairs (Data.replay)",
    ),
}


def flow(value):
    return json.dumps(value, ensure_ascii=False)


def prepare(args):
    """The corpora and the source model, each only when missing (both steps are idempotent)."""
    for out, flags in CORPORA.items():
        subprocess.run([sys.executable, "tools/make_demo_data.py", "--output", out, *flags], cwd=REPO, check=True)
    with open(os.path.join(REPO, MIXED_TRAIN), "w", encoding="utf-8") as mixed:
        for folder in (TARGET_DATA, REFERENCE_DATA):
            with open(os.path.join(REPO, folder, "train.tsv"), encoding="utf-8") as f:
                mixed.writelines(f)
    if os.path.isfile(os.path.join(REPO, SOURCE_MODEL, "train_summary.json")):
        print(f"{SOURCE_MODEL}: trained already")
        return
    data = {"format": "official_tsv", "path": os.path.join(SOURCE_DATA, "train.tsv")}
    subprocess.run(
        [sys.executable, "tools/train.py", "-c", PRETRAIN_CONFIG, "-o", f"Global.output_dir={SOURCE_MODEL}",
         "-o", "Train.resume=never", "-o", f"Data.train={flow(data)}", "-o", "Data.val=null"],
        cwd=REPO, check=True,
    )


def fine_tune(out, overrides):
    """Train configs/demo/finetune.yaml with ``overrides`` into ``out``."""
    cmd = [sys.executable, "tools/train.py", "-c", FINETUNE_CONFIG]
    for key, value in overrides.items():
        cmd += ["-o", f"{key}={flow(value)}"]
    with open(os.path.join(out, "bench.log"), "w", encoding="utf-8") as log:
        subprocess.run(cmd, cwd=REPO, check=True, stdout=log, stderr=subprocess.STDOUT)


def run_overrides(row_overrides, seed, steps, lr, out):
    base = {
        "Global.seed": seed,
        "Global.output_dir": out,
        "Global.pretrained": SOURCE_MODEL,
        "Train.max_steps": steps,
        "Train.save_every": 0,
        "Train.resume": "never",
        "Data.val": None,
        # The config's own replay is a row of its own: the others fine-tune on the target alone.
        "Data.replay": None,
    }
    if lr is not None:
        base["Optimizer.lr"] = lr
    return {**base, **row_overrides}


class Scorer:
    """Scores weights on the target test (and val) split, the source test split and the zero-shot set.

    One model is built (configs/demo/finetune.yaml's Arch) and loaded with each state in turn."""

    def __init__(self):
        import paddle

        from ernievil2.config import load_config
        from ernievil2.data.image_ops import EvalTransform
        from ernievil2.data.tokenizer import build_tokenizer
        from ernievil2.models import build_model

        paddle.set_device("cpu")
        self.config = load_config(os.path.join(REPO, FINETUNE_CONFIG))
        self.model = build_model(self.config["Arch"])
        self.tokenizer = build_tokenizer(self.config)
        self.transform = EvalTransform.from_config(self.config["Preprocess"])

    def _evaluate(self, val=None, zeroshot=None):
        from ernievil2.engine.trainer import make_eval_fn

        config = {**self.config, "Data": {**self.config["Data"], "val": val}, "Eval": {**self.config["Eval"], "zeroshot": zeroshot}}
        config["Global"] = {**config["Global"], "output_dir": os.path.join(REPO, WORK, ".scoring")}
        return make_eval_fn(config, self.tokenizer, self.transform, log=lambda message: None)(self.model)

    def score(self, state, with_val=False):
        from ernievil2.checkpoint import load_state_strict

        load_state_strict(self.model, state, source="scored weights")

        def split(folder, name):
            spec = {"format": "official_tsv", "path": os.path.join(REPO, folder, f"{name}.tsv")}
            return self._evaluate(val=spec)["official"]["mean"]["mean_recall"] * 100

        source = os.path.join(REPO, SOURCE_DATA)
        zeroshot = self._evaluate(zeroshot={
            "images": os.path.join(source, "zeroshot_imgs.tsv"),
            "labels": os.path.join(source, "zeroshot_garment_labels.tsv"),
            "classes": os.path.join(source, "zeroshot_garment_classes.txt"),
            "templates": os.path.join(source, "zeroshot_templates.txt"),
        })["zeroshot"]
        scores = {"target": split(TARGET_DATA, "test"), "source": split(SOURCE_DATA, "test"), **class_accuracies(zeroshot)}
        if with_val:
            scores["target_val"] = split(TARGET_DATA, "val")
        return scores


def class_accuracies(report):
    """Zero-shot top-1 over all classes, and over the seen and the held-out ones (image-weighted), in %."""
    from ernievil2.demo.fashion_scenes import CLASSES

    held_out = {CLASSES[c].noun for c in HELD_OUT}
    out = {"zeroshot": report["top1"] * 100}
    for key, rows in (("zs_seen", [r for r in report["per_class"] if r["class"] not in held_out]),
                      ("zs_held_out", [r for r in report["per_class"] if r["class"] in held_out])):
        out[key] = 100 * sum(r["top1"] * r["images"] for r in rows) / sum(r["images"] for r in rows)
    return out


def read_state(path):
    from ernievil2.checkpoint import read_model_state

    return read_model_state(os.path.join(REPO, path))


def run_dir(label, seed, steps, lr):
    name = re.sub(r"\W+", "_", label).strip("_")
    return os.path.join(WORK, name, f"seed{seed}_steps{steps}" + (f"_lr{lr:g}" if lr is not None else ""))


def with_distill_weight(row, overrides, weight):
    """(the row's label, its overrides) with its distill term weighed ``weight`` (rows without one: unchanged)."""
    terms = (overrides.get("Loss") or {}).get("terms", [])
    if weight is None or not any(term["name"] == "distill" for term in terms):
        return row, overrides
    terms = [{**term, "weight": weight} if term["name"] == "distill" else term for term in terms]
    return f"{row} w={weight:g}", {**overrides, "Loss": {**overrides["Loss"], "terms": terms}}


def run_rows(args):
    scorer = Scorer()
    runs = []
    source_state = read_state(SOURCE_MODEL)
    for row in args.rows:
        overrides, _ = ROWS[row]
        if row == "zeroshot":
            runs.append({"row": row, "seed": 0, "steps": 0, "lr": None, **scorer.score(source_state, with_val=True)})
            print(runs[-1], flush=True)
            continue
        for lr in args.lrs or [None]:
            for seed in args.seeds:
                if row == "wise":
                    runs += wise_runs(scorer, source_state, args.wise_of, seed, args.steps, lr, args.alphas)
                    continue
                label, row_overrides = with_distill_weight(row, overrides, args.distill_weight)
                label += args.label
                row_overrides = {**row_overrides, **dict(args.set)}
                out = run_dir(label, seed, args.steps, lr)
                os.makedirs(os.path.join(REPO, out), exist_ok=True)
                fine_tune(os.path.join(REPO, out), run_overrides(row_overrides, seed, args.steps, lr, out))
                with open(os.path.join(REPO, out, "train_summary.json"), encoding="utf-8") as f:
                    seconds = json.load(f)["step_seconds"] / args.steps
                scores = scorer.score(read_state(out), with_val=bool(args.lrs))
                runs.append({"row": label, "seed": seed, "steps": args.steps, "lr": lr, "seconds_per_step": seconds, **scores})
                print(runs[-1], flush=True)
    return runs


def wise_runs(scorer, source_state, of, seed, steps, lr, alphas):
    """Row ``of``'s model of this seed mixed with the source at each alpha."""
    from ernievil2.checkpoint.interpolate import interpolate_states

    tuned = read_state(run_dir(of, seed, steps, lr))
    runs = []
    for alpha in alphas:
        scores = scorer.score(interpolate_states(source_state, tuned, alpha), with_val=True)
        label = f"wise a={alpha:g}" if of == "full" else f"{of} + wise a={alpha:g}"
        runs.append({"row": label, "seed": seed, "steps": steps, "lr": lr, **scores})
        print(runs[-1], flush=True)
    return runs


def override(text):
    """``KEY=VALUE``: a config key and its yaml value."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


COLUMNS = (("target", "target MR"), ("target_val", "target val MR"), ("source", "source MR"), ("zeroshot", "zero-shot top-1"),
           ("zs_seen", "seen 7"), ("zs_held_out", "held-out 3"))


def mean_std(values):
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.2f}"


def table(runs):
    columns = [c for c in COLUMNS if any(c[0] in r for r in runs)]
    head = ["row", "lr", "seeds", "steps", *[label for _, label in columns]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups = {}
    for run in runs:
        groups.setdefault((run["row"], run.get("lr")), []).append(run)
    for (row, lr), rows in groups.items():
        cells = [row, "" if lr is None else f"{lr:g}", " ".join(str(r["seed"]) for r in rows), "/".join(sorted({str(r["steps"]) for r in rows}))]
        cells += [mean_std([r[key] for r in rows]) if all(key in r for r in rows) else "" for key, _ in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def merged(path, runs):
    def key(run):
        return run["row"], run["seed"], run["steps"], run.get("lr")

    old = []
    if path and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
    new = {key(r) for r in runs}
    return [r for r in old if key(r) not in new] + runs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("prepare", help="build the corpora and pre-train the source model (idempotent)")
    run = commands.add_parser("run", help="fine-tune and score rows")
    run.add_argument("--rows", nargs="+", choices=ROWS, required=True)
    run.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    run.add_argument("--steps", type=int, default=100)
    run.add_argument("--lrs", nargs="+", type=float, default=None, help="train each row at each lr (and score the val split)")
    run.add_argument("--alphas", nargs="+", type=float, default=[0.3, 0.5, 0.7], help="mixing weights of the wise row")
    run.add_argument("--distill-weight", type=float, default=None, help="the distill term's weight in the rows that have one")
    run.add_argument("--set", type=override, action="append", default=[], metavar="KEY=VALUE", help="one more override of every row")
    run.add_argument("--label", default="", help="appended to the row names (say what --set changed)")
    run.add_argument("--wise-of", default="full",
                     help="the row whose fine-tuned models the wise row mixes with the source")
    run.add_argument("--out", default=None, help="JSON the runs are merged into")
    report = commands.add_parser("report", help="table saved runs")
    report.add_argument("path")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args)
        return
    if args.command == "report":
        with open(args.path, encoding="utf-8") as f:
            print(table(json.load(f)))
        return
    runs = merged(args.out, run_rows(args))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(runs, f, indent=1)
    print(table(runs))


if __name__ == "__main__":
    main()
