"""Embedding a data split: batched, images decoded in worker processes, each image once.

Used by ``tools/extract_features.py`` and by the periodic evaluation during
training. The result is a :class:`~ernievil2.evaluation.retrieval.Features`:
for pair formats (official TSV, jsonl + folder) one image row per data line
(so the official one-to-one protocol applies), encoded once per image id; for
the Chinese-CLIP layout one row per image and several positives per text.
"""
import dataclasses
import time

import numpy as np
import paddle

from ..data.errors import DataError, SkipCounter
from ..data.parallel import OrderedPool
from ..data.readers import ChineseClipSplit, decode_image_bytes, open_pairs
from ..iters import batched, first_of_each
from .retrieval import make_features, text_positives_csr

_TRANSFORM = None


def init_decoder(transform):
    global _TRANSFORM
    _TRANSFORM = transform


def decode_batch(job):
    """(pixels of the images that decoded, or None; kept mask; the errors of the others)."""
    images, wheres = job
    pixels, kept, errors = [], [], []
    for data, where in zip(images, wheres):
        try:
            pixels.append(_TRANSFORM(decode_image_bytes(data, where)))
            kept.append(True)
        except DataError as err:
            kept.append(False)
            errors.append(err)
    return (np.stack(pixels) if pixels else None), kept, errors


class Progress:
    """Prints ``label: n items, rate/s`` every ``every`` seconds."""

    def __init__(self, label, every=10.0, printer=print):
        self.label, self.every, self.printer = label, every, printer
        self.start = self.last = time.time()
        self.count = 0

    def add(self, n):
        self.count += n
        now = time.time()
        if now - self.last >= self.every:
            self.last = now
            self.printer(f"{self.label}: {self.count} done, {self.count / (now - self.start):.1f}/s")


@paddle.no_grad()
def _encode_images(model, pool, records, batch_size, progress, counter):
    """{image_id: row} and the stacked embeddings, for (image_id, bytes, where) records, each id once.

    An image that does not decode is reported to ``counter`` (raised, or
    counted under ``skip``) and has no row: the caller drops what refers to it.
    """
    rows = {}
    unseen = first_of_each(records, key=lambda record: record[0])
    jobs = ((chunk, ([d for _, d, _ in chunk], [w for _, _, w in chunk])) for chunk in batched(unseen, batch_size))
    parts = []
    for chunk, (pixels, kept, errors) in pool.map(decode_batch, jobs):
        for err in errors:
            counter.report(err)
        for (image_id, _, _), ok in zip(chunk, kept):
            if ok:
                rows[image_id] = len(rows)
        if pixels is not None:
            parts.append(model.encode_image(paddle.to_tensor(pixels)).numpy())
        progress.add(len(chunk))
    return rows, np.concatenate(parts) if parts else np.zeros((0, model.embed_dim), np.float32)


@paddle.no_grad()
def _encode_texts(model, tokenizer, texts, batch_size, progress, counter, wheres):
    """Embeddings of ``texts``; each caption cut to the tokenizer's max_len is noted in ``counter`` by its ``wheres``."""
    parts = []
    for start, chunk in zip(range(0, len(texts), batch_size), batched(texts, batch_size)):
        ids, cut = tokenizer.encode(chunk, return_truncated=True)
        for index in np.flatnonzero(cut):
            counter.note_truncated(wheres[start + index])
        parts.append(model.encode_text(paddle.to_tensor(ids)).numpy())
        progress.add(len(chunk))
    return np.concatenate(parts) if parts else np.zeros((0, model.embed_dim), np.float32)


def _texts_with_images(texts, rows, counter):
    """Texts with their positives narrowed to images that decoded; a text left with none is skipped."""
    kept = []
    for text in texts:
        image_ids = [i for i in text.image_ids if i in rows]
        if not image_ids:
            path, _, line = text.where.rpartition(":")
            counter.report(DataError(path, int(line), "every image of this text failed to decode"))
            continue
        kept.append(dataclasses.replace(text, image_ids=tuple(image_ids)) if len(image_ids) != len(text.image_ids) else text)
    return kept


def embed_split(model, spec, tokenizer, transform, batch_size=64, num_workers=0, on_error="raise", printer=print):
    """Embed the split described by ``spec`` (a reader spec); returns (Features, SkipCounter)."""
    model.eval()
    counter = SkipCounter(on_error)
    pool = OrderedPool(num_workers, init_decoder, (transform,))
    try:
        if spec.get("format") == "chinese_clip":
            split = ChineseClipSplit(spec["root"], spec["split"])
            images = ((r.image_id, r.image, r.where) for r in split.iter_images(counter))
            rows, image_emb = _encode_images(model, pool, images, batch_size, Progress("images", printer=printer), counter)
            texts = _texts_with_images(split.iter_texts(counter), rows, counter)
            text_emb = _encode_texts(
                model, tokenizer, [t.text for t in texts], batch_size, Progress("texts", printer=printer), counter, [t.where for t in texts]
            )
            image_ids = np.array(sorted(rows, key=rows.get), dtype=str)
            indptr, pos_ids = text_positives_csr([t.image_ids for t in texts])
            text_ids = [str(t.text_id) for t in texts]
        else:
            pairs = []

            def records():
                for record in open_pairs(spec, counter):
                    pairs.append((record.text, record.image_id, record.where))
                    yield record.image_id, record.image, record.image_where

            rows, unique_emb = _encode_images(model, pool, records(), batch_size, Progress("images", printer=printer), counter)
            # A pair whose image did not decode was reported already; its caption goes too.
            pairs = [p for p in pairs if p[1] in rows]
            text_emb = _encode_texts(
                model, tokenizer, [p[0] for p in pairs], batch_size, Progress("texts", printer=printer), counter, [p[2] for p in pairs]
            )
            image_ids = np.array([p[1] for p in pairs], dtype=str)
            image_emb = unique_emb[[rows[p[1]] for p in pairs]] if pairs else unique_emb
            indptr, pos_ids = text_positives_csr([[p[1]] for p in pairs])
            text_ids = [p[2] for p in pairs]
    finally:
        pool.close()
    return make_features(text_emb, image_emb, image_ids, text_ids, indptr, pos_ids), counter
