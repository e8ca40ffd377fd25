"""One ``--data`` / ``--format`` for every tool that reads image-text pairs, through the readers' registry.

``--format auto`` (the default) recognises the three formats of docs/data_format.md from
what the path is: a folder with ``{split}_texts.jsonl`` is ``chinese_clip``, a file whose
first line is a JSON object ``jsonl_folder``, any other file ``official_tsv``. A format
given by name is checked against the same signs, so a mismatch is one error naming the
format expected and the one seen, instead of a reader failing on line 1.
"""
import os

from .readers import DATA_FORMATS

AUTO = "auto"
# What each format is, for the messages.
DESCRIPTIONS = {
    "official_tsv": "a file of text <TAB> image_id <TAB> base64 lines",
    "jsonl_folder": 'a file of JSON lines {"text": ..., "image": path}',
    "chinese_clip": "a folder with {split}_imgs.tsv and {split}_texts.jsonl",
}


class DataFormatError(ValueError):
    """``--data`` is not what ``--format`` reads, or its format cannot be told; the message names both."""


def add_data_arguments(parser, required=True, split="test", data_group=None):
    """``--data``, ``--format``, ``--split``, ``--image-root``; ``--data`` goes in ``data_group`` when given
    (a mutually exclusive group of the tool's other sources)."""
    (data_group or parser).add_argument(
        "--data", required=required and data_group is None, help="pairs: an official TSV, a JSONL, or a Chinese-CLIP folder"
    )
    parser.add_argument("--format", default=AUTO, choices=(AUTO, *DATA_FORMATS.names()),
                        help="the format of --data (default: recognised from it)")
    parser.add_argument("--split", default=split, help="split name for a Chinese-CLIP folder (default: %(default)s)")
    parser.add_argument("--image-root", help="image folder for a JSONL (default: the JSONL's folder)")


def _first_content(path):
    with open(path, "rb") as f:
        for raw in f:
            text = raw.strip().lstrip(b"\xef\xbb\xbf")
            if text:
                return text
    return b""


def seen_format(path, split):
    """The format ``path`` looks like (a name of :data:`DESCRIPTIONS`), or a description of what it is."""
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, f"{split}_texts.jsonl")):
            return "chinese_clip"
        names = sorted(os.listdir(path))[:5]
        return f"a folder without {split}_texts.jsonl (holding {', '.join(names) or 'nothing'})"
    if not os.path.exists(path):
        raise FileNotFoundError(f"--data {path}: no such file or folder")
    return "jsonl_folder" if _first_content(path).startswith(b"{") else "official_tsv"


def data_spec(data, fmt=AUTO, split="test", image_root=None):
    """The reader spec for ``--data``/``--format``; a :class:`DataFormatError` naming the expected and the seen format."""
    seen = seen_format(data, split)
    if fmt == AUTO:
        if seen not in DESCRIPTIONS:
            raise DataFormatError(
                f"--data {data}: cannot tell its format: it is {seen}; expected "
                + "; or ".join(f"{name}: {what}" for name, what in DESCRIPTIONS.items())
            )
        fmt = seen
    elif seen != fmt and fmt in DESCRIPTIONS:
        looks = f"it looks like {seen} ({DESCRIPTIONS[seen]})" if seen in DESCRIPTIONS else f"it is {seen}"
        hint = f": pass --format {seen}" if seen in DESCRIPTIONS else ""
        raise DataFormatError(f"--data {data}: --format {fmt} expects {DESCRIPTIONS[fmt]}, but {looks}{hint}")
    if fmt == "chinese_clip":
        return {"format": fmt, "root": data, "split": split}
    if fmt == "jsonl_folder" and image_root:
        return {"format": fmt, "path": data, "image_root": image_root}
    return {"format": fmt, "path": data}


def spec_from_args(args):
    return data_spec(args.data, args.format, args.split, args.image_root)
