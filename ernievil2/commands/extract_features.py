"""Embed a data split with a model: text and image features for retrieval evaluation.

    python tools/extract_features.py -c configs/ernievil2_base_vit16.yaml \
        --weights OPEN_ERNIE_VIL2_BASE_ViT.pdparams --data test.coco_cn.data --output feats.npz
    python tools/extract_features.py -c CONFIG --weights ckpt/ --format chinese_clip \
        --data datasets/COCO-CN --split test --output feats.npz
    python tools/eval_retrieval.py feats.npz --protocol both

``--official-txt`` also writes the official ``run_infer.py`` output format
(``text_vec \\t image_vec \\t idx`` per pair) for the official ``eval_retri.py``.
"""
import argparse
import time

import numpy as np

from ernievil2.commands import WEIGHTS_HELP, batch_settings, trained_model
from ernievil2.data.errors import skip_report_path
from ernievil2.data.sources import add_data_arguments, spec_from_args
from ernievil2.evaluation.embed import embed_split
from ernievil2.evaluation.retrieval import save_features

# A ValueError here means a bad data file or spec: a one-line error too (ernievil2.cli.run).
USER_ERRORS = (ValueError,)


def write_official_txt(path, features):
    """One line per pair, as the official run_infer.py writes it (idx is always 1 there)."""
    with open(path, "w", encoding="utf-8") as f:
        for text, image in zip(features.text_emb, features.image_emb):
            f.write(" ".join(map(str, text)) + "\t" + " ".join(map(str, image)) + "\t1\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("-o", "--override", action="append", default=[], metavar="Section.key=value")
    parser.add_argument("--weights", required=True, help=WEIGHTS_HELP)
    add_data_arguments(parser)
    parser.add_argument("--output", required=True, help="features .npz")
    parser.add_argument("--official-txt", help="also write the official embedding text format here")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--on-error", choices=("raise", "skip"), default="raise")
    args = parser.parse_args(argv)
    config, model, tokenizer, transform = trained_model(args)
    started = time.time()
    features, counter = embed_split(model, spec_from_args(args), tokenizer, transform, *batch_settings(args, config), args.on_error)
    save_features(args.output, features.text_emb, features.image_emb, features.image_ids, features.text_ids, features.text_pos_indptr, features.text_pos_ids)
    if args.official_txt:
        write_official_txt(args.official_txt, features)
    print(
        f"{len(features.text_emb)} texts, {len(np.unique(features.image_ids))} images "
        f"in {time.time() - started:.1f}s -> {args.output}; {counter.summary()}"
    )
    report = counter.write_report(skip_report_path(args.output))
    if report:
        print(f"skip report: {counter.total} records listed in {report}")
