"""Image-text retrieval metrics from saved embeddings.

    python tools/eval_retrieval.py output/features.npz --protocol both --json output/retrieval.json
    python tools/eval_retrieval.py infer_output.txt          # official run_infer.py output
    python tools/eval_retrieval.py --text-emb text.npy --image-emb image.npy

FEATURES is an .npz written by tools/extract_features.py (both protocols) or
the official ``text_vec \\t image_vec \\t idx`` text file (official protocol only).
See docs/evaluation.md.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ernievil2.commands import positive_int
from ernievil2.evaluation import retrieval

PROTOCOLS = ("official", "multi_gt", "both")
NORM_TOLERANCE = 1e-3


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("features", nargs="?", help="features .npz, or official-format embedding text file")
    parser.add_argument("--text-emb", help=".npy of text embeddings (row i pairs with image row i)")
    parser.add_argument("--image-emb", help=".npy of image embeddings")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="official")
    parser.add_argument("--json", help="write all metrics to this JSON file")
    parser.add_argument(
        "--block-size",
        type=positive_int,
        default=retrieval.DEFAULT_BLOCK_SIZE,
        help="texts and images per score block; memory ~5 * N^2 bytes (default %(default)s)",
    )
    parser.add_argument("--normalize", action="store_true", help="L2-normalise embeddings before scoring")
    return parser


def input_paths(parser, args):
    """The embedding files named on the command line, checked to exist."""
    npy_pair = (args.text_emb, args.image_emb)
    if args.features and any(npy_pair):
        parser.error("give FEATURES or --text-emb/--image-emb, not both")
    if not args.features and not all(npy_pair):
        parser.error("give FEATURES, or both --text-emb and --image-emb")
    paths = [args.features] if args.features else list(npy_pair)
    for path in paths:
        if not Path(path).is_file():
            parser.error(f"file not found: {path}")
    return paths


def load_inputs(paths):
    """(text_emb, image_emb, Features or None when the input carries no image ids)."""
    if len(paths) == 2:
        return np.load(paths[0]), np.load(paths[1]), None
    if retrieval.is_npz(paths[0]):
        features = retrieval.load_features(paths[0])
        return features.text_emb, features.image_emb, features
    text_emb, image_emb = retrieval.read_official_embeddings(paths[0])
    return text_emb, image_emb, None


def run(parser, args):
    paths = input_paths(parser, args)
    text_emb, image_emb, features = load_inputs(paths)
    wanted = ["official", "multi_gt"] if args.protocol == "both" else [args.protocol]
    obstacles = {p: retrieval.protocol_obstacle(p, len(text_emb), len(image_emb), features is not None) for p in wanted}
    protocols = [p for p in wanted if obstacles[p] is None]
    if not protocols:
        raise retrieval.RetrievalInputError(
            "; ".join(f"the {p} protocol cannot score this set: {obstacles[p]}" for p in wanted)
        )
    if args.normalize:
        retrieval.normalize_rows_(text_emb)
        retrieval.normalize_rows_(image_emb)
    for name, emb in (("text", text_emb), ("image", image_emb)):
        error = retrieval.max_norm_error(emb)
        if error > NORM_TOLERANCE:
            print(
                f"note: {name} embeddings are not unit length (max |norm - 1| = {error:.3g}); "
                "scores are raw dot products (--normalize to L2-normalise)",
                file=sys.stderr,
            )

    report = {}
    for protocol in wanted:
        if obstacles[protocol] is not None:
            print(f"{protocol} protocol skipped: {obstacles[protocol]}")
            print()
            report[protocol] = {"skipped": obstacles[protocol]}
    for protocol in protocols:
        if protocol == "official":
            metrics = retrieval.evaluate_official(text_emb, image_emb, args.block_size)
            title = f"official protocol: {len(text_emb)} text-image pairs, gallery not deduplicated"
        else:
            metrics = retrieval.evaluate_multi_gt(features, args.block_size)
            title = (
                f"multi_gt protocol: {metrics['image2text']['n_gallery']} texts, "
                f"{metrics['text2image']['n_gallery']} unique images"
            )
        report[protocol] = metrics
        print(title)
        print(retrieval.official_table(metrics))
        print()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"metrics written to {args.json}")


def main(argv=None):
    parser = build_parser()
    run(parser, parser.parse_args(argv))
