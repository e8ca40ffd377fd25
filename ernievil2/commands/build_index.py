"""Build a search gallery (faiss index + ids + thumbnails, and the captions) for tools/serve.py.

    python tools/build_index.py --model EXPORT --tsv test.coco_cn.data --output INDEX_DIR
    python tools/build_index.py --model EXPORT --images photos/ --output INDEX_DIR
    python tools/build_index.py --model EXPORT --data pairs.jsonl --output INDEX_DIR    # or a Chinese-CLIP folder

From an official TSV (text, image_id, base64) every image id is encoded once and every caption of a
decodable image goes into INDEX_DIR/texts, which serves image -> text search (--no-texts skips it).
See docs/export_and_serving.md for the layout.
"""
import argparse
import os
import shutil
import sys

from ernievil2.data.errors import ON_ERROR_CHOICES, SkipCounter, skip_report_path
from ernievil2.data.sources import add_data_arguments, spec_from_args
from ernievil2.inference.cli import add_predictor_arguments, predictor_options
from ernievil2.inference.errors import USER_ERRORS
from ernievil2.inference.galleries import build_galleries, save_galleries
from ernievil2.inference.index import THUMBNAIL_SIZE
from ernievil2.inference.inputs import iter_image_files, iter_pair_images, iter_tsv_images
from ernievil2.inference.predictor import ExportedModel


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="export folder (tools/export_model.py)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--tsv", help="official TSV: text, image_id, base64")
    source.add_argument("--images", nargs="+", help="image files and/or folders (ids are the paths)")
    add_data_arguments(parser, data_group=source)
    parser.add_argument("--output", required=True, help="gallery folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing gallery folder")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--thumbnail-size", type=int, default=THUMBNAIL_SIZE, help="longest side of stored thumbnails")
    parser.add_argument("--no-texts", action="store_true", help="no caption gallery (image -> text search)")
    parser.add_argument("--on-error", choices=ON_ERROR_CHOICES, default="raise", help="bad lines and images")
    add_predictor_arguments(parser)
    return parser.parse_args(argv)


def build(args):
    if os.path.exists(args.output) and os.listdir(args.output):
        if not args.overwrite:
            print(f"error: {args.output} exists and is not empty (pass --overwrite)", file=sys.stderr)
            return 2
        shutil.rmtree(args.output)
    model = ExportedModel(args.model, predictor_options(args), max_len=args.max_len)
    counter = SkipCounter(args.on_error)
    if args.data:
        items = iter_pair_images(spec_from_args(args), counter)
    else:
        items = iter_tsv_images(args.tsv, counter) if args.tsv else iter_image_files(args.images)
    images, texts = build_galleries(
        model, items, args.batch_size, counter, args.thumbnail_size, with_texts=not args.no_texts
    )
    save_galleries(args.output, images, texts)
    caption_note = f" and {texts.size} captions" if texts else ""
    print(f"wrote {images.size} images{caption_note} to {args.output}; {counter.summary()}")
    report = counter.write_report(skip_report_path(args.output.rstrip("/")))
    if report:
        print(f"skip report: {counter.total} records listed in {report}")
    return 0


def main(argv=None):
    args = parse_args(argv)
    try:
        return build(args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
