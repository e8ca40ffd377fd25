"""The multi-view ablation (and the momentum-queue comparison) on FashionScenes-CN.

    python -m benchmarks.ablation --preset multiview --seeds 0 1 2 --steps 100 --equal-time
    python -m benchmarks.ablation --preset queue --seeds 0 1 2 --steps 800 --batch 16
    python -m benchmarks.ablation --preset horizon --steps 304 --batch 128 --lr 1e-3 \
        --set Optimizer.min_lr_ratio=1.0 --eval-every 38
    python -m benchmarks.ablation --preset positives --config configs/demo/single_view.yaml \
        --rows 1 --seeds 0 --steps 152 --batch 128 --lr 1e-3 --set Optimizer.min_lr_ratio=1.0 --multi-gt
    python -m benchmarks.ablation --preset sigmoid --config configs/demo/single_view.yaml --rows 1 \
        --seeds 0 --steps 152 --batch 128 --lr 1e-3 --set Optimizer.min_lr_ratio=1.0
    python -m benchmarks.ablation --preset patchdrop --rows 1 --seeds 0 --out runs/r1s0.json ...
    python -m benchmarks.ablation --preset patchdrop --report runs/*.json ...
    python -m benchmarks.ablation --preset noisy --data demo_data/noisy40 --rows 0 1 --seeds 0 1 2 --steps 152 \
        --batch 128 --lr 1e-3 --set Optimizer.min_lr_ratio=1.0 --eval-every 38

Every row trains the demo model from scratch with ``tools/train.py`` (same data,
batch, steps and seeds; only ``Loss`` differs), then evaluates on the test split
(official one-to-one protocol: one caption per test image). ``--equal-time``
adds a second pass where each row gets the wall-clock time the single-view row
took, converted to steps with the row's own measured step time. ``--eval-every N``
evaluates during training and prints learning curves, and every row read off its
curve at the first row's training time (no second pass), each row's time being its
steps times its median seconds per step over the runs. ``--multi-gt`` also
extracts the test split in its Chinese-CLIP form (two captions per image) and
scores it with the multi-ground-truth protocol. Results are added to ``--out``
(JSON: a run of the same row, seed and steps replaces the old one, the others
stay, so one row per job builds one file) and tabled on stdout.
``--report`` trains nothing and prints the tables of earlier runs' JSON (give
it the same --steps, --batch and --eval-every as the runs).
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
# Patch dropout (Train.patch_keep) on both image views.
KEEP_HALF = {"Train.patch_keep": {"image_v1": 0.5, "image_v2": 0.5}}
# One view needs no second look: the single-view row sees the canvas as it is
# (configs/demo/single_view.yaml); the rows with image_v2 use base.yaml's views.
NO_AUGMENT = {"Augment": {"image_size": 64, "resize_short": 64, "blur": None}}
# Same-caption rows of one batch are each other's positives, not negatives: the demo's
# train images are all distinct, but 348 of its captions repeat exactly.
SAME = {"same_caption": True}


def terms(pairs, *others, **loss):
    """A ``Loss`` section but its temperature: an info_nce term over ``pairs`` (none when empty), then ``others``."""
    return {**loss, "terms": ([{"name": "info_nce", "pairs": pairs}] if pairs else []) + list(others)}


PRESETS = {
    "multiview": [
        ("single-view image-text", terms(SINGLE), NO_AUGMENT),
        ("+ image-image, text-text", terms(INTRA), {}),
        ("+ tag view", terms(TAG), {}),
        ("full table", terms(FULL), {}),
    ],
    # The first and last rows of "multiview" over a longer horizon (with --eval-every: curves).
    "horizon": [
        ("single-view image-text", terms(SINGLE), NO_AUGMENT),
        ("full table", terms(FULL), {}),
    ],
    # The full table with half of each image view's patches against every patch. The faster row first:
    # with --eval-every, the slower one is read at its training time.
    "patchdrop": [
        ("full table, 50% of patches", terms(FULL), KEEP_HALF),
        ("full table, every patch", terms(FULL), {}),
    ],
    # On the intra-modal table: single-view image-text training at batch 16 stays
    # near chance at these budgets, which would leave nothing to compare.
    "queue": [
        ("in-batch negatives", terms(INTRA), {}),
        ("+ queue as extra negatives (K=4096)", terms(INTRA, {"name": "momentum_queue", **QUEUE, "mode": "extra_negatives"}), {}),
        ("+ BriVL queue term (K=4096)", terms(INTRA, {"name": "momentum_queue", **QUEUE, "mode": "brivl"}), {}),
    ],
    # Loss.positives on the single-view table; run with --config configs/demo/single_view.yaml.
    "positives": [
        ("baseline", terms(SINGLE), {}),
        ("masked", terms(SINGLE, positives={"mode": "masked", **SAME}), {}),
        ("multi_positive", terms(SINGLE, positives={"mode": "multi_positive", **SAME}), {}),
    ],
    # Noisy web pairs (tools/make_demo_data.py --caption-* --tag-*; run with --data on such a corpus):
    # the tag view is a second, independent description of the image when the caption is wrong.
    # The single-view and tag rows see the canvas as it is; the rows with image_v2 use base.yaml's views.
    "noisy": [
        ("single-view image-text", terms(SINGLE), NO_AUGMENT),
        ("+ tag view (0.5)", terms(SINGLE + [["image_v1", "tag", 0.5]]), NO_AUGMENT),
        ("+ tag view (1.0)", terms(SINGLE + [["image_v1", "tag", 1.0]]), NO_AUGMENT),
        ("+ image-image, text-text", terms(INTRA), {}),
        ("full table", terms(FULL), {}),
        # The tags in place of the caption on half of the steps (Train.tag_as_text_prob): no second text batch.
        ("single-view, tags as text on 50% of steps", terms(SINGLE), {**NO_AUGMENT, "Train.tag_as_text_prob": 0.5}),
        # The tag table with half of the image view's patches (FLIP): a cheaper step to spend on the tags.
        ("+ tag view (0.5), 50% of patches", terms(SINGLE + [["image_v1", "tag", 0.5]]), {**NO_AUGMENT, **KEEP_HALF}),
        # BriVL's momentum queue on single-view: 4,096 more negatives a step, from a slowly moving encoder.
        ("+ momentum queue (K=4096, both)", terms(SINGLE, {"name": "momentum_queue", **QUEUE, "mode": "both"}), NO_AUGMENT),
        # With rows 1 and 2, the sweep of the tag pair's weight.
        ("+ tag view (0.25)", terms(SINGLE + [["image_v1", "tag", 0.25]]), NO_AUGMENT),
    ],
    # Single-view image-text: the softmax (InfoNCE) against the sigmoid (SigLIP, t = 10, b = -10).
    "sigmoid": [
        ("InfoNCE", terms(SINGLE), NO_AUGMENT),
        ("sigmoid (SigLIP)", terms([], {"name": "sigmoid", "pairs": SINGLE, "bias_init": -10.0}), NO_AUGMENT),
        ("sigmoid, bias from -ln(batch)", terms([], {"name": "sigmoid", "pairs": SINGLE, "bias_init": "auto"}), NO_AUGMENT),
    ],
}


def flow(value):
    """A value as a one-line yaml flow for -o overrides."""
    return json.dumps(value, ensure_ascii=False)


def train_once(name, loss, seed, steps, args, extra=None, multi_gt=False):
    """Train one row with ``tools/train.py`` and evaluate it on the test split; ``extra``: more overrides.

    ``multi_gt``: also score the test split's Chinese-CLIP form (reads ``args.config`` and ``args.data``).
    """
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
        "Loss": {"temperature": {"init": 0.07, "learnable": True, "max_logit_scale": 100}, **loss},
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
    curve = []
    if os.path.exists(os.path.join(out, "eval_history.jsonl")):
        with open(os.path.join(out, "eval_history.jsonl"), encoding="utf-8") as f:
            for line in f:
                point = json.loads(line)
                curve.append([point["step"], point["train_seconds"], point["official"]["mean"]["mean_recall"] * 100])
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
        "curve": curve,  # [step, training seconds, MeanRecall] at every evaluation (--eval-every)
        **(multi_gt_metrics(out, args) if multi_gt else {}),
    }


def multi_gt_metrics(trained, args):
    """The test split's Chinese-CLIP form (every caption of every image) under the multi-GT protocol."""
    features, report = os.path.join(trained, "test_multi_gt.npz"), os.path.join(trained, "retrieval_multi_gt.json")
    vocab = "Tokenizer.vocab_file=" + os.path.join(args.data, "vocab.txt")
    extract = [os.path.join(REPO, "tools", "extract_features.py"), "-c", args.config, "-o", vocab, "--weights", trained]
    extract += ["--format", "chinese_clip", "--data", args.data, "--split", "test", "--output", features, "--num-workers", "1"]
    score = [os.path.join(REPO, "tools", "eval_retrieval.py"), features, "--protocol", "multi_gt", "--json", report]
    for cmd in (extract, score):
        subprocess.run([sys.executable, *cmd], cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(report, encoding="utf-8") as f:
        metrics = json.load(f)["multi_gt"]
    return {
        "mgt_t2i_r1": metrics["text2image"]["r1"] * 100,
        "mgt_i2t_r1": metrics["image2text"]["r1"] * 100,
        "mgt_mean_recall": metrics["mean"]["mean_recall"] * 100,
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


MULTI_GT_COLUMNS = (("mgt_t2i_r1", "multi-GT T2I R@1"), ("mgt_i2t_r1", "multi-GT I2T R@1"), ("mgt_mean_recall", "multi-GT MeanRecall"))


def table(runs, title):
    # Multi-GT columns only when every run has them (runs without --multi-gt leave them out).
    extra = [c for c in MULTI_GT_COLUMNS if all(c[0] in r for r in runs)]
    head = ["row", "seeds", "steps", "T2I R@1", "I2T R@1", "MeanRecall", *[label for _, label in extra], "s/step", "peak MiB"]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in dict.fromkeys(r["row"] for r in runs):
        rows = [r for r in runs if r["row"] == name]
        cells = [name, " ".join(str(r["seed"]) for r in rows), "/".join(sorted({str(r["steps"]) for r in rows}))]
        cells += [mean_std([r[key] for r in rows]) for key in ("t2i_r1", "i2t_r1", "mean_recall", *[k for k, _ in extra])]
        cells += [f"{statistics.median(r['seconds_per_step'] for r in rows):.2f}", str(max(r["peak_mib"] or 0 for r in rows))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def merged(path, runs):
    """The runs saved at ``path`` with these added; a run of the same row, seed and steps replaces the old one."""
    def key(run):
        return run["row"], run["seed"], run["steps"]

    old = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
    new = {key(r) for r in runs}
    return [r for r in old if key(r) not in new] + runs


def at_time(curve, seconds):
    """MeanRecall at ``seconds`` of training, linear between the evaluations around it (None before the first).

    Up to 5% past the last evaluation counts as the end (a median budget lands just past
    some of the runs that define it); further is None.
    """
    for (_, t0, r0), (_, t1, r1) in zip(curve, curve[1:]):
        if t0 <= seconds <= t1:
            return r0 + (r1 - r0) * (seconds - t0) / max(t1 - t0, 1e-9)
    return curve[-1][2] if curve and curve[-1][1] <= seconds <= 1.05 * curve[-1][1] else None


def row_costs(runs):
    """Each row's median seconds per step over its runs: a run slowed by other jobs on a shared
    machine does not move it, as it would move that run's own clock."""
    names = dict.fromkeys(r["row"] for r in runs)
    return {name: statistics.median(r["seconds_per_step"] for r in runs if r["row"] == name) for name in names}


def on_row_clock(run, seconds_per_step):
    """``run``'s curve with each evaluation's time taken as its step times the row's cost."""
    return [[step, step * seconds_per_step, recall] for step, _, recall in run["curve"]]


def curve_tables(runs, rows, cost_runs=None):
    """MeanRecall by step for every row, and every row read at the first row's training time
    (on each row's median clock, ``row_costs``, taken from ``cost_runs`` for the rows they time:
    short runs of the rows in turn time them more evenly than long runs at different hours of a
    shared machine)."""
    steps = sorted({point[0] for r in runs for point in r["curve"]})
    lines = ["### learning curves (MeanRecall, mean ± std over seeds, at each evaluation)", "",
             "| row | " + " | ".join(str(s) for s in steps) + " |", "|---|" + "---|" * len(steps)]
    for name, _, _ in rows:
        mine = [r for r in runs if r["row"] == name]
        if not mine:
            continue
        cells = []
        for step in steps:
            values = [point[2] for r in mine for point in r["curve"] if point[0] == step]
            cells.append(mean_std(values) if len(values) == len(mine) else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    costs = {**row_costs(runs), **row_costs(cost_runs or [])}
    first = rows[0][0]
    budget = costs[first] * statistics.median(r["steps"] for r in runs if r["row"] == first)
    lines += ["", f"### equal training time ({budget:.0f} s, the first row's median), read off each run's curve", "",
              "| row | MeanRecall | s/step (median) | steps reached |", "|---|---|---|---|"]
    for name, _, _ in rows:
        mine = [r for r in runs if r["row"] == name]
        if not mine:
            continue
        values = [at_time(on_row_clock(r, costs[name]), budget) for r in mine]
        shown = mean_std(values) if None not in values else "outside the evaluated steps"
        reached = min(budget / costs[name], max(r["steps"] for r in mine))
        lines.append(f"| {name} | {shown} | {costs[name]:.2f} | {reached:.0f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="multiview")
    parser.add_argument("--config", default=os.path.join(REPO, "configs", "demo", "base.yaml"))
    parser.add_argument("--data", default=os.path.join(REPO, "demo_data", "fashion_scenes_cn"))
    parser.add_argument("--rows", type=int, nargs="+", default=None, metavar="I", help="only these rows of the preset (0 = the first)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=None, help="Optimizer.lr for every row (default: the config's)")
    parser.add_argument("--set", type=override, action="append", default=[], metavar="KEY=VALUE", help="a config override for every row (repeatable)")
    parser.add_argument("--equal-time", action="store_true", help="also run every row for the single-view row's wall-clock time")
    parser.add_argument(
        "--eval-every", type=int, default=0, metavar="N",
        help="evaluate every N steps and print learning curves and every row at the first row's training time "
        "(read off the curves: valid with a constant learning rate, e.g. --set Optimizer.min_lr_ratio=1.0)",
    )
    parser.add_argument("--multi-gt", action="store_true", help="also score the test split's Chinese-CLIP form with the multi-GT protocol")
    parser.add_argument("--work", default=os.path.join(REPO, "output", "ablation"))
    parser.add_argument("--out", default=None, help="JSON of every run (default WORK/PRESET.json)")
    parser.add_argument("--report", nargs="+", metavar="JSON", help="train nothing: the tables of the runs in these files")
    parser.add_argument(
        "--step-costs", metavar="JSON", help="with --report: each row's seconds per step from these runs (e.g. short runs of the rows in turn)"
    )
    args = parser.parse_args()
    out = args.out or os.path.join(args.work, f"{args.preset}.json")
    rows = PRESETS[args.preset]
    if args.report:
        runs = [run for path in args.report for run in json.load(open(path, encoding="utf-8"))]
        report = [table(runs, f"equal steps ({args.steps} steps, batch {args.batch}, seeds {sorted({r['seed'] for r in runs})})")]
        if args.eval_every:
            cost_runs = json.load(open(args.step_costs, encoding="utf-8")) if args.step_costs else None
            report.append(curve_tables(runs, rows, cost_runs))
        print("\n\n".join(report))
        return
    if args.rows is not None:
        if not set(args.rows) <= set(range(len(rows))):
            parser.error(f"--rows: the {args.preset} preset has rows 0-{len(rows) - 1}")
        rows = [rows[index] for index in args.rows]
    runs = []
    # Seeds outermost: an interrupted run still has every row for the seeds it finished.
    common = {**({} if args.lr is None else {"Optimizer.lr": args.lr}), **({"Train.eval_every": args.eval_every} if args.eval_every else {}), **dict(args.set)}
    for seed in args.seeds:
        for name, loss, extra in rows:
            runs.append(train_once(name, loss, seed, args.steps, args, {**common, **extra}, args.multi_gt))
            print(json.dumps(runs[-1]), flush=True)
    report = [table(runs, f"equal steps ({args.steps} steps, batch {args.batch}, seeds {args.seeds})")]
    if args.eval_every:
        report.append(curve_tables(runs, rows))
    if args.equal_time:
        base = statistics.median(r["seconds_per_step"] for r in runs if r["row"] == rows[0][0])
        budget = base * args.steps
        timed = []
        for seed in args.seeds:
            for name, loss, extra in rows[1:]:
                per_step = statistics.median(r["seconds_per_step"] for r in runs if r["row"] == name)
                timed.append(train_once(name, loss, seed, max(1, round(budget / per_step)), args, {**common, **extra}, args.multi_gt))
                print(json.dumps(timed[-1]), flush=True)
        first = [r for r in runs if r["row"] == rows[0][0]]
        report.append(table(first + timed, f"equal wall-clock ({budget:.0f} s of training per run)"))
        runs += timed
    os.makedirs(os.path.dirname(out), exist_ok=True)
    every = merged(out, runs)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(every, f, indent=1, ensure_ascii=False)
    print("\n\n".join(report))
    if len(every) > len(runs):
        print("\n" + table(every, f"every run in {out}"))


if __name__ == "__main__":
    main()
