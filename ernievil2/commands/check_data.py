"""Read a corpus through as training will, decode every image, and report what is wrong with it.

    python tools/check_data.py -c configs/my_train.yaml                   # Data.train (and Data.val, Data.replay)
    python tools/check_data.py --data pairs.tsv                           # official TSV
    python tools/check_data.py --data pairs.jsonl                         # JSONL + image files
    python tools/check_data.py --data datasets/MUGE --split train         # Chinese-CLIP folder

Prints the records read, the bad ones by reason with file:line, caption lengths in tokens
against Tokenizer.max_len (and how many would be cut), images whose bytes repeat under another
id, repeated captions, and image sizes. Exit code 0 only when no record is bad.
"""
import argparse
import time

from ernievil2.data.sources import add_data_arguments, spec_from_args


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", help="training config: its Data.train/val/replay, Tokenizer and Data.num_workers "
                        "(default: the official tokenizer, and --data)")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="Section.key=value")
    add_data_arguments(parser, required=False, split="train")
    parser.add_argument("--num-workers", type=int, help="decode processes (default: the config's Data.num_workers)")
    parser.add_argument("--report", help="write every bad record (where <TAB> reason) to this file")
    args = parser.parse_args(argv)
    if not (args.config or args.data):
        parser.error("give --data, or -c CONFIG whose Data.train to check")

    from ernievil2.config import PAIR_SPECS, default_config, load_config
    from ernievil2.data.check import check_corpus
    from ernievil2.data.tokenizer import build_tokenizer

    config = load_config(args.config, args.override) if args.config else default_config()
    if args.data:
        specs = [spec_from_args(args)]
    else:
        specs = [config["Data"][key] for key in PAIR_SPECS if config["Data"][key] is not None]
    workers = config["Data"]["num_workers"] if args.num_workers is None else args.num_workers
    tokenizer = build_tokenizer(config)
    started = time.time()
    report = check_corpus(specs, tokenizer, workers)
    for line in report.lines():
        print(line)
    elapsed = time.time() - started
    print(f"checked in {elapsed:.1f}s ({len(report.sizes) / max(elapsed, 1e-9):.0f} images/s, {workers} decode workers)")
    if args.report and report.counter.write_report(args.report):
        print(f"bad records listed in {args.report}")
    return 1 if report.bad else 0
