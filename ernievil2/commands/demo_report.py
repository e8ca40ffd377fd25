"""Example text-to-image queries with an exported model, printed and drawn (examples.png).

    python tools/demo_report.py --model output/demo/export --data demo_data/fashion_scenes_cn \
        --output output/demo [--split test --queries 5 -k 5]
"""
import argparse

from ernievil2.inference.predictor import ExportedModel
from ernievil2.demo.report import demo_report


# A ValueError here means an export or data folder that is not what the report expects: a one-line error too (ernievil2.cli.run).
USER_ERRORS = (ValueError,)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a folder written by tools/export_model.py")
    parser.add_argument("--data", required=True, help="a Chinese-CLIP layout folder ({split}_imgs.tsv, {split}_texts.jsonl)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--output", required=True)
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("-k", type=int, default=5)
    args = parser.parse_args(argv)
    text, png = demo_report(ExportedModel(args.model), args.data, args.split, args.output, args.queries, args.k)
    print(text)
    print(f"picture of these queries: {png}")
