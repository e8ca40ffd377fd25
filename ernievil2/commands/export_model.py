"""Export the image and text towers to Paddle Inference, with a self-contained deploy config.

    python tools/export_model.py -c configs/ernievil2_base_vit16.yaml \\
        --weights OPEN_ERNIE_VIL2_BASE_ViT.pdparams --output inference/ernievil2_base
    python tools/export_model.py -c configs/tiny_official_fixture.yaml -o Tokenizer.max_len=64 \\
        --weights ../shared/fixtures/official_ernievil2_tiny/model.pdparams --output /tmp/tiny_export

--weights: an official .pdparams, a PaddleNLP save_pretrained folder, or a training checkpoint of ours.
Writes OUTPUT/{image,text}/inference.{json,pdiparams}, OUTPUT/vocab.txt and OUTPUT/deploy.yaml, then
checks the exported towers against the dygraph model on a small input (--no-check skips that).
See docs/export_and_serving.md.
"""
import argparse
import sys

from ernievil2.config import load_config
from ernievil2.inference.export import export_model, load_model, parity_check
from ernievil2.inference.predictor import ExportedModel, PredictorOptions

# fp32 on CPU agrees to about 1e-6; anything near this means the export changed the maths.
PARITY_TOLERANCE = 1e-4


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("-o", "--override", action="append", default=[], metavar="Section.key=value")
    parser.add_argument("--weights", required=True, help="official .pdparams, PaddleNLP folder, or our checkpoint")
    parser.add_argument("--output", required=True, help="export folder")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--no-check", action="store_true", help="skip the exported-vs-dygraph check")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    config = load_config(args.config, args.override)
    model = load_model(config, args.weights)
    deploy = export_model(model, config, args.weights, args.output, overwrite=args.overwrite)
    params = deploy["architecture"]["parameters"]
    print(
        f"exported to {args.output}: {deploy['embed_dim']}-d embeddings, "
        f"image tower {params['image']:,} and text tower {params['text']:,} parameters"
    )
    if args.no_check:
        return 0
    diffs = parity_check(model, ExportedModel(args.output, PredictorOptions()))
    print("max |exported - dygraph|: " + ", ".join(f"{tower} {diff:.2e}" for tower, diff in diffs.items()))
    if max(diffs.values()) > PARITY_TOLERANCE:
        print(f"error: the export differs from the dygraph model by more than {PARITY_TOLERANCE}", file=sys.stderr)
        return 1
    return 0
