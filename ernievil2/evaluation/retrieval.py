"""Image-text retrieval evaluation, computed block by block.

Rank of a query = the number of gallery items that are not positives of the
query and score strictly higher than its best positive (ties count in the
query's favour). With one positive this is the rank of ERNIE-ViL 2.0's
``eval_retri.py``; with several it equals that script's minimum over positives,
because the minimum is reached at the best positive and no other positive can
beat it. An item whose vector is identical to a positive's ties with it and
never counts, however BLAS rounds the two scores. R@k is the share of queries with rank < k, meanRecall the mean of R@1,
R@5 and R@10, MRR the mean of 1 / (1 + rank).

Two protocols:

* ``official``: text i is paired with image i; neither side is deduplicated.
* ``multi_gt``: images are deduplicated by id (first occurrence kept); a text's
  positives are all images it names, an image's positives all texts naming it.

Both directions are counted from the same score blocks in one sweep (rows give
text->image, columns image->text), so the full text x image matrix is never
held and the cost is about one matrix product.
"""
import dataclasses
import zipfile
from pathlib import Path

import numpy as np

from ernievil2.data.errors import DataError

RECALL_KS = (1, 5, 10)
METRIC_KEYS = ("r1", "r5", "r10", "mean_recall", "mrr")
# Texts and images per score block: 8192 x 8192 float32 scores plus a bool
# mask is 320 MiB, whatever the corpus size.
DEFAULT_BLOCK_SIZE = 8192
# top-k also partitions a copy of each block: about 9 bytes per score.
TOPK_BLOCK_SIZE = 4096
TABLE_HEADERS = ("Name", "R@1", "R@5", "R@10", "meanRecall")
# Pairs per GEMM when scoring positives alone: large enough that BLAS takes the
# same kernel as for the score blocks (small products use other kernels, whose
# rounding differs), small enough that the wasted off-diagonal work is ~0.3%.
PAIR_CHUNK = 128
# Rows per chunk in whole-matrix passes (checks, hashing, normalising): the
# temporaries stay near 25 MB at 768-d instead of growing with the corpus.
ROW_CHUNK = 4096


class RetrievalInputError(ValueError):
    """Embeddings, ids or files that cannot be evaluated as given."""


# ----------------------------------------------------------------------------
# pairs


@dataclasses.dataclass(frozen=True)
class TextImagePairs:
    """Deduplicated (text row, image row) pairs sorted by text then image, with a CSR pointer by text."""

    text: np.ndarray
    image: np.ndarray
    n_texts: int
    n_images: int
    indptr: np.ndarray

    def in_block(self, r0, r1, c0, c1):
        """Block-local (rows, cols) of the pairs with text in [r0, r1) and image in [c0, c1)."""
        lo, hi = self.indptr[r0], self.indptr[r1]
        image = self.image[lo:hi]
        inside = lo + np.flatnonzero((image >= c0) & (image < c1))
        return self.text[inside] - r0, self.image[inside] - c0


def text_image_pairs(text, image, n_texts, n_images):
    """Validated, deduplicated and sorted :class:`TextImagePairs`."""
    text = np.asarray(text, dtype=np.int64)
    image = np.asarray(image, dtype=np.int64)
    if text.shape != image.shape or text.ndim != 1:
        raise RetrievalInputError("text and image pair indices must be 1-D arrays of equal length")
    for name, idx, n in (("text", text, n_texts), ("image", image, n_images)):
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise RetrievalInputError(f"{name} pair index out of range [0, {n})")
    key = np.unique(text * max(n_images, 1) + image)
    text, image = key // max(n_images, 1), key % max(n_images, 1)
    return TextImagePairs(text, image, n_texts, n_images, csr_indptr(text, n_texts))


def one_to_one_pairs(n):
    """The official protocol's positives: text i matches image i only."""
    return text_image_pairs(np.arange(n), np.arange(n), n, n)


def dedup_gallery(image_ids, text_pos_indptr, text_pos_ids, text_ids):
    """Gallery rows (first occurrence of each image id, in file order) and the positive pairs over them.

    Raises :class:`RetrievalInputError` naming the text when a text names no
    image or an image id that is not in the gallery.
    """
    image_ids = np.asarray(image_ids)
    unique_ids, first_rows = np.unique(image_ids, return_index=True)
    file_order = np.argsort(first_rows)
    gallery_rows = first_rows[file_order]
    column_of_unique = np.empty(len(unique_ids), dtype=np.int64)
    column_of_unique[file_order] = np.arange(len(unique_ids))

    counts = np.diff(text_pos_indptr)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        t = empty[0]
        raise RetrievalInputError(f"text {t} ({text_ids[t]!r}) names no image id")
    found = np.searchsorted(unique_ids, text_pos_ids)
    known = found < len(unique_ids)
    known[known] = unique_ids[found[known]] == text_pos_ids[known]
    if not known.all():
        k = int(np.flatnonzero(~known)[0])
        t = int(np.searchsorted(text_pos_indptr, k, side="right") - 1)
        raise RetrievalInputError(
            f"text {t} ({text_ids[t]!r}) names image id {text_pos_ids[k]!r}, "
            f"which is not among the {len(unique_ids)} gallery image ids"
        )
    text_rows = np.repeat(np.arange(len(counts)), counts)
    pairs = text_image_pairs(text_rows, column_of_unique[found], len(counts), len(unique_ids))
    return gallery_rows, pairs


def csr_indptr(sorted_rows, n_rows):
    """CSR row pointer of items sorted by row."""
    return np.concatenate([[0], np.cumsum(np.bincount(sorted_rows, minlength=n_rows))])


def csr_select(indptr, rows):
    """Positions, in CSR order, of the items of ``rows`` (concatenated row after row)."""
    counts = indptr[rows + 1] - indptr[rows]
    ends = np.cumsum(counts)
    return np.arange(ends[-1] if len(ends) else 0) - np.repeat(ends - counts - indptr[rows], counts)


# ----------------------------------------------------------------------------
# identical vectors


def row_hashes(x):
    """Exact 64-bit hash of each row's values; equal rows (-0.0 == 0.0) hash equal.

    Integer arithmetic wraps modulo 2**64 and is order-free, so unlike a
    floating-point projection it cannot round identical rows apart.
    """
    weights = np.random.default_rng(0).integers(1, 2**63, x.shape[1], dtype=np.uint64) | np.uint64(1)
    out = np.empty(len(x), dtype=np.uint64)
    for start in range(0, len(x), ROW_CHUNK):
        # Adding +0.0 turns -0.0 into +0.0, so the bits of equal values agree.
        bits = (x[start : start + ROW_CHUNK] + np.float32(0)).view(np.uint32)
        out[start : start + ROW_CHUNK] = (bits.astype(np.uint64) * weights).sum(axis=1)
    return out


def identical_rows(x):
    """For each row, the first row with the same values (itself when unique)."""
    hashes = row_hashes(x)
    order = np.argsort(hashes, kind="stable")
    sorted_hashes = hashes[order]
    run_start = np.flatnonzero(np.r_[True, sorted_hashes[1:] != sorted_hashes[:-1]])
    run_first = order[np.repeat(run_start, np.diff(np.r_[run_start, len(x)]))]
    first = np.arange(len(x))
    candidates = np.flatnonzero(run_first != order)
    rows, firsts = order[candidates], run_first[candidates]
    for start in range(0, len(rows), ROW_CHUNK):
        part = slice(start, start + ROW_CHUNK)
        # A hash collision between different rows leaves both ungrouped.
        same = (x[rows[part]] == x[firsts[part]]).all(axis=1)
        first[rows[part][same]] = firsts[part][same]
    return first


def tied_items(query_of_pair, gallery_of_pair, gallery_first, n_gallery):
    """(query, item) for each gallery item identical to one of the query's positives, positives left out.

    Such an item ties with that positive in exact arithmetic, but BLAS may
    round the two scores apart (they sit in different blocks or tiles), so it
    is excluded explicitly instead of trusting the comparison.
    """
    n_gallery = max(n_gallery, 1)
    members = np.argsort(gallery_first, kind="stable")
    group_indptr = csr_indptr(gallery_first[members], n_gallery)
    group = gallery_first[gallery_of_pair]
    size = group_indptr[group + 1] - group_indptr[group]
    shared = size > 1
    queries = np.repeat(query_of_pair[shared], size[shared])
    items = members[csr_select(group_indptr, group[shared])]
    keys = np.setdiff1d(queries * n_gallery + items, query_of_pair * n_gallery + gallery_of_pair)
    return keys // n_gallery, keys % n_gallery


# ----------------------------------------------------------------------------
# rank maths


def block_bounds(n, block_size):
    """(start, stop) of ceil(n / block_size) blocks whose sizes differ by at most one."""
    if block_size < 1:
        raise RetrievalInputError(f"block size must be positive, got {block_size}")
    n_blocks = max(1, -(-n // block_size))
    edges = [i * n // n_blocks for i in range(n_blocks + 1)]
    return list(zip(edges[:-1], edges[1:]))


def as_embeddings(x, name):
    """``x`` as a C-contiguous float32 matrix; refuses non-finite values.

    A NaN scores above nothing, so it would silently rank its query first.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise RetrievalInputError(f"{name} must be 2-D (rows, dim), got shape {x.shape}")
    for start in range(0, len(x), ROW_CHUNK):
        bad = ~np.isfinite(x[start : start + ROW_CHUNK]).all(axis=1)
        if bad.any():
            raise RetrievalInputError(f"{name} row {start + int(np.argmax(bad))} is not finite")
    return x


def pair_scores(text_emb, image_emb, text_rows, image_rows):
    """float32 score of each (text_rows[i], image_rows[i]) pair, from a GEMM.

    The diagonal of a GEMM of ~128 pairs usually equals the entry of the large
    score block bit for bit (an einsum or dot product rounds differently, in
    most pairs); that resolves near-ties with other items as the official
    script does. Chunks are balanced so that none is small enough for BLAS's
    small-matrix kernel.
    """
    out = np.empty(len(text_rows), dtype=np.float32)
    for a, b in block_bounds(len(text_rows), PAIR_CHUNK):
        out[a:b] = np.diagonal(text_emb[text_rows[a:b]] @ image_emb[image_rows[a:b]].T)
    return out


def best_per_query(query_of_pair, scores, n_queries):
    """Highest pair score of each query; -inf for a query without positives."""
    best = np.full(n_queries, -np.inf, dtype=np.float32)
    np.maximum.at(best, query_of_pair, scores)
    return best


def _count_greater(scores, thresholds, mask, axis):
    np.greater(scores, thresholds, out=mask)
    return np.count_nonzero(mask, axis=axis)


def _sweep_counts(text_emb, image_emb, positives, text_thr, image_thr, text_ties, image_ties, block_size):
    """Per text and per image, how many items score above its threshold; positives and ties never count."""
    text_counts = np.zeros(positives.n_texts, dtype=np.int64)
    image_counts = np.zeros(positives.n_images, dtype=np.int64)
    row_blocks = block_bounds(positives.n_texts, block_size)
    col_blocks = block_bounds(positives.n_images, block_size)
    size = max(b - a for a, b in row_blocks) * max(b - a for a, b in col_blocks)
    score_buf = np.empty(size, dtype=np.float32)
    mask_buf = np.empty(size, dtype=bool)
    for r0, r1 in row_blocks:
        for c0, c1 in col_blocks:
            shape = (r1 - r0, c1 - c0)
            scores = score_buf[: shape[0] * shape[1]].reshape(shape)
            mask = mask_buf[: shape[0] * shape[1]].reshape(shape)
            np.matmul(text_emb[r0:r1], image_emb[c0:c1].T, out=scores)
            # A positive never counts against itself, whatever the rounding of its threshold.
            scores[positives.in_block(r0, r1, c0, c1)] = -np.inf
            text_counts[r0:r1] += _count_greater(scores, text_thr[r0:r1, None], mask, axis=1)
            image_counts[c0:c1] += _count_greater(scores, image_thr[None, c0:c1], mask, axis=0)
            rows, cols = text_ties.in_block(r0, r1, c0, c1)
            above = scores[rows, cols] > text_thr[r0 + rows]
            text_counts[r0:r1] -= np.bincount(rows[above], minlength=shape[0])
            rows, cols = image_ties.in_block(r0, r1, c0, c1)
            above = scores[rows, cols] > image_thr[c0 + cols]
            image_counts[c0:c1] -= np.bincount(cols[above], minlength=shape[1])
    return text_counts, image_counts


def tie_pairs(text_emb, image_emb, positives):
    """(text, image) pairs to leave out of the text counts, and those to leave out of the image counts.

    For a text: images identical to one of its positive images. For an image:
    texts identical to one of its positive texts.
    """
    n_t, n_i = positives.n_texts, positives.n_images
    text, image = tied_items(positives.text, positives.image, identical_rows(image_emb), n_i)
    for_texts = text_image_pairs(text, image, n_t, n_i)
    image, text = tied_items(positives.image, positives.text, identical_rows(text_emb), n_t)
    return for_texts, text_image_pairs(text, image, n_t, n_i)


def retrieval_ranks(text_emb, image_emb, pairs, block_size=DEFAULT_BLOCK_SIZE):
    """Rank of every text among images and of every image among texts; -1 for a query with no positive."""
    text_emb = as_embeddings(text_emb, "text_emb")
    image_emb = as_embeddings(image_emb, "image_emb")
    if not len(text_emb) or not len(image_emb):
        raise RetrievalInputError(f"nothing to rank: {len(text_emb)} texts, {len(image_emb)} images")
    if text_emb.shape[1] != image_emb.shape[1]:
        raise RetrievalInputError(f"embedding sizes differ: text {text_emb.shape[1]}, image {image_emb.shape[1]}")
    if (len(text_emb), len(image_emb)) != (pairs.n_texts, pairs.n_images):
        raise RetrievalInputError(
            f"pairs are over {pairs.n_texts} texts x {pairs.n_images} images, "
            f"embeddings have {len(text_emb)} x {len(image_emb)}"
        )
    scores = pair_scores(text_emb, image_emb, pairs.text, pairs.image)
    text_thr = best_per_query(pairs.text, scores, pairs.n_texts)
    image_thr = best_per_query(pairs.image, scores, pairs.n_images)
    text_ties, image_ties = tie_pairs(text_emb, image_emb, pairs)
    text_ranks, image_ranks = _sweep_counts(
        text_emb, image_emb, pairs, text_thr, image_thr, text_ties, image_ties, block_size
    )
    text_ranks[np.isneginf(text_thr)] = -1
    image_ranks[np.isneginf(image_thr)] = -1
    return text_ranks, image_ranks


def recall_metrics(ranks):
    """R@1/5/10, meanRecall and MRR over queries with a positive (rank >= 0), as the official script computes them."""
    ranks = ranks[ranks >= 0]
    if not len(ranks):
        raise RetrievalInputError("no query has a positive")
    n = float(len(ranks))
    r1, r5, r10 = ((ranks < k).sum() / n for k in RECALL_KS)
    return {
        "r1": float(r1),
        "r5": float(r5),
        "r10": float(r10),
        "mean_recall": float((r1 + r5 + r10) / 3.0),
        "mrr": float((1.0 / (1.0 + ranks)).sum() / n),
        "n_queries": int(n),
    }



def evaluate_pairs(text_emb, image_emb, pairs, block_size=DEFAULT_BLOCK_SIZE):
    """Metrics for both directions and their mean: ``{"text2image", "image2text", "mean"}``."""
    text_ranks, image_ranks = retrieval_ranks(text_emb, image_emb, pairs, block_size)
    t2i = dict(recall_metrics(text_ranks), n_gallery=pairs.n_images)
    i2t = dict(recall_metrics(image_ranks), n_gallery=pairs.n_texts)
    mean = {key: (t2i[key] + i2t[key]) / 2 for key in METRIC_KEYS}
    return {"text2image": t2i, "image2text": i2t, "mean": mean}


def evaluate_official(text_emb, image_emb, block_size=DEFAULT_BLOCK_SIZE):
    """The official protocol: row i of each matrix is a pair, the gallery is not deduplicated."""
    if len(text_emb) != len(image_emb):
        raise RetrievalInputError(
            f"the official protocol pairs text i with image i, but there are "
            f"{len(text_emb)} texts and {len(image_emb)} images"
        )
    return evaluate_pairs(text_emb, image_emb, one_to_one_pairs(len(text_emb)), block_size)


def protocol_obstacle(protocol, n_texts, n_images, has_ids):
    """Why ``protocol`` cannot score this set (None when it can)."""
    if protocol == "official" and n_texts != n_images:
        return (
            f"it pairs text i with image i, and this set has {n_texts} texts for {n_images} images "
            "(a caption names several images, or the images are listed once each)"
        )
    if protocol == "multi_gt" and not has_ids:
        return "it needs image ids: give a features .npz from tools/extract_features.py"
    return None


def evaluate_multi_gt(features, block_size=DEFAULT_BLOCK_SIZE):
    """Multi-ground-truth protocol over images deduplicated by id."""
    gallery_rows, pairs = dedup_gallery(
        features.image_ids, features.text_pos_indptr, features.text_pos_ids, features.text_ids
    )
    gallery = features.image_emb
    if len(gallery_rows) != len(gallery):
        gallery = gallery[gallery_rows]
    return evaluate_pairs(features.text_emb, gallery, pairs, block_size)


# ----------------------------------------------------------------------------
# top-k search


def _best_k_per_row(rows, cols, scores, n_rows, k):
    """The k best (score desc, then column asc) of each row, as (n_rows, k) arrays."""
    order = np.lexsort((cols, -scores, rows))
    rows, cols, scores = rows[order], cols[order], scores[order]
    starts = np.searchsorted(rows, np.arange(n_rows))
    keep = np.arange(len(rows)) - starts[rows] < k
    return scores[keep].reshape(n_rows, k), cols[keep].reshape(n_rows, k)


def topk(queries, gallery, k, block_size=TOPK_BLOCK_SIZE):
    """Best ``min(k, len(gallery))`` gallery items per query: (scores, indices), scores descending.

    Ties are broken by the lower gallery index, so results do not depend on
    ``block_size``. Memory is about 9 bytes per block score, never queries x gallery.
    """
    if k < 1:
        raise RetrievalInputError(f"k must be positive, got {k}")
    queries = as_embeddings(queries, "queries")
    gallery = as_embeddings(gallery, "gallery")
    k = min(k, len(gallery))
    top_scores = np.empty((len(queries), k), dtype=np.float32)
    top_index = np.empty((len(queries), k), dtype=np.int64)
    for r0, r1 in block_bounds(len(queries), block_size):
        best_s = np.empty((r1 - r0, 0), dtype=np.float32)
        best_i = np.empty((r1 - r0, 0), dtype=np.int64)
        for c0, c1 in block_bounds(len(gallery), block_size):
            scores = queries[r0:r1] @ gallery[c0:c1].T
            kb = min(k, c1 - c0)
            kth = np.partition(scores, c1 - c0 - kb, axis=1)[:, c1 - c0 - kb]
            # Every item tied with the k-th is a candidate, so the tie-break is exact.
            rows, cols = np.nonzero(scores >= kth[:, None])
            held = np.repeat(np.arange(r1 - r0), best_s.shape[1])
            best_s, best_i = _best_k_per_row(
                np.concatenate([held, rows]),
                np.concatenate([best_i.ravel(), cols + c0]),
                np.concatenate([best_s.ravel(), scores[rows, cols]]),
                r1 - r0,
                min(k, c1),
            )
        top_scores[r0:r1], top_index[r0:r1] = best_s, best_i
    return top_scores, top_index


# ----------------------------------------------------------------------------
# report


def github_table(headers, rows, floatfmt=".2f"):
    """``tabulate(rows, headers, tablefmt="github", floatfmt=floatfmt)`` for str and float cells.

    As in tabulate, a column is at least two wider than its header, text is
    left-aligned and numbers right-aligned (numbers share one format, so this
    is tabulate's decimal alignment).
    """
    cells = [[c if isinstance(c, str) else format(c, floatfmt) for c in row] for row in rows]
    columns = list(zip(*cells))
    numeric = [not any(isinstance(row[j], str) for row in rows) for j in range(len(headers))]
    widths = [max(len(h) + 2, *(len(c) for c in col)) for h, col in zip(headers, columns)]

    def line(values):
        padded = (v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric))
        return "| " + " | ".join(padded) + " |"

    separator = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), separator] + [line(row) for row in cells])


def official_table(metrics):
    """The table ``eval_retri.py`` prints, byte for byte, from :func:`evaluate_pairs` output."""
    rows = [
        [name] + [round(metrics[key][m] * 100, 2) for m in ("r1", "r5", "r10", "mean_recall")]
        for name, key in (("Text2Image", "text2image"), ("Image2Text", "image2text"), ("MeanRecall", "mean"))
    ]
    return github_table(TABLE_HEADERS, rows)


# ----------------------------------------------------------------------------
# embedding files


@dataclasses.dataclass(frozen=True)
class Features:
    """Embeddings written by ``tools/extract_features.py``; see ``docs/evaluation.md`` for the schema.

    ``image_ids`` may repeat (one image row per data line); the positives of
    text t are ``text_pos_ids[text_pos_indptr[t]:text_pos_indptr[t + 1]]``.
    """

    text_emb: np.ndarray
    image_emb: np.ndarray
    image_ids: np.ndarray
    text_ids: np.ndarray
    text_pos_indptr: np.ndarray
    text_pos_ids: np.ndarray


def text_positives_csr(ids_per_text):
    """(text_pos_indptr, text_pos_ids) from one sequence of image ids per text."""
    indptr = np.concatenate([[0], np.cumsum([len(ids) for ids in ids_per_text])]).astype(np.int64)
    ids = np.array([i for ids in ids_per_text for i in ids], dtype=str)
    return indptr, ids


def make_features(text_emb, image_emb, image_ids, text_ids, text_pos_indptr, text_pos_ids):
    """Validated :class:`Features` with the schema's dtypes."""
    f = Features(
        text_emb=np.asarray(text_emb, dtype=np.float32),
        image_emb=np.asarray(image_emb, dtype=np.float32),
        image_ids=np.asarray(image_ids, dtype=str),
        text_ids=np.asarray(text_ids, dtype=str),
        text_pos_indptr=np.asarray(text_pos_indptr, dtype=np.int64),
        text_pos_ids=np.asarray(text_pos_ids, dtype=str),
    )
    n_t, n_i = len(f.text_emb), len(f.image_emb)
    problems = []
    if f.text_emb.ndim != 2 or f.image_emb.ndim != 2 or f.text_emb.shape[1] != f.image_emb.shape[1]:
        problems.append(f"text_emb {f.text_emb.shape} and image_emb {f.image_emb.shape} must be (rows, same dim)")
    if f.image_ids.shape != (n_i,):
        problems.append(f"image_ids has shape {f.image_ids.shape}, expected ({n_i},)")
    if f.text_ids.shape != (n_t,):
        problems.append(f"text_ids has shape {f.text_ids.shape}, expected ({n_t},)")
    indptr = f.text_pos_indptr
    if indptr.shape != (n_t + 1,) or indptr[0] != 0 or np.any(np.diff(indptr) < 0):
        problems.append(f"text_pos_indptr must be non-decreasing, start at 0 and have {n_t + 1} entries")
    elif indptr[-1] != len(f.text_pos_ids):
        problems.append(f"text_pos_indptr ends at {indptr[-1]} but text_pos_ids has {len(f.text_pos_ids)} entries")
    if problems:
        raise RetrievalInputError("; ".join(problems))
    return f


def save_features(path, text_emb, image_emb, image_ids, text_ids, text_pos_indptr, text_pos_ids):
    """Validate and write the features ``.npz`` (written to a temporary name, then renamed)."""
    f = make_features(text_emb, image_emb, image_ids, text_ids, text_pos_indptr, text_pos_ids)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as out:
        np.savez(out, **{field.name: getattr(f, field.name) for field in dataclasses.fields(f)})
    tmp.replace(path)


def is_npz(path):
    """True when ``path`` is a zip archive (what ``np.savez`` writes, an empty one included)."""
    return zipfile.is_zipfile(path)


def load_features(path):
    """Read and validate a features ``.npz``."""
    names = [field.name for field in dataclasses.fields(Features)]
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in names if name in z}
    except (zipfile.BadZipFile, ValueError) as err:
        raise RetrievalInputError(f"{path}: not a readable features .npz ({err})") from err
    missing = [name for name in names if name not in arrays]
    if missing:
        raise RetrievalInputError(f"{path}: missing arrays {missing}")
    try:
        return make_features(**arrays)
    except RetrievalInputError as err:
        raise RetrievalInputError(f"{path}: {err}") from err


def read_official_embeddings(path):
    """(text_emb, image_emb) from the official ``run_infer.py`` output: ``text_vec \\t image_vec \\t idx`` lines."""
    texts, images = [], []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 3:
                raise DataError(path, line_no, f"expected 3 tab-separated fields, got {len(fields)}")
            # float64 first, then float32: the official reader's rounding.
            try:
                text = np.array(fields[0].split(), dtype=np.float64).astype(np.float32)
                image = np.array(fields[1].split(), dtype=np.float64).astype(np.float32)
            except ValueError as err:
                raise DataError(path, line_no, f"a vector holds a non-number ({err})") from None
            dim = len(texts[0]) if texts else len(text)
            if len(text) != dim or len(image) != dim or dim == 0:
                raise DataError(path, line_no, f"vector sizes {len(text)}/{len(image)}, expected {dim}")
            texts.append(text)
            images.append(image)
    if not texts:
        raise DataError(path, None, "no embeddings")
    return np.stack(texts), np.stack(images)


def max_norm_error(x):
    """Largest |L2 norm - 1| over the rows of ``x``."""
    worst = 0.0
    for start in range(0, len(x), ROW_CHUNK):
        part = x[start : start + ROW_CHUNK]
        norms = np.sqrt(np.einsum("ij,ij->i", part, part, dtype=np.float64))
        worst = max(worst, float(np.abs(norms - 1.0).max(initial=0.0)))
    return worst


def normalize_rows_(x):
    """L2-normalise the rows of float ``x`` in place (chunked: no full-size temporary); returns ``x``."""
    for start in range(0, len(x), ROW_CHUNK):
        part = x[start : start + ROW_CHUNK]
        part /= np.linalg.norm(part, axis=1, keepdims=True)
    return x
