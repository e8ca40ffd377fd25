"""Reading a corpus through before training: every record, every image decoded (``ernievil2-check-data``).

The records come from the same readers, and the images go through the same decoder
(:func:`~ernievil2.data.readers.decode_image_bytes`, in the same kind of worker processes)
as in training, so what this check passes, training reads; a truncated JPEG is found here
rather than hours into a run.
"""
import dataclasses
import hashlib
from typing import Dict, List, Tuple

import numpy as np

from ..iters import batched
from .errors import DataError, SkipCounter, split_where
from .parallel import OrderedPool
from .pipeline import expand_sources
from .readers import decode_image_bytes, open_pairs

PERCENTILES = (50, 90, 99, 100)
# [CLS] and [SEP] around every caption's pieces.
SPECIAL_TOKENS_PER_TEXT = 2


def image_sizes(job):
    """``(width, height)``, or the :class:`DataError`, of each ``(bytes, where)`` of one batch (a worker's task)."""
    out = []
    for data, where in job:
        try:
            rgb = decode_image_bytes(data, where)
        except DataError as err:
            out.append(err)
        else:
            out.append((rgb.shape[1], rgb.shape[0]))
    return out


def percentiles(values, points=PERCENTILES):
    """``{p: value}`` (nearest rank, so every value is one that occurred); empty for no values."""
    if len(values) == 0:
        return {}
    ordered = np.sort(np.asarray(values))
    return {p: ordered[min(len(ordered) - 1, max(0, int(np.ceil(p / 100 * len(ordered))) - 1))].item() for p in points}


def _file_order(where):
    path, line = split_where(where)
    return path, line or 0


@dataclasses.dataclass
class CorpusReport:
    """What one pass over a corpus found."""

    max_len: int
    counter: SkipCounter = dataclasses.field(default_factory=lambda: SkipCounter("skip"))
    records: int = 0
    caption_tokens: List[int] = dataclasses.field(default_factory=list)
    sizes: List[Tuple[int, int]] = dataclasses.field(default_factory=list)
    duplicate_images: Dict[str, str] = dataclasses.field(default_factory=dict)  # image id -> id of the same bytes
    duplicate_captions: int = 0

    @property
    def bad(self):
        return self.counter.total

    @property
    def cut(self):
        return sum(n > self.max_len for n in self.caption_tokens)

    def lines(self):
        """The report, as printed."""
        out = [f"records: {self.records} read; images: {len(self.sizes)} decoded"]
        if self.bad:
            out.append(f"bad records: {self.bad}")
            out += [f"  {reason}: {n}" for reason, n in self.counter.by_reason.most_common()]
            located = sorted(self.counter.skipped.items(), key=lambda item: _file_order(item[0]))
            out += [f"  {where}: {reason}" for where, reason in located[:10]]
            if self.bad > 10:
                out.append(f"  ... {self.bad - 10} more (--report FILE lists them all)")
        else:
            out.append("bad records: none")
        tokens = percentiles(self.caption_tokens)
        if tokens:
            shown = ", ".join(f"p{p} {v}" for p, v in tokens.items() if p != 100)
            out.append(
                f"caption length in tokens (with [CLS] [SEP]): {shown}, max {tokens[100]}; "
                f"max_len {self.max_len}: {self.cut} of {len(self.caption_tokens)} captions would be cut"
            )
        if self.sizes:
            widths, heights = zip(*self.sizes)
            short = [min(s) for s in self.sizes]
            out.append(
                f"image sizes: width {min(widths)}-{max(widths)}, height {min(heights)}-{max(heights)}, "
                f"shorter side p50 {percentiles(short)[50]}, smallest {min(short)}"
            )
        examples = list(self.duplicate_images.items())[:3]
        out.append(
            f"duplicates: {len(self.duplicate_images)} images whose bytes repeat another id's"
            + (" (" + ", ".join(f"{a} = {b}" for a, b in examples) + ")" if examples else "")
            + f"; {self.duplicate_captions} captions repeated"
        )
        return out


def check_corpus(specs, tokenizer, num_workers=0, batch_size=64):
    """Read every record of ``specs`` (reader specs; ``path`` globs expand as in training), decode each image once."""
    report = CorpusReport(tokenizer.max_len)
    counter = report.counter
    first_id_of_bytes, seen_ids, seen_captions = {}, set(), set()
    pending_captions = []

    def flush_captions():
        report.caption_tokens.extend(len(ids) + SPECIAL_TOKENS_PER_TEXT for ids in tokenizer.token_ids(pending_captions))
        pending_captions.clear()

    def new_images():
        for spec in [source for spec in specs for source in expand_sources(spec)]:
            for record in open_pairs(spec, counter):
                report.records += 1
                if record.text in seen_captions:
                    report.duplicate_captions += 1
                seen_captions.add(record.text)
                pending_captions.append(record.text)
                if len(pending_captions) >= batch_size:
                    flush_captions()
                if record.image_id in seen_ids:
                    continue
                seen_ids.add(record.image_id)
                digest = hashlib.sha256(record.image).digest()
                if digest in first_id_of_bytes:
                    report.duplicate_images[record.image_id] = first_id_of_bytes[digest]
                first_id_of_bytes.setdefault(digest, record.image_id)
                yield record.image, record.image_where

    pool = OrderedPool(num_workers)
    try:
        for _, results in pool.map(image_sizes, ((chunk, chunk) for chunk in batched(new_images(), batch_size))):
            for result in results:
                if isinstance(result, DataError):
                    counter.report(result)
                else:
                    report.sizes.append(result)
    finally:
        pool.close()
    flush_captions()
    return report
