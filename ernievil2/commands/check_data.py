"""Read a corpus through as training will, decode every image, and report what is wrong with it.

    python tools/check_data.py -c configs/my_train.yaml                   # Data.train (and Data.val)
    python tools/check_data.py --data pairs.tsv                           # official TSV
    python tools/check_data.py --data pairs.jsonl --format jsonl_folder
    python tools/check_data.py --data datasets/MUGE --format chinese_clip --split train

Prints the records read, the bad ones by reason with file:line, caption lengths in tokens
against Tokenizer.max_len (and how many would be cut), images whose bytes repeat under another
id, repeated captions, and image sizes. Exit code 0 only when no record is bad.
"""
import argparse
import time

from ernievil2.data.readers import DATA_FORMATS


def data_spec(args):
    if args.format == "chinese_clip":
        return {"format": "chinese_clip", "root": args.data, "split": args.split}
    if args.format == "jsonl_folder" and args.image_root:
        return {"format": "jsonl_folder", "path": args.data, "image_root": args.image_root}
    return {"format": args.format, "path": args.data}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", help="training config: its Data.train/val, Tokenizer and Data.num_workers "
                        "(default: the official tokenizer, and --data)")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="Section.key=value")
    parser.add_argument("--data", help="a data file (or a Chinese-CLIP folder) instead of the config's Data.train/val")
    parser.add_argument("--format", default="official_tsv", choices=DATA_FORMATS.names())
    parser.add_argument("--split", default="train", help="split name for --format chinese_clip")
    parser.add_argument("--image-root", help="image folder for --format jsonl_folder (default: the JSONL's folder)")
    parser.add_argument("--num-workers", type=int, help="decode processes (default: the config's Data.num_workers)")
    parser.add_argument("--report", help="write every bad record (where <TAB> reason) to this file")
    args = parser.parse_args(argv)
    if not (args.config or args.data):
        parser.error("give --data, or -c CONFIG whose Data.train to check")

    from ernievil2.config import default_config, load_config
    from ernievil2.data.check import check_corpus
    from ernievil2.data.tokenizer import build_tokenizer

    config = load_config(args.config, args.override) if args.config else default_config()
    if args.data:
        specs = [data_spec(args)]
    else:
        specs = [spec for spec in (config["Data"]["train"], config["Data"]["val"]) if spec is not None]
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
