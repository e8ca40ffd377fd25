"""The multi-view ablation (and the momentum-queue comparison) on FashionScenes-CN.

    python benchmarks/ablation.py --preset multiview --seeds 0 1 2 --steps 100 --equal-time
    python benchmarks/ablation.py --preset queue --seeds 0 1 2 --steps 800 --batch 16
    python benchmarks/ablation.py --preset sigmoid --config configs/demo/single_view.yaml --rows 1 \
        --seeds 0 --steps 152 --batch 128 --lr 1e-3 --set Optimizer.min_lr_ratio=1.0

Every row trains the demo model from scratch with ``tools/train.py`` (same data,
batch, steps and seeds; only ``Loss`` differs), then evaluates on the test split
(official one-to-one protocol: one caption per test image). ``--equal-time``
adds a second pass where each row gets the wall-clock time the single-view row
took, converted to steps with the row's own measured step time. Results go to
``--out`` (JSON, every run) and a markdown table on stdout.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SINGLE = [["image_v1", "text_v1", 1.0]]
INTRA = SINGLE + [["image_v1", "image_v2", 0.5], ["text_v1", "text_v2", 0.5]]
TAG = INTRA + [["image_v1", "tag", 0.5]]
FULL = [["image_v1", "text_v1", 1.0], ["image_v2", "text_v2", 1.0], ["image_v1", "image_v2", 0.5], ["text_v1", "text_v2", 0.5], ["image_v1", "tag", 0.5]]
QUEUE = {"size": 4096, "momentum": 0.99, "ramp_steps": 100, "mask_same_image": True}
# One view needs no second look: the single-view row sees the canvas as it is
# (configs/demo/single_view.yaml); the rows with image_v2 use base.yaml's views.
NO_AUGMENT = {"Augment": {"image_size": 64, "resize_short": 64, "blur": None}}
PRESETS = {
    "multiview": [
        ("single-view image-text", {"pairs": SINGLE}, NO_AUGMENT),
        ("+ image-image, text-text", {"pairs": INTRA}, {}),
        ("+ tag view", {"pairs": TAG}, {}),
        ("full table", {"pairs": FULL}, {}),
    ],
    # On the intra-modal table: single-view image-text training at batch 16 stays
    # near chance at these budgets, which would leave nothing to compare.
    "queue": [
        ("in-batch negatives", {"pairs": INTRA}, {}),
        ("+ queue as extra negatives (K=4096)", {"pairs": INTRA, "momentum_queue": {**QUEUE, "mode": "extra_negatives"}}, {}),
        ("+ BriVL queue term (K=4096)", {"pairs": INTRA, "momentum_queue": {**QUEUE, "mode": "brivl"}}, {}),
    ],
    # Single-view image-text: the softmax (InfoNCE) against the sigmoid (SigLIP, t = 10, b = -10).
    "sigmoid": [
        ("InfoNCE", {"pairs": SINGLE}, NO_AUGMENT),
        ("sigmoid (SigLIP)", {"pairs": [], "terms": [{"name": "sigmoid", "pairs": SINGLE}]}, NO_AUGMENT),
    ],
}


def flow(value):
    """A value as a one-line yaml flow for -o overrides."""
    return json.dumps(value, ensure_ascii=False)


def train_once(name, loss, seed, steps, args, extra=None):
    """Train one row with ``tools/train.py`` and evaluate it on the test split; ``extra``: more overrides."""
    out = os.path.join(args.work, re.sub(r"\W+", "_", name).strip("_"), f"seed{seed}_steps{steps}")
    overrides = {
        "Global.seed": seed,
        "Global.output_dir": out,
        "Train.max_steps": steps,
        "Train.batch_size": args.batch,
        "Train.save_every": 0,
        "Train.log_every": 10,
        "Train.resume": "never",
        "Tokenizer.vocab_file": os.path.join(args.data, "vocab.txt"),
        "Data.train": {"format": "official_tsv", "path": os.path.join(args.data, "train.tsv")},
        "Data.val": {"format": "official_tsv", "path": os.path.join(args.data, "test.tsv")},
        "Loss": {"name": "MultiViewContrastive", "temperature": {"init": 0.07, "learnable": True, "max_logit_scale": 100}, **loss},
        **(extra or {}),
    }
    cmd = [sys.executable, os.path.join(REPO, "tools", "train.py"), "-c", args.config]
    for key, value in overrides.items():
        cmd += ["-o", f"{key}={flow(value)}"]
    started = time.time()
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.time() - started
    with open(os.path.join(out, "eval_metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)["official"]
    with open(os.path.join(out, "train_summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    return {
        "row": name,
        "seed": seed,
        "steps": steps,
        "t2i_r1": metrics["text2image"]["r1"] * 100,
        "i2t_r1": metrics["image2text"]["r1"] * 100,
        "mean_recall": metrics["mean"]["mean_recall"] * 100,
        "seconds_per_step": summary["step_seconds"] / summary["steps"],
        "train_seconds": summary["step_seconds"],
        "peak_mib": round(summary["peak_mib"]),
        "wall_seconds": wall,
    }


def override(text):
    """``KEY=VALUE`` from the command line: a config key and its yaml value."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def mean_std(values):
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.2f}"


def table(runs, title):
    lines = [f"### {title}", "", "| row | steps | T2I R@1 | I2T R@1 | MeanRecall | s/step | peak MiB |", "|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["row"] for r in runs):
        rows = [r for r in runs if r["row"] == name]
        lines.append(
            f"| {name} | {'/'.join(sorted({str(r['steps']) for r in rows}))} | {mean_std([r['t2i_r1'] for r in rows])} | "
            f"{mean_std([r['i2t_r1'] for r in rows])} | {mean_std([r['mean_recall'] for r in rows])} | "
            f"{statistics.median(r['seconds_per_step'] for r in rows):.2f} | {max(r['peak_mib'] or 0 for r in rows)} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="multiview")
    parser.add_argument("--config", default=os.path.join(REPO, "configs", "demo", "base.yaml"))
    parser.add_argument("--data", default=os.path.join(REPO, "demo_data", "fashion_scenes_cn"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", type=int, nargs="+", default=None, help="indices of the preset's rows to run (default: all)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=None, help="Optimizer.lr for every row (default: the config's)")
    parser.add_argument("--set", type=override, action="append", default=[], metavar="KEY=VALUE", help="a config override for every row (repeatable)")
    parser.add_argument("--equal-time", action="store_true", help="also run every row for the single-view row's wall-clock time")
    parser.add_argument("--work", default=os.path.join(REPO, "output", "ablation"))
    parser.add_argument("--out", default=None, help="JSON of every run (default WORK/PRESET.json)")
    args = parser.parse_args()
    out = args.out or os.path.join(args.work, f"{args.preset}.json")
    rows = PRESETS[args.preset]
    if args.rows is not None:
        if not all(0 <= i < len(rows) for i in args.rows):
            parser.error(f"--rows: the {args.preset} preset has rows 0..{len(rows) - 1}")
        rows = [rows[i] for i in args.rows]
    runs = []
    # Seeds outermost: an interrupted run still has every row for the seeds it finished.
    common = {**({} if args.lr is None else {"Optimizer.lr": args.lr}), **dict(args.set)}
    for seed in args.seeds:
        for name, loss, extra in rows:
            runs.append(train_once(name, loss, seed, args.steps, args, {**common, **extra}))
            print(json.dumps(runs[-1]), flush=True)
    report = [table(runs, f"equal steps ({args.steps} steps, batch {args.batch}, seeds {args.seeds})")]
    if args.equal_time:
        base = statistics.median(r["seconds_per_step"] for r in runs if r["row"] == rows[0][0])
        budget = base * args.steps
        timed = []
        for seed in args.seeds:
            for name, loss, extra in rows[1:]:
                per_step = statistics.median(r["seconds_per_step"] for r in runs if r["row"] == name)
                timed.append(train_once(name, loss, seed, max(1, round(budget / per_step)), args, {**common, **extra}))
                print(json.dumps(timed[-1]), flush=True)
        first = [r for r in runs if r["row"] == rows[0][0]]
        report.append(table(first + timed, f"equal wall-clock ({budget:.0f} s of training per run)"))
        runs += timed
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(runs, f, indent=1, ensure_ascii=False)
    print("\n\n".join(report))


if __name__ == "__main__":
    main()
