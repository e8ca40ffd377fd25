"""Zero-shot classification: class names in Chinese prompts against labelled images.

    python tools/eval_zeroshot.py -c configs/demo/single_view.yaml --weights output/demo/train \
        --images demo_data/fashion_scenes_cn/zeroshot_imgs.tsv \
        --labels demo_data/fashion_scenes_cn/zeroshot_garment_labels.tsv \
        --classes demo_data/fashion_scenes_cn/zeroshot_garment_classes.txt \
        --templates demo_data/fashion_scenes_cn/zeroshot_templates.txt --json zeroshot.json

    python tools/eval_zeroshot.py -c CONFIG --weights CKPT --data photos_by_class/   # a folder per class

IMAGES is an ``image_id \\t base64`` TSV (the Chinese-CLIP image file), LABELS an
``image_id \\t label`` TSV, CLASSES one class a line (``name`` or ``id \\t name``),
TEMPLATES one prompt a line with ``{}`` for the name (default: a Chinese set shipped
with the package). Prints top-1, top-5, a per-class table and the most confused
pairs. See docs/evaluation.md.
"""
import argparse
import json
import time
from pathlib import Path

from ernievil2.commands import add_model_arguments, batch_settings, positive_int, trained_model

# Bad files or arguments: one line and exit code 2 (ernievil2.cli.run).
USER_ERRORS = (ValueError,)


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--data", help="a folder per class: each sub-folder's name is a class name, its images that class's "
                        "(instead of --images, --labels and --classes)")
    parser.add_argument("--images", help="image_id<TAB>base64 TSV")
    parser.add_argument("--labels", help="image_id<TAB>label TSV (a label is a class id, or its name when the classes have no ids)")
    parser.add_argument("--classes", help="class names, one a line: name, or id<TAB>name")
    parser.add_argument("--top-confused", type=positive_int, default=10, help="most confused pairs to list (default %(default)s)")
    parser.add_argument("--json", help="write the report here")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    files = (args.images, args.labels, args.classes)
    if bool(args.data) == any(files) or not (args.data or all(files)):
        parser.error("give --data FOLDER (a folder per class), or --images, --labels and --classes")
    from ernievil2.data.errors import skip_report_path
    from ernievil2.evaluation.classify import evaluate_zeroshot
    from ernievil2.evaluation.zeroshot import format_report

    for path in (*files, args.templates):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"file not found: {path}")
    if args.data and not Path(args.data).is_dir():
        raise ValueError(f"--data {args.data}: expected a folder holding a sub-folder of images per class, "
                         "got a file (an image TSV goes with --images, --labels and --classes)")
    config, model, tokenizer, transform = trained_model(args)
    batch, workers = batch_settings(args, config)
    if args.data:
        spec = {"folder": args.data, "templates": args.templates}
    else:
        spec = {"images": args.images, "labels": args.labels, "classes": args.classes, "templates": args.templates}
    started = time.time()
    report, counter = evaluate_zeroshot(model, tokenizer, transform, spec, batch, workers, args.on_error, n_confused=args.top_confused)
    report["seconds"] = round(time.time() - started, 2)
    print(format_report(report))
    print(f"\n{report['templates']} templates; {counter.summary()}; {report['seconds']:.1f}s")
    if args.json:
        Path(args.json).write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        print(f"report written to {args.json}")
        skipped = counter.write_report(skip_report_path(args.json))
        if skipped:
            print(f"skip report: {counter.total} records listed in {skipped}")
