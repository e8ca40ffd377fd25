"""Build FashionScenes-CN, the Chinese image-text demo set made from Fashion-MNIST.

    apt-get install -y dataset-fashion-mnist        # the image source (or pass --source-dir)
    python tools/make_demo_data.py --output demo_data/fashion_scenes_cn
    python tools/make_demo_data.py --output /tmp/tiny --num-train 500 --num-test 100 --canvas-size 32
    python tools/make_demo_data.py --output demo_data/noisy40 --num-train 10000 --caption-mismatch 0.4 --tag-wrong 0.1
    # a user's own domain: scenes with a garment of three held-out classes, product-title captions
    python tools/make_demo_data.py --output /tmp/shop --num-train 1000 --num-test 2000 --required-classes 3,5,8 --caption-style title

Writes train.tsv / test.tsv (and val.tsv with --num-val) in the official ERNIE-ViL layout
``caption \\t image_id \\t base64 image \\t tags``, the eval splits again in the Chinese-CLIP
layout (``test_imgs.tsv`` + ``test_texts.jsonl``, several captions per image), a zero-shot
set of single garments (``zeroshot_*``, for tools/eval_zeroshot.py), and meta.json.
Rerunning with the same arguments is a no-op; --force rebuilds. See docs/demo_data.md.
"""
import argparse
import sys
import time

from ernievil2.demo.fashion_scenes import (
    CAPTION_STYLES,
    DemoSpec,
    build_demo_dataset,
    existing_meta_matches,
    load_fashion_mnist,
    locate_source,
    validate_spec,
)

PROGRESS_EVERY = 1000


# A ValueError here means bad arguments or Fashion-MNIST source files: a one-line error too (ernievil2.cli.run).
USER_ERRORS = (ValueError,)


def labels(text):
    """``0,1,4`` -> (0, 1, 4)."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated Fashion-MNIST labels like 0,1,4, got {text!r}") from None


def parse_args(argv=None):
    defaults = DemoSpec()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="demo_data/fashion_scenes_cn", help="output folder")
    parser.add_argument("--source-dir", default=None, help="folder with the four Fashion-MNIST .gz files")
    parser.add_argument("--num-train", type=int, default=defaults.num_train)
    parser.add_argument("--num-val", type=int, default=defaults.num_val)
    parser.add_argument("--num-test", type=int, default=defaults.num_test)
    parser.add_argument(
        "--num-zeroshot", type=int, default=defaults.num_zeroshot, help="single-garment images for zero-shot classification (0: none)"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--canvas-size", type=int, default=defaults.canvas_size, help="even, >= 16")
    parser.add_argument("--image-format", choices=("jpeg", "png"), default=defaults.image_format)
    parser.add_argument("--jpeg-quality", type=int, default=defaults.jpeg_quality)
    parser.add_argument(
        "--eval-captions-per-image",
        type=int,
        default=defaults.eval_captions_per_image,
        help="captions per val/test image in the Chinese-CLIP layout; the official TSV keeps the first",
    )
    parser.add_argument(
        "--max-caption-chars",
        type=int,
        default=defaults.max_caption_chars,
        help="longest caption (characters = tokens here); the default fits text length 48",
    )
    parser.add_argument("--no-cn-clip", action="store_true", help="skip the Chinese-CLIP layout of val/test")
    noise = parser.add_argument_group("web noise (train split only; the val and test splits stay clean)")
    noise.add_argument("--caption-mismatch", type=float, default=0.0, metavar="RATE", help="share of captions taken from another scene")
    noise.add_argument("--caption-attribute", type=float, default=0.0, metavar="RATE", help="share of captions with one colour or garment wrong")
    noise.add_argument(
        "--caption-partial", type=float, default=0.0, metavar="RATE", help="share of multi-item scenes whose caption names only some items"
    )
    noise.add_argument("--tag-missing", type=float, default=0.0, metavar="RATE", help="share of multi-item scenes missing one tag")
    noise.add_argument("--tag-wrong", type=float, default=0.0, metavar="RATE", help="share of scenes with one tag's colour or garment wrong")
    domain = parser.add_argument_group("a domain of one's own (the fine-tuning benchmark's corpora, docs/finetuning.md)")
    domain.add_argument("--classes", type=labels, default=(), metavar="L,L,...", help="Fashion-MNIST labels 0-9 the scenes draw from (default: all)")
    domain.add_argument(
        "--required-classes", type=labels, default=(), metavar="L,L,...", help="labels of which every scene holds at least one"
    )
    domain.add_argument(
        "--caption-style", choices=CAPTION_STYLES, default=defaults.caption_style,
        help="scene: the demo's sentences; title: product titles (a style word, then the items in reading order)",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if the output is up to date")
    return parser.parse_args(argv)


def spec_from_args(args):
    return DemoSpec(
        seed=args.seed,
        num_train=args.num_train,
        num_val=args.num_val,
        num_test=args.num_test,
        num_zeroshot=args.num_zeroshot,
        canvas_size=args.canvas_size,
        image_format=args.image_format,
        jpeg_quality=args.jpeg_quality,
        eval_captions_per_image=args.eval_captions_per_image,
        cn_clip_eval=not args.no_cn_clip,
        max_caption_chars=args.max_caption_chars,
        caption_mismatch_rate=args.caption_mismatch,
        caption_attribute_rate=args.caption_attribute,
        caption_partial_rate=args.caption_partial,
        tag_missing_rate=args.tag_missing,
        tag_wrong_rate=args.tag_wrong,
        classes=args.classes,
        required_classes=args.required_classes,
        caption_style=args.caption_style,
    )


def print_progress(split, done, total):
    if done % PROGRESS_EVERY == 0 or done == total:
        print(f"\r  {split}: {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)


def main(argv=None):
    args = parse_args(argv)
    spec = spec_from_args(args)
    validate_spec(spec)
    source_dir = locate_source(args.source_dir)
    source = load_fashion_mnist(source_dir)
    if not args.force and existing_meta_matches(args.output, spec, source):
        print(f"{args.output} is up to date (same arguments and source); use --force to rebuild")
        return 0
    print(f"building FashionScenes-CN from {source_dir} into {args.output}")
    start = time.perf_counter()
    meta = build_demo_dataset(source, spec, args.output, on_progress=print_progress)
    print(f"done in {time.perf_counter() - start:.1f}s")
    for split, stats in meta["splits"].items():
        duplicates = stats["all_caption_duplicates"]
        print(
            f"  {split}: {stats['num_samples']} scenes, {duplicates['total']} captions, "
            f"{duplicates['duplicates']} exact repeats, "
            f"{stats['all_captions_fitting_several_images']} fitting several images, "
            f"{stats['redrawn_scenes']} scenes redrawn"
        )
        noisy = {kind: n for kind, n in stats["noise"].items() if n}
        if noisy:
            print(f"  {split} web noise: " + ", ".join(f"{n} {kind}" for kind, n in noisy.items()))
    if "zeroshot" in meta:
        print(f"  zeroshot: {meta['zeroshot']['num_samples']} single garments (zeroshot_imgs.tsv, labels and classes per task)")
    for name, info in meta["files"].items():
        print(f"  {name}: {info['bytes'] / 1e6:.1f} MB")
    return 0
