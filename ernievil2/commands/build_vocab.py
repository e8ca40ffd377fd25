"""Build a WordPiece vocab.txt (``token\\tid``, ERNIE 3.0 layout) from caption files.

    python tools/build_vocab.py --input demo_data/fashion_scenes_cn/train.tsv \\
        demo_data/fashion_scenes_cn/test.tsv --output demo_data/fashion_scenes_cn/vocab.txt
    python tools/build_vocab.py --input captions.txt more.tsv --output vocab.txt --size 8000 --min-freq 2

Inputs: official ERNIE-ViL ``.tsv`` (caption and tags columns), Chinese-CLIP ``.jsonl``
(``text``), or plain text, one sentence per line.
"""
import argparse
import os
import sys

from ernievil2.data.vocab_builder import build_vocab, format_vocab

SHOWN_DROPPED = 20


# A ValueError here means bad arguments or an input file that yields no vocabulary: a one-line error too (ernievil2.cli.run).
USER_ERRORS = (ValueError,)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", nargs="+", required=True, help=".tsv, .jsonl or plain text files")
    parser.add_argument("--output", required=True, help="vocab.txt to write")
    parser.add_argument("--size", type=int, default=None, help="at most this many tokens, specials included")
    parser.add_argument("--min-freq", type=int, default=1, help="drop pieces seen fewer times")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    missing = [path for path in args.input if not os.path.isfile(path)]
    if missing:
        print(f"error: input not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    tokens, counts = build_vocab(args.input, args.size, args.min_freq)
    with open(args.output, "w", encoding="utf-8", newline="\n") as f:
        f.write(format_vocab(tokens))
    kept = set(tokens)
    dropped = sorted(c for c in counts.characters if c not in kept)
    print(
        f"wrote {len(tokens)} tokens to {args.output} "
        f"({len(counts.characters)} distinct characters, {len(counts.words)} distinct multi-character words seen)"
    )
    if dropped:
        shown = " ".join(dropped[:SHOWN_DROPPED]) + (" ..." if len(dropped) > SHOWN_DROPPED else "")
        print(f"warning: {len(dropped)} characters will tokenise as [UNK]: {shown}")
    return 0
