"""How much our trainer learns, against a plain CLIP loop on the same demo data.

    # our trainer beside the plain loop: equal samples and equal training time, 3 seeds
    python -m benchmarks.bench_learning compare --seeds 0 1 2 --steps 152 --batch 128 --rows single-view demo
    # the diagnosis: the plain loop with one of our towers swapped in, options varied
    python -m benchmarks.bench_learning towers --text ours --text-init bert --text-pooler tanh
    # the plain loop alone for a training time (e.g. the demo's), 3 seeds
    python -m benchmarks.bench_learning towers --seconds 280
    # seeds run side by side (one MKL thread each), then one report
    MKL_NUM_THREADS=1 python -m benchmarks.bench_learning compare --seeds 0 --out a.json &
    MKL_NUM_THREADS=1 python -m benchmarks.bench_learning compare --seeds 1 --out b.json; wait
    python -m benchmarks.bench_learning report a.json b.json

``compare`` rows (``--rows``), all evaluated on the demo's 2,000 test pairs (official protocol):
- ``single-view`` / ``table``: the plain loop (``reference_clip.py``) for ``--steps`` steps of
  ``--batch``; our trainer (``tools/train.py``) single-view or with a multi-view table, at the
  same batch and steps (equal samples), then for the plain loop's training time (steps from the
  row's own measured step time; its schedule spans them);
- ``demo``: ``make demo``'s configuration as it ships (its own steps and schedule), then the
  plain loop for that run's training time.
Training time counts data waiting and compute, not start-up or evaluation, on both sides.
Every figure is printed per seed and as mean ± std, with ratios to the plain loop.
"""
import argparse
import json
import os
import statistics
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import ernievil2  # noqa: E402,F401  (CPU runtime before Paddle loads)
from benchmarks.ablation import SINGLE, mean_std, override, terms, train_once  # noqa: E402

DATA = os.path.join(REPO, "demo_data", "fashion_scenes_cn")


def load_data(data_dir):
    from benchmarks.reference_clip import read_official_tsv
    from ernievil2.data.tokenizer import ErnieTokenizer

    tokenizer = ErnieTokenizer(os.path.join(data_dir, "vocab.txt"), 48)
    return read_official_tsv(os.path.join(data_dir, "train.tsv"), tokenizer), read_official_tsv(os.path.join(data_dir, "test.tsv"), tokenizer)


def plain_towers(args, vocab_size):
    """The plain loop's towers, or ours (demo size) where ``--image``/``--text`` say so."""
    from benchmarks.reference_clip import PlainText, PlainViT
    from ernievil2.models.ernie_text import ErnieTextEncoder
    from ernievil2.models.vit import VisionTransformer

    image = (
        PlainViT()
        if args.image == "plain"
        else VisionTransformer(img_size=64, patch_size=16, embed_dim=128, depth=4, num_heads=4, init=args.image_init, act=args.image_act)
    )
    text = (
        PlainText(vocab_size=vocab_size)
        if args.text == "plain"
        else ErnieTextEncoder(
            vocab_size=vocab_size, hidden_size=128, num_layers=2, num_heads=4, intermediate_size=512,
            max_position_embeddings=64, init=args.text_init, pooler=args.text_pooler,
        )
    )
    return image, text


def run_plain(args, data, seed, steps=None, seconds=None):
    import paddle

    from benchmarks.reference_clip import train_plain

    paddle.seed(seed)
    image, text = plain_towers(args, vocab_size=128)
    metrics, stats = train_plain(image, text, *data, steps=steps, seconds=seconds, batch=args.batch, lr=args.lr, seed=seed)
    return {
        "row": "plain CLIP loop",
        "seed": seed,
        "steps": stats["steps"],
        "t2i_r1": metrics["text2image"]["r1"] * 100,
        "i2t_r1": metrics["image2text"]["r1"] * 100,
        "mean_recall": metrics["mean"]["mean_recall"] * 100,
        "train_seconds": stats["train_seconds"],
        "final_loss": stats["final_loss"],
    }


def summarise(runs, reference):
    """Markdown: one line per row with mean ± std over seeds and the ratio of means to ``reference``."""
    ref = statistics.mean(r["mean_recall"] for r in runs if r["row"] == reference)
    lines = [
        "| row | steps | train s | T2I R@1 | I2T R@1 | MeanRecall | / plain |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["row"] for r in runs):
        rows = [r for r in runs if r["row"] == name]
        mr = statistics.mean(r["mean_recall"] for r in rows)
        lines.append(
            f"| {name} | {'/'.join(sorted({str(r['steps']) for r in rows}))} | "
            f"{statistics.median(r['train_seconds'] for r in rows):.0f} | {mean_std([r['t2i_r1'] for r in rows])} | "
            f"{mean_std([r['i2t_r1'] for r in rows])} | {mean_std([r['mean_recall'] for r in rows])} | {mr / ref:.2f}× |"
        )
    return "\n".join(lines)


ROWS = {
    "single-view": "configs/demo/single_view.yaml",
    "table": "configs/demo/intra_modal.yaml",
}


def compare(args):
    data = load_data(args.data)
    args.text = args.image = "plain"
    extra = {"Optimizer.lr": args.lr if args.our_lr is None else args.our_lr, **dict(args.our_set)}
    result = {"equal_samples": [], "equal_time": [], "demo": []}
    reused = {}
    if args.plain_from:
        with open(args.plain_from, encoding="utf-8") as f:
            reused = {r["seed"]: r for r in map(json.loads, f) if r["steps"] == args.steps}
    for seed in args.seeds:
        if set(args.rows) & set(ROWS):
            # The plain loop does not depend on our code: a run of the same seed, steps and batch can be reused.
            plain = reused.get(seed) or run_plain(args, data, seed, steps=args.steps)
            print(json.dumps(plain), flush=True)
            result["equal_samples"].append(plain)
            result["equal_time"].append(plain)
        for name in (r for r in args.rows if r in ROWS):
            args.config = os.path.join(REPO, args.table_config if name == "table" else ROWS[name])
            loss = terms(SINGLE) if name == "single-view" else load_loss(args.config)
            ours = train_once(f"ours {name}", loss, seed, args.steps, args, extra)
            print(json.dumps(ours), flush=True)
            result["equal_samples"].append(ours)
            steps = max(1, round(plain["train_seconds"] / ours["seconds_per_step"]))
            timed = train_once(f"ours {name}", loss, seed, steps, args, extra)
            print(json.dumps(timed), flush=True)
            result["equal_time"].append(timed)
        if "demo" in args.rows:
            result["demo"] += demo_against_plain(args, data, seed)
    save(args, result)
    print(report(result))


def demo_against_plain(args, data, seed):
    """``make demo``'s configuration as it ships (its steps, lr and schedule), then the plain loop for that training time."""
    from ernievil2.config import load_config

    args.config = os.path.join(REPO, args.demo_config)
    train = load_config(args.config)["Train"]
    demo_args = argparse.Namespace(**{**vars(args), "batch": train["batch_size"]})
    ours = train_once("make demo's configuration", load_loss(args.config), seed, train["max_steps"], demo_args)
    print(json.dumps(ours), flush=True)
    plain = run_plain(demo_args, data, seed, seconds=ours["train_seconds"])
    print(json.dumps(plain), flush=True)
    return [plain, ours]


def report(result):
    """The markdown tables of a compare result."""
    tables = []
    if result["equal_samples"]:
        seeds = sorted({r["seed"] for r in result["equal_samples"]})
        steps = sorted({r["steps"] for r in result["equal_samples"] if r["row"] == "plain CLIP loop"})
        tables.append(f"### Equal samples ({'/'.join(map(str, steps))} steps, seeds {seeds})\n\n" + summarise(result["equal_samples"], "plain CLIP loop"))
        tables.append("### Equal training time (the plain loop's, per seed)\n\n" + summarise(result["equal_time"], "plain CLIP loop"))
    if result.get("demo"):
        tables.append("### make demo's configuration, and the plain loop for the same training time (per seed)\n\n" + summarise(result["demo"], "plain CLIP loop"))
    return "\n\n".join(tables)


def merge(paths):
    """One compare result from the JSON files of several runs (e.g. seeds run side by side)."""
    merged = {"equal_samples": [], "equal_time": [], "demo": []}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            part = json.load(f)
        for key in merged:
            merged[key] += part.get(key, [])
    return merged


def load_loss(config_path):
    from ernievil2.config import load_config

    loss = dict(load_config(config_path)["Loss"])
    loss.pop("temperature", None)
    return loss


def towers(args):
    data = load_data(args.data)
    runs = []
    for seed in args.seeds:
        started = time.time()
        run = run_plain(args, data, seed, steps=None if args.seconds else args.steps, seconds=args.seconds)
        run.update(row=f"image {args.image}/{args.image_init}, text {args.text}/{args.text_init}/{args.text_pooler}", wall=time.time() - started)
        print(json.dumps(run), flush=True)
        runs.append(run)
    save(args, {"towers": runs})


def save(args, result):
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1, ensure_ascii=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    merge_parser = sub.add_parser("report", help="the tables of one or more compare --out files together")
    merge_parser.add_argument("files", nargs="+")
    for name in ("compare", "towers"):
        p = sub.add_parser(name)
        p.add_argument("--data", default=DATA)
        p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
        p.add_argument("--steps", type=int, default=150)
        p.add_argument("--batch", type=int, default=128)
        p.add_argument("--lr", type=float, default=1e-3, help="the plain loop's learning rate (constant)")
        p.add_argument("--out", default=None, help="JSON of every run")
        p.add_argument("--work", default=os.path.join(REPO, "output", "bench_learning"))
    compare_parser, towers_parser = sub.choices["compare"], sub.choices["towers"]
    compare_parser.add_argument("--rows", nargs="+", choices=(*ROWS, "demo"), default=["single-view", "table", "demo"])
    compare_parser.add_argument("--table-config", default=ROWS["table"], help="the multi-view row's config")
    compare_parser.add_argument("--demo-config", default="configs/demo/single_view.yaml", help="what `make demo` trains")
    compare_parser.add_argument(
        "--our-set", type=override, action="append", default=[], metavar="KEY=VALUE",
        help="a config override for the single-view/table runs of ours (repeatable; the demo row runs as shipped)",
    )
    compare_parser.add_argument("--our-lr", type=float, default=None, help="our trainer's peak lr (default: --lr)")
    compare_parser.add_argument("--plain-from", default=None, help="JSON lines of earlier plain-loop runs to reuse (same steps and batch)")
    towers_parser.add_argument("--image", choices=("plain", "ours"), default="plain")
    towers_parser.add_argument("--text", choices=("plain", "ours"), default="plain")
    towers_parser.add_argument("--image-init", default="xavier")
    towers_parser.add_argument("--text-init", default="xavier")
    towers_parser.add_argument("--image-act", default="quick_gelu")
    towers_parser.add_argument("--text-pooler", default="none")
    towers_parser.add_argument("--seconds", type=float, default=None, help="train for this long instead of --steps")
    args = parser.parse_args()
    if args.command == "report":
        print(report(merge(args.files)))
    else:
        compare(args) if args.command == "compare" else towers(args)


if __name__ == "__main__":
    main()
