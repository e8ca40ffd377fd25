"""Encode images and texts with an exported model (Paddle Inference), and search a gallery.

    python tools/infer.py embed-images --model EXPORT --images photos/ a.jpg --output images.npz
    python tools/infer.py embed-images --model EXPORT --tsv test.coco_cn.data --output images.npz
    python tools/infer.py embed-texts  --model EXPORT --texts 一张草莓的照片 一只猫 --output texts.npz
    python tools/infer.py embed-texts  --model EXPORT --text-file captions.txt --output texts.npz
    python tools/infer.py search --model EXPORT --gallery images.npz --text 一张草莓的照片 -k 5
    python tools/infer.py search --model EXPORT --gallery INDEX_DIR --text 一张草莓的照片 -k 5
    python tools/infer.py search --model EXPORT --gallery INDEX_DIR/texts --image photo.jpg -k 5

EXPORT is a folder written by tools/export_model.py. A gallery is an .npz written by embed-*, an .npy of
image embeddings (ids are row numbers), or a folder written by tools/build_index.py.
Predictor options (--device, --threads, --no-onednn, --tensorrt, ...) apply to every command.
"""
import argparse
import sys

import numpy as np

from ernievil2.data.errors import ON_ERROR_CHOICES, SkipCounter, skip_report_path
from ernievil2.inference.cli import add_predictor_arguments, predictor_options
from ernievil2.inference.errors import USER_ERRORS
from ernievil2.inference.index import load_gallery, save_embeddings
from ernievil2.inference.inputs import (
    encode_image_batches,
    iter_image_files,
    iter_tsv_images,
    read_text_file,
    unique_images,
)
from ernievil2.inference.predictor import ExportedModel


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    images = commands.add_parser("embed-images", help="image embeddings -> .npz")
    source = images.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", nargs="+", help="image files and/or folders")
    source.add_argument("--tsv", help="official TSV (text, image_id, base64); each image id once")
    images.add_argument("--batch-size", type=int, default=16)
    images.add_argument("--on-error", choices=ON_ERROR_CHOICES, default="raise", help="undecodable images")

    texts = commands.add_parser("embed-texts", help="text embeddings -> .npz")
    source = texts.add_mutually_exclusive_group(required=True)
    source.add_argument("--texts", nargs="+")
    source.add_argument("--text-file", help="UTF-8, one text per line")
    texts.add_argument("--batch-size", type=int, default=64)

    search = commands.add_parser("search", help="top-k gallery items for text or image queries")
    query = search.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", nargs="+", help="text queries")
    query.add_argument("--image", nargs="+", help="image query files")
    search.add_argument("--gallery", required=True, help=".npz, .npy or a build_index.py folder")
    search.add_argument("-k", type=int, default=5)

    for sub in (images, texts):
        sub.add_argument("--output", required=True, help=".npz to write")
    for sub in (images, texts, search):
        sub.add_argument("--model", required=True, help="export folder")
        add_predictor_arguments(sub)
    return parser.parse_args(argv)


def load_model(args):
    return ExportedModel(args.model, predictor_options(args), max_len=args.max_len)


def embed_images(args):
    model = load_model(args)
    # One counter for the TSV's lines and the images' decoding: --on-error holds for both.
    counter = SkipCounter(args.on_error)
    items = unique_images(iter_tsv_images(args.tsv, counter)) if args.tsv else iter_image_files(args.images)
    ids, batches = [], []
    for kept, _, embeddings in encode_image_batches(model, items, args.batch_size, counter):
        ids.extend(item.image_id for item in kept)
        batches.append(embeddings)
        print(f"\r{len(ids)} images", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    if not ids:
        print(f"error: no decodable images ({counter.summary()})", file=sys.stderr)
        return 1
    save_embeddings(args.output, np.concatenate(batches), ids, "image", model.model_id)
    print(f"wrote {len(ids)} image embeddings to {args.output}; {counter.summary()}")
    report = counter.write_report(skip_report_path(args.output))
    if report:
        print(f"skip report: {counter.total} records listed in {report}")
    return 0


def embed_texts(args):
    model = load_model(args)
    texts = args.texts or read_text_file(args.text_file)
    embeddings = model.encode_texts(texts, args.batch_size)
    save_embeddings(args.output, embeddings, range(len(texts)), "text", model.model_id, texts=texts)
    print(f"wrote {len(texts)} text embeddings to {args.output}")
    return 0


def print_hits(label, gallery, scores, positions):
    print(f"query: {label}")
    for rank, (score, position) in enumerate(zip(scores, positions), start=1):
        caption = gallery.text(position)
        text = f"  {caption}" if caption is not None else ""
        print(f"  {rank:>3}  {score:.4f}  {gallery.ids[position]}{text}")


def search(args):
    model = load_model(args)
    gallery = load_gallery(args.gallery)
    gallery.check_model(model.model_id, model.embed_dim)
    if args.text:
        labels, queries = args.text, model.encode_texts(args.text)
    else:
        items = list(iter_image_files(args.image))
        labels = [item.image_id for item in items]
        queries = model.encode_images([item.decode() for item in items])
    scores, positions = gallery.search(queries, args.k)
    print(f"{'text' if args.text else 'image'} -> {gallery.kind} ({gallery.size} items)")
    for label, row_scores, row_positions in zip(labels, scores, positions):
        print_hits(label, gallery, row_scores, row_positions)
    return 0


COMMANDS = {"embed-images": embed_images, "embed-texts": embed_texts, "search": search}


def main(argv=None):
    args = parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
