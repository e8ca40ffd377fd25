"""Export the image and text towers to Paddle Inference or ONNX, with a self-contained deploy config.

    python tools/export_model.py -c configs/ernievil2_base_vit16.yaml \\
        --weights OPEN_ERNIE_VIL2_BASE_ViT.pdparams --output inference/ernievil2_base
    python tools/export_model.py -c configs/tiny_official_fixture.yaml -o Tokenizer.max_len=64 \\
        --weights ../shared/fixtures/official_ernievil2_tiny/model.pdparams --output /tmp/tiny_export
    python tools/export_model.py -c CONFIG --weights CKPT --output OUT --format onnx        # ONNX Runtime, fp32
    python tools/export_model.py -c CONFIG --weights CKPT --output OUT --precision int8 \\
        --calib-data train.tsv --calib-samples 300                                          # ONNX Runtime, int8
    python tools/export_model.py -c CONFIG --weights CKPT --output OUT --precision bf16     # oneDNN bf16

--weights: an official .pdparams, a PaddleNLP save_pretrained folder, or a training checkpoint of ours.
--format paddle writes OUTPUT/{image,text}/inference.{json,pdiparams}; --format onnx writes
OUTPUT/{image,text}/model.onnx. Both write OUTPUT/vocab.txt and OUTPUT/deploy.yaml, which records the
format and precision: the predictor and the service load any export without further flags.
--precision: fp32; bf16 (Paddle format: oneDNN runs the fp32 program in bf16, on CPUs with avx512_bf16
or AMX); int8 (ONNX format: post-training quantisation calibrated on --calib-data, an official
text/image_id/base64 TSV of your data). The export is then checked against the dygraph model
(--no-check skips that). See docs/export_and_serving.md.
"""
import argparse
import sys

import numpy as np

from ernievil2.commands import WEIGHTS_HELP
from ernievil2.config import load_config
from ernievil2.inference.deploy import RUNTIMES, check_runtime
from ernievil2.inference.errors import DeviceUnavailableError
from ernievil2.inference.export import export_model, load_model, parity_check
from ernievil2.inference.predictor import ExportedModel, PredictorOptions

PRECISIONS = ("fp32", "bf16", "int8")
# Largest |exported - dygraph| on L2-normalised embeddings.
# fp32 on CPU agrees to about 1e-6; anything near 1e-4 means the export changed the maths.
# bf16 keeps 8 significant bits (relative rounding 2^-9 = 0.002 per value); errors add over the
# layers, and 0.05 still keeps a 64..1024-d unit vector within cosine 0.99 of fp32.
# int8: one step of a per-tensor activation scale is 1/255 of the calibrated range, and small models
# suffer most. Measured on calibration samples: tiny fixture 0.03 (image) and 0.05 (text); over the
# whole demo test split the demo model reached 0.19 (and lost 9 points of recall, docs/benchmarks.md).
# A broken quantisation (wrong scales, a mis-wired graph) gives differences near 1 on unit vectors:
# 0.15 catches that, and the recall comparison of benchmarks/bench_precision.py judges the rest.
PARITY_TOLERANCE = {"fp32": 1e-4, "bf16": 0.05, "int8": 0.15}
# int8 is checked on this many calibration images and captions (the data it was tuned for).
INT8_CHECK_SAMPLES = 16


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("-o", "--override", action="append", default=[], metavar="Section.key=value")
    parser.add_argument("--weights", required=True, help=WEIGHTS_HELP)
    parser.add_argument("--output", required=True, help="export folder")
    parser.add_argument("--format", choices=tuple(RUNTIMES), default=None,
                        help="paddle (Paddle Inference) or onnx (ONNX Runtime); default: onnx for int8, else paddle")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--calib-data", default=None, metavar="TSV",
                        help="int8: official TSV (caption, image id, base64 image) of your data to calibrate on")
    parser.add_argument("--calib-samples", type=int, default=300, help="int8: calibrate on the first N lines")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--no-check", action="store_true", help="skip the exported-vs-dygraph check")
    args = parser.parse_args(argv)
    if args.format is None:
        args.format = "onnx" if args.precision == "int8" else "paddle"
    if args.precision == "int8" and args.calib_data is None:
        parser.error("--precision int8 needs --calib-data (a TSV of your data to calibrate on)")
    if args.calib_data is not None and args.precision != "int8":
        parser.error("--calib-data is for --precision int8 only")
    return args


def bf16_supported():
    import paddle

    return paddle.base.core.supports_bfloat16()


def check_inputs(exported, calibration):
    """Preprocessed images and token ids of the first calibration samples (for the int8 check)."""
    images, texts = calibration
    pixels = np.stack([exported.preprocess(rgb) for rgb in images[:INT8_CHECK_SAMPLES]])
    ids = exported.tokenizer.encode(texts[:INT8_CHECK_SAMPLES])
    return pixels, ids


def main(argv=None):
    args = parse_args(argv)
    check_runtime(args.format, args.precision, "export")
    if args.precision == "bf16" and not args.no_check and not bf16_supported():
        raise DeviceUnavailableError(
            "this CPU has no bf16 instructions (avx512_bf16 or AMX), so a bf16 export cannot be checked here; "
            "pass --no-check to export it for a CPU that has them"
        )
    config = load_config(args.config, args.override)
    model = load_model(config, args.weights)
    calibration = None
    if args.precision == "int8":
        from ernievil2.inference.onnx_export import read_calibration

        calibration = read_calibration(args.calib_data, args.calib_samples)
        print(f"calibration: {len(calibration[0])} images, {len(calibration[1])} captions from {args.calib_data}")
    deploy = export_model(model, config, args.weights, args.output, overwrite=args.overwrite, fmt=args.format,
                          precision=args.precision, calibration=calibration)
    params = deploy["architecture"]["parameters"]
    print(
        f"exported to {args.output} ({args.format}, {args.precision}): {deploy['embed_dim']}-d embeddings, "
        f"image tower {params['image']:,} and text tower {params['text']:,} parameters"
    )
    if args.no_check:
        return 0
    exported = ExportedModel(args.output, PredictorOptions())
    inputs = check_inputs(exported, calibration) if calibration else (None, None)
    diffs = parity_check(model, exported, *inputs)
    tolerance = PARITY_TOLERANCE[args.precision]
    print("max |exported - dygraph|: " + ", ".join(f"{tower} {diff:.2e}" for tower, diff in diffs.items())
          + f" (tolerance {tolerance:g} for {args.precision})")
    if max(diffs.values()) > tolerance:
        print(f"error: the export differs from the dygraph model by more than {tolerance}", file=sys.stderr)
        return 1
    return 0
