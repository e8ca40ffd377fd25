"""Object tags for one's own corpus: a trained model tags every image of a data file.

    python tools/make_tags.py -c configs/demo/single_view.yaml --weights output/demo/train \
        --data mydata/pairs.tsv --vocab tags.txt --top-k 3 --threshold 0.1 --output mydata/pairs_tagged.tsv

The model is used as a zero-shot tagger: each tag of the vocabulary (one a line,
``tag`` or ``tag \\t prompt name``) is put in every prompt template and embedded
by the text tower; an image's tags are those whose probability (softmax over the
vocabulary of the logit scale times the cosine) passes ``--threshold``, at most
``--top-k`` of them. The output is the official TSV with the tags as its fourth
column (``text \\t image_id \\t base64 \\t tag,tag``), written line by line.
``--evaluate`` scores the new tags against the input's own (precision, recall).

    python tools/make_tags.py --paddleclas ResNet50 --paddleclas-weights ResNet50_pretrained.pdparams \
        --data mydata/pairs.tsv --vocab imagenet_tags_zh.txt --top-k 3 --output mydata/pairs_tagged.tsv

With ``--paddleclas`` a PaddleClas classifier tags instead: line i of the vocabulary
is the tag of its class i (so the file has as many lines as the classifier has
classes), and a tag's probability is the softmax of the classifier's logits.
See docs/data_format.md.
"""
import argparse
import json
import sys
import time
from pathlib import Path

from ernievil2.commands import add_model_arguments, batch_settings, positive_int, trained_model
from ernievil2.data.sources import add_data_arguments, spec_from_args

# Bad files or arguments: one line and exit code 2 (ernievil2.cli.run).
USER_ERRORS = (ValueError,)
PROGRESS_SECONDS = 10.0


def probability(text):
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a probability in [0, 1], got {value}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, required=False)
    parser.add_argument("--paddleclas", metavar="NAME", help="tag with this PaddleClas classifier (e.g. ResNet50) instead of -c/--weights")
    parser.add_argument("--paddleclas-weights", help="the classifier's .pdparams (every weight, its classifier included)")
    parser.add_argument("--image-size", type=positive_int, default=224, help="--paddleclas: input side (default %(default)s)")
    parser.add_argument("--resize-short", type=positive_int, default=256, help="--paddleclas: short side before the centre crop (default %(default)s)")
    add_data_arguments(parser, split="train")
    parser.add_argument("--vocab", required=True, help="tag vocabulary: one tag a line, or tag<TAB>prompt name")
    parser.add_argument("--top-k", type=positive_int, help="at most this many tags an image")
    parser.add_argument("--threshold", type=probability, help="only tags at least this probable")
    parser.add_argument("--output", required=True, help="official TSV with the tags column")
    parser.add_argument("--evaluate", action="store_true", help="score the tags against the input's own tags")
    parser.add_argument("--json", help="write the run's summary (and --evaluate's scores) here")
    return parser


def check_vocab(vocab):
    """Tags are written joined by ','; one holding a tag separator or a tab would not read back as itself."""
    from ernievil2.data.errors import DataError
    from ernievil2.data.readers import TAG_SEPARATORS

    for tag, line in zip(vocab.labels, vocab.lines):
        if TAG_SEPARATORS.search(tag) or "\t" in tag:
            raise DataError(vocab.path, line, f"tag {tag!r} holds a tag separator (, ， 、 ; ；): it would read back as several tags")


def paddleclas_tagger(args, vocab):
    """(pixels -> probabilities, transform) of the PaddleClas classifier named by ``args``."""
    from ernievil2.data.image_ops import EvalTransform
    from ernievil2.evaluation.classify import classifier_tagger, load_paddleclas_classifier

    if not Path(args.paddleclas_weights).is_file():
        raise FileNotFoundError(f"--paddleclas-weights: file not found: {args.paddleclas_weights}")
    net = load_paddleclas_classifier(args.paddleclas, args.paddleclas_weights, len(vocab.labels))
    return classifier_tagger(net), EvalTransform(args.image_size, args.resize_short)


def tsv_field(text):
    """A caption or id as one TSV field: tabs and line breaks become spaces."""
    return " ".join(text.replace("\t", " ").splitlines())


def official_line(record, tags):
    import base64

    image = base64.b64encode(record.image).decode("ascii")
    return f"{tsv_field(record.text)}\t{tsv_field(record.image_id)}\t{image}\t{','.join(tags)}\n"


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.top_k is None and args.threshold is None:
        parser.error("give --top-k, --threshold or both")
    if args.paddleclas:
        if args.config or args.weights or not args.paddleclas_weights:
            parser.error("--paddleclas takes --paddleclas-weights, not -c/--weights")
    elif not (args.config and args.weights):
        parser.error("give -c and --weights (a trained model), or --paddleclas and --paddleclas-weights")
    from ernievil2.data.classes import read_class_names, read_templates
    from ernievil2.data.errors import SkipCounter, skip_report_path
    from ernievil2.data.readers import check_pair_spec, open_pairs
    from ernievil2.evaluation.classify import tag_stream, zeroshot_tagger
    from ernievil2.evaluation.embed import Progress
    from ernievil2.evaluation.zeroshot import tag_precision_recall
    from ernievil2.files import atomic_text_file

    spec = spec_from_args(args)
    check_pair_spec(spec)
    vocab = read_class_names(args.vocab)
    check_vocab(vocab)
    if args.paddleclas:
        templates = ()
        probabilities, transform = paddleclas_tagger(args, vocab)
        batch, workers = args.batch_size or 64, args.num_workers or 0
    else:
        templates = read_templates(args.templates)
        config, model, tokenizer, transform = trained_model(args)
        batch, workers = batch_settings(args, config)
        probabilities = zeroshot_tagger(model, tokenizer, vocab, templates)
    counter = SkipCounter(args.on_error)
    progress = Progress("tagged", every=PROGRESS_SECONDS, printer=lambda m: print(m, file=sys.stderr, flush=True))
    predicted, true, n_tags = [], [], 0
    started = time.time()
    records = open_pairs(spec, counter)
    stream = tag_stream(probabilities, transform, records, vocab.labels, args.top_k, args.threshold, batch, workers, counter)
    with atomic_text_file(args.output) as out:
        for record, tags in stream:
            out.write(official_line(record, tags))
            progress.add(1)
            n_tags += len(tags)
            if args.evaluate:
                predicted.append(tags)
                true.append(record.tags)
    summary = {
        "images": progress.count,
        "tags_per_image": n_tags / max(1, progress.count),
        "vocab": len(vocab.labels),
        "templates": len(templates),
        "top_k": args.top_k,
        "threshold": args.threshold,
        "skipped": counter.total,
        "seconds": round(time.time() - started, 2),
    }
    print(
        f"tagged {summary['images']} images ({summary['tags_per_image']:.2f} tags an image) in {summary['seconds']:.1f}s "
        f"-> {args.output}; {counter.summary()}"
    )
    if args.evaluate:
        if not any(true):
            raise ValueError(f"--evaluate: {args.data} has no tags of its own to compare with")
        summary["against_input_tags"] = scores = tag_precision_recall(predicted, true)
        print(
            f"against the input's tags: precision {100 * scores['precision']:.1f}%, recall {100 * scores['recall']:.1f}%, "
            f"F1 {100 * scores['f1']:.1f}% ({scores['hits']} of {scores['predicted']} tags given, {scores['true']} true)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    skipped = counter.write_report(skip_report_path(args.output))
    if skipped:
        print(f"skip report: {counter.total} records listed in {skipped}")
