"""Example text-to-image queries with an exported model, printed and drawn (examples.png).

    python tools/demo_report.py --model output/demo/export --data demo_data/fashion_scenes_cn \
        --output output/demo [--split test --queries 5 -k 5]
    python tools/demo_report.py --compare single-view=output/noisy/single multi-view=output/noisy/multiview

--compare prints training runs (output folders trained with Data.val) side by side instead.
"""
import argparse

from ernievil2.demo.report import compare_trained, demo_report, load_trained_run
from ernievil2.inference.predictor import ExportedModel

# A ValueError here means an export or data folder that is not what the report expects: a one-line error too (ernievil2.cli.run).
USER_ERRORS = (ValueError,)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a folder written by tools/export_model.py")
    parser.add_argument("--data", help="a Chinese-CLIP layout folder ({split}_imgs.tsv, {split}_texts.jsonl)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--output")
    parser.add_argument("--compare", nargs="+", metavar="LABEL=FOLDER", help="training output folders to table side by side")
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("-k", type=int, default=5)
    args = parser.parse_args(argv)
    if args.compare:
        runs = []
        for item in args.compare:
            label, sep, folder = item.partition("=")
            if not sep:
                parser.error(f"--compare: expected LABEL=FOLDER, got {item!r}")
            runs.append((label, *load_trained_run(folder)))
        print(compare_trained(runs))
        return 0
    missing = [f"--{name}" for name in ("model", "data", "output") if getattr(args, name) is None]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)} (or --compare)")
    text, png = demo_report(ExportedModel(args.model), args.data, args.split, args.output, args.queries, args.k)
    print(text)
    print(f"picture of these queries: {png}")
