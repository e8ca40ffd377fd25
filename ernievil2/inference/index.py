"""Galleries: normalised embeddings in a faiss inner-product index, with ids, captions and thumbnails.

A gallery folder (``tools/build_index.py`` writes one)::

    index.faiss       faiss IndexFlatIP over L2-normalised float32 embeddings (cosine = inner product)
    items.json        {"kind": "image"|"text", "dim", "count", "model_id", "ids": [...], "texts": [...]}
                      (an image gallery's "texts" are its captions, null for an image without one;
                      galleries written before captions were kept have none, and load all the same)
    thumbnails.bin    concatenated JPEG thumbnails (image galleries built from pixels)
    thumbnails.npy    int64 offsets [count + 1] into thumbnails.bin
    texts/            optional: the captions as a text gallery, for image -> text search

A gallery file (``tools/infer.py embed-*`` writes one) is an ``.npz`` with
``embeddings``, ``ids``, ``kind``, ``model_id`` and, for texts, ``texts``; a
bare ``.npy`` of image embeddings is accepted too, its ids being row numbers.

``model_id`` fingerprints the exported weights that made the embeddings:
searching with another model's queries would return confident nonsense, so it
is checked whenever both sides have one.
"""
import json
import os

import cv2
import faiss
import numpy as np

from ..evaluation.retrieval import normalize_rows_
from .errors import DeviceUnavailableError, GalleryError

KINDS = ("image", "text")
INDEX_FILE = "index.faiss"
ITEMS_FILE = "items.json"
THUMBNAILS_FILE = "thumbnails.bin"
THUMBNAIL_OFFSETS_FILE = "thumbnails.npy"
TEXT_GALLERY_DIR = "texts"
# Longest side of a stored thumbnail: the search page shows them in cells about 200 px wide.
THUMBNAIL_SIZE = 256


def normalize_rows(embeddings):
    """float32 rows scaled to unit length; non-finite or all-zero rows are errors."""
    x = np.asarray(embeddings, np.float32)
    if x.ndim != 2:
        raise GalleryError(f"embeddings must be a 2-d array, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    bad = np.flatnonzero(~np.isfinite(norms[:, 0]) | (norms[:, 0] == 0))
    if bad.size:
        raise GalleryError(f"{bad.size} embedding row(s) are zero or not finite, first at row {bad[0]}")
    return normalize_rows_(np.array(x, dtype=np.float32, order="C"))


def make_thumbnail(rgb, max_side=THUMBNAIL_SIZE, quality=85):
    """JPEG bytes of ``rgb`` shrunk (never enlarged) to fit in ``max_side`` x ``max_side``."""
    h, w = rgb.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        rgb = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("cannot encode thumbnail")
    return data.tobytes()


def faiss_to_gpu(index):
    """Move a faiss index to GPU 0; a clear error when this faiss has no GPU support or sees no GPU."""
    if not hasattr(faiss, "StandardGpuResources"):
        raise DeviceUnavailableError("GPU search was requested but the installed faiss is CPU-only (install faiss-gpu)")
    if faiss.get_num_gpus() < 1:
        raise DeviceUnavailableError("GPU search was requested but faiss sees no GPU")
    resources = faiss.StandardGpuResources()
    gpu_index = faiss.index_cpu_to_gpu(resources, 0, index)
    # The resources must outlive the index that uses them.
    gpu_index.resources = resources
    return gpu_index


def is_gpu_index(index):
    return type(index).__name__.startswith("Gpu")


def pack_thumbnails(blobs):
    """JPEG blobs -> (one uint8 array, int64 offsets [len + 1]): the in-memory and on-disk form."""
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    return np.frombuffer(b"".join(blobs), np.uint8), offsets


class Gallery:
    """Searchable embeddings; positions index ``ids``, ``texts`` and thumbnails alike.

    ``texts`` are a text gallery's texts, or an image gallery's captions (None
    for an image that has no caption).
    """

    def __init__(self, index, ids, kind, model_id=None, texts=None, thumbnails=None):
        """``thumbnails``: None or ``(uint8 data, offsets)`` as made by :func:`pack_thumbnails`."""
        if kind not in KINDS:
            raise GalleryError(f"kind must be one of {KINDS}, got {kind!r}")
        self.ids = [str(i) for i in ids]
        if index.ntotal != len(self.ids):
            raise GalleryError(f"the index holds {index.ntotal} vectors but there are {len(self.ids)} ids")
        if texts is not None and len(texts) != len(self.ids):
            raise GalleryError(f"{len(self.ids)} ids but {len(texts)} texts")
        self.index = index
        self.kind = kind
        self.dim = index.d
        self.model_id = model_id
        self.texts = None if texts is None else [None if t is None else str(t) for t in texts]
        self._thumbnails = thumbnails
        self._positions = None

    def position_of(self, item_id):
        """The position of the item with id ``item_id``; None when there is none."""
        if self._positions is None:
            # Built galleries hold each id once; a gallery file may repeat one: its first position.
            self._positions = {}
            for position, i in enumerate(self.ids):
                self._positions.setdefault(i, position)
        return self._positions.get(item_id)

    def text(self, position):
        """The text or caption at ``position``; None when there is none."""
        return None if self.texts is None else self.texts[position]

    @classmethod
    def from_embeddings(cls, embeddings, ids, kind, model_id=None, texts=None, thumbnails=None, use_gpu=False):
        """A gallery over ``embeddings`` (normalised here); ``thumbnails`` is a list of JPEG bytes."""
        vectors = normalize_rows(embeddings)
        if thumbnails is not None and len(thumbnails) != len(vectors):
            raise GalleryError(f"{len(vectors)} embeddings but {len(thumbnails)} thumbnails")
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        packed = None if thumbnails is None else pack_thumbnails(thumbnails)
        return cls(faiss_to_gpu(index) if use_gpu else index, ids, kind, model_id, texts, packed)

    @property
    def size(self):
        return len(self.ids)

    def search(self, queries, k):
        """(scores, positions), each ``[Q, min(k, size)]``, best first."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        queries = normalize_rows(queries)
        if queries.shape[1] != self.dim:
            raise GalleryError(f"queries are {queries.shape[1]}-d, the gallery is {self.dim}-d")
        return self.index.search(queries, min(k, self.size))

    def has_thumbnails(self):
        return self._thumbnails is not None

    def thumbnail(self, position):
        """JPEG bytes of the thumbnail at ``position``."""
        if self._thumbnails is None:
            raise KeyError("this gallery has no thumbnails")
        if not 0 <= position < self.size:
            raise KeyError(f"no item at position {position}")
        data, offsets = self._thumbnails
        return data[offsets[position] : offsets[position + 1]].tobytes()

    def check_model(self, model_id, dim):
        """Raise unless queries from a model with ``model_id`` and ``dim`` can search this gallery."""
        if dim != self.dim:
            raise GalleryError(f"the model makes {dim}-d embeddings, the gallery holds {self.dim}-d ones")
        if model_id and self.model_id and model_id != self.model_id:
            raise GalleryError(
                f"the gallery was built with model {self.model_id}, the queries come from model {model_id}; "
                "rebuild the gallery with this model"
            )

    def save(self, folder):
        os.makedirs(folder, exist_ok=True)
        index = faiss.index_gpu_to_cpu(self.index) if is_gpu_index(self.index) else self.index
        faiss.write_index(index, os.path.join(folder, INDEX_FILE))
        if self._thumbnails is not None:
            data, offsets = self._thumbnails
            with open(os.path.join(folder, THUMBNAILS_FILE), "wb") as f:
                f.write(data.tobytes())
            np.save(os.path.join(folder, THUMBNAIL_OFFSETS_FILE), offsets)
        items = {"kind": self.kind, "dim": self.dim, "count": self.size, "model_id": self.model_id, "ids": self.ids}
        if self.texts is not None:
            items["texts"] = self.texts
        # Written last: its presence marks a complete gallery.
        with open(os.path.join(folder, ITEMS_FILE), "w", encoding="utf-8") as f:
            json.dump(items, f, ensure_ascii=False)

    @classmethod
    def load(cls, folder, use_gpu=False):
        items_path = os.path.join(folder, ITEMS_FILE)
        if not os.path.isfile(items_path):
            raise GalleryError(f"{folder} is not a gallery folder: {ITEMS_FILE} is missing")
        with open(items_path, encoding="utf-8") as f:
            items = json.load(f)
        index = faiss.read_index(os.path.join(folder, INDEX_FILE))
        if index.ntotal != items["count"] or index.d != items["dim"] or len(items["ids"]) != items["count"]:
            raise GalleryError(
                f"{folder} is inconsistent: the index holds {index.ntotal} {index.d}-d vectors, "
                f"{ITEMS_FILE} says {items['count']} {items['dim']}-d with {len(items['ids'])} ids"
            )
        thumbnails = _load_thumbnails(folder, items["count"])
        return cls(faiss_to_gpu(index) if use_gpu else index, items["ids"], items["kind"], items.get("model_id"),
                   items.get("texts"), thumbnails)


def _load_thumbnails(folder, count):
    data_path = os.path.join(folder, THUMBNAILS_FILE)
    if not os.path.isfile(data_path):
        return None
    offsets = np.load(os.path.join(folder, THUMBNAIL_OFFSETS_FILE))
    if len(offsets) != count + 1 or offsets[-1] != os.path.getsize(data_path):
        raise GalleryError(f"{folder}: thumbnail offsets do not match {THUMBNAILS_FILE}")
    data = np.memmap(data_path, dtype=np.uint8, mode="r") if offsets[-1] else np.zeros(0, np.uint8)
    return data, offsets


def save_embeddings(path, embeddings, ids, kind, model_id=None, texts=None):
    """Write a gallery file (``.npz``)."""
    arrays = {
        "embeddings": np.asarray(embeddings, np.float32),
        "ids": np.asarray([str(i) for i in ids]),
        "kind": np.asarray(kind),
        "model_id": np.asarray(model_id or ""),
    }
    if texts is not None:
        arrays["texts"] = np.asarray(list(texts))
    np.savez(path, **arrays)


def load_gallery(path, use_gpu=False):
    """A :class:`Gallery` from a gallery folder, an ``.npz`` gallery file or an ``.npy`` of image embeddings."""
    if os.path.isdir(path):
        return Gallery.load(path, use_gpu)
    if not os.path.isfile(path):
        raise GalleryError(f"gallery not found: {path}")
    if path.endswith(".npy"):
        embeddings = np.load(path)
        return Gallery.from_embeddings(embeddings, range(len(embeddings)), "image", use_gpu=use_gpu)
    if not path.endswith(".npz"):
        raise GalleryError(f"{path}: a gallery is a folder, an .npz or an .npy")
    with np.load(path) as data:
        missing = [key for key in ("embeddings", "ids", "kind") if key not in data]
        if missing:
            raise GalleryError(f"{path} lacks {', '.join(missing)}")
        texts = data["texts"].tolist() if "texts" in data else None
        model_id = str(data["model_id"]) if "model_id" in data else ""
        return Gallery.from_embeddings(
            data["embeddings"], data["ids"].tolist(), str(data["kind"]), model_id or None, texts, use_gpu=use_gpu
        )
