"""Released models by name: downloaded once into a cache folder, checked, then read like a local path.

``Global.pretrained`` and every ``--weights`` go through :func:`resolve_weights`: an existing file
or folder is returned as it is; a released model's name (:data:`RELEASED`) becomes its cache path,
downloaded on first use. Each file is checked against its published md5 where PaddleNLP publishes
one; a file without one (the official ``.pdparams``) has its sha256 recorded beside it at download
(the first download is trusted) and checked on every later use.

Plain ``urllib``, not PaddleNLP's ``get_path_from_url``: importing PaddleNLP takes seconds, its
downloader cannot record a digest for a file that has none published, and its offline failure
does not say where the file should go, which is what a user on a machine without internet needs.
"""
import contextlib
import dataclasses
import difflib
import fcntl
import hashlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.request

from ..files import atomic_file, atomic_text_file, check_path, file_digest
from .paddlenlp import PADDLENLP_WEIGHTS

# Beside a file without a published checksum: its sha256 as first downloaded.
RECORDED_DIGEST = ".sha256"
NETWORK_TIMEOUT = 60  # seconds without a byte before a download is given up


class ReleasedModelError(OSError):
    """A released model that cannot be fetched or whose cached file fails its checksum."""


@dataclasses.dataclass(frozen=True)
class ReleasedFile:
    name: str
    url: str
    md5: str = None  # published by PaddleNLP; None: sha256 recorded at first download


@dataclasses.dataclass(frozen=True)
class Release:
    files: tuple
    # The file (by name) that read_model_state reads; None: the cache folder itself.
    weights: str = None
    about: str = ""


_NLP_COMMUNITY = "https://paddlenlp.bj.bcebos.com/models/community/PaddlePaddle/ernie_vil-2.0-base-zh/"

RELEASED = {
    # PaddleNLP's ErnieViLModel layout (converted on load); md5s from PaddleNLP's Taskflow table
    # (paddlenlp/taskflow/multimodal_feature_extraction.py).
    "ernie_vil-2.0-base-zh": Release(
        files=(
            ReleasedFile(PADDLENLP_WEIGHTS, _NLP_COMMUNITY + PADDLENLP_WEIGHTS, "38d8c8e01f74ba881e87d9a3f669e5ae"),
            ReleasedFile("config.json", _NLP_COMMUNITY + "config.json", "caf929b450d5638e8df2a95c936519e7"),
        ),
        about="ERNIE-ViL 2.0 base (ViT-B/16 + ERNIE 3.0 base), PaddleNLP's release",
    ),
    # The official release (PaddlePaddle/ERNIE, Research/ERNIE-ViL2/readme.md); no checksum published.
    "OPEN_ERNIE_VIL2_BASE_ViT": Release(
        files=(ReleasedFile("OPEN_ERNIE_VIL2_BASE_ViT.pdparams", "https://bj.bcebos.com/wenxin-models/OPEN_ERNIE_VIL2_BASE_ViT.pdparams"),),
        weights="OPEN_ERNIE_VIL2_BASE_ViT.pdparams",
        about="ERNIE-ViL 2.0 base (ViT-B/16 + ERNIE 3.0 base), the official release; config: configs/ernievil2_base_vit16.yaml",
    ),
}
ALIASES = {"PaddlePaddle/ernie_vil-2.0-base-zh": "ernie_vil-2.0-base-zh", "OPEN_ERNIE_VIL2_BASE_ViT.pdparams": "OPEN_ERNIE_VIL2_BASE_ViT"}


def cache_root():
    """``$ERNIEVIL2_HOME/weights``, by default ``~/.cache/ernievil2/weights``."""
    home = os.environ.get("ERNIEVIL2_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "ernievil2")
    return os.path.join(home, "weights")


def released_name(path):
    """The canonical released name ``path`` stands for, or None (an existing path is never a name)."""
    text = os.fspath(path)
    if os.path.exists(text):
        return None
    text = ALIASES.get(text, text)
    return text if text in RELEASED else None


def not_found_message(path):
    """The error for a weights path that is neither there nor a released name."""
    names = sorted(RELEASED) + sorted(ALIASES)
    close = difflib.get_close_matches(os.fspath(path), names, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{path}: file or folder not found, and not a released model name (known: {', '.join(sorted(RELEASED))}){hint}"


def check_weights_path(path):
    """An OSError unless ``path`` is a released name or a readable file or folder; never downloads
    (run when training starts: the name is resolved when the weights are read)."""
    if released_name(path) is not None:
        return
    if not os.path.exists(path):
        raise FileNotFoundError(not_found_message(path))
    check_path(path, None)


def resolve_weights(path):
    """A local path for ``path``: itself if it exists, else the released model it names (downloaded
    into the cache on first use, checked on every use). Unknown names: FileNotFoundError."""
    name = released_name(path)
    if name is None:
        if not os.path.exists(path):
            raise FileNotFoundError(not_found_message(path))
        return path
    release = RELEASED[name]
    folder = os.path.join(cache_root(), name)
    if _missing(release, folder):
        with _download_lock(name):
            # Another process (a rank on this node) may have fetched the files while this one waited.
            missing = _missing(release, folder)
            if missing:
                fetch(name, missing, folder)
    for item in release.files:
        verify(os.path.join(folder, item.name), item)
    return os.path.join(folder, release.weights) if release.weights else folder


def _missing(release, folder):
    return [f for f in release.files if not os.path.isfile(os.path.join(folder, f.name))]


@contextlib.contextmanager
def _download_lock(name):
    """One download of a model at a time on this machine; the lock file sits beside its folder."""
    os.makedirs(cache_root(), exist_ok=True)
    with open(os.path.join(cache_root(), f".{name}.lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _md5(path, chunk=1 << 20):
    md5 = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            md5.update(block)
    return md5.hexdigest()


def verify(path, item):
    """Check a cached file against its published md5, or the sha256 recorded when it was downloaded.

    A file without a record (put there by hand) gets one now: the first use is trusted."""
    if item.md5:
        found, expected, kind = _md5(path), item.md5, "md5"
    else:
        record = path + RECORDED_DIGEST
        found = file_digest(path)["sha256"]
        if not os.path.isfile(record):
            with atomic_text_file(record) as f:
                f.write(found + "\n")
            return
        with open(record, encoding="utf-8") as f:
            expected, kind = f.read().strip(), "sha256 recorded at its download"
    if found != expected:
        raise ReleasedModelError(
            f"{path}: {kind} is {expected} but the file's is {found}: it is corrupt or not the released file; "
            f"delete it to download it again from {item.url}"
        )


def _offline_message(name, missing, folder, err):
    fetch_list = " and ".join(f"{item.name} from {item.url}" for item in missing)
    return (
        f"cannot download the released model {name!r} ({err}): fetch {fetch_list} into {folder}{os.sep} "
        f"(that exact folder), or pass a local file or folder instead of the name"
    )


def fetch(name, files, folder):
    """Download ``files`` into ``folder``; a failure never leaves a file under its final name."""
    os.makedirs(folder, exist_ok=True)
    for item in files:
        try:
            download(item, os.path.join(folder, item.name))
        except ReleasedModelError:
            raise
        except (OSError, http.client.HTTPException) as err:  # URLError is an OSError
            still_missing = [f for f in files if not os.path.isfile(os.path.join(folder, f.name))]
            reason = getattr(err, "reason", None) or err
            raise ReleasedModelError(_offline_message(name, still_missing, folder, reason)) from None


def download(item, target):
    """``item.url`` -> ``target`` through a temporary file, checked before it takes the final name.

    Without a published md5, the sha256 record is written before the rename: a file under its
    final name always has the digest it arrived with beside it."""
    with urllib.request.urlopen(item.url, timeout=NETWORK_TIMEOUT) as response, atomic_file(target) as tmp:
        total = response.headers.get("Content-Length")
        total = int(total) if total and total.isdigit() else None
        md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
        got = 0
        with open(tmp, "wb") as out, Progress(os.path.basename(target), item.url, total) as bar:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
                md5.update(block)
                sha.update(block)
                got += len(block)
                bar.update(len(block))
        if total is not None and got != total:
            raise ReleasedModelError(f"{item.url}: the download stopped at {got} of {total} bytes; run again to retry")
        if item.md5 and md5.hexdigest() != item.md5:
            raise ReleasedModelError(f"{item.url}: md5 {md5.hexdigest()}, published {item.md5}: the download is corrupt; run again to retry")
        if not item.md5:
            with atomic_text_file(target + RECORDED_DIGEST) as f:
                f.write(sha.hexdigest() + "\n")


class Progress:
    """Bytes, rate and time left on stderr: a bar on a terminal, a line at start and end elsewhere."""

    def __init__(self, name, url, total):
        self.name, self.url, self.total = name, url, total
        self.bar = None

    def __enter__(self):
        size = f" ({self.total / 1e6:.1f} MB)" if self.total else ""
        print(f"downloading {self.name}{size} from {self.url}", file=sys.stderr, flush=True)
        self.start = time.monotonic()
        self.done = 0
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, unit="B", unit_scale=True, unit_divisor=1024, desc=self.name, file=sys.stderr)
        return self

    def update(self, n):
        self.done += n
        if self.bar is not None:
            self.bar.update(n)

    def __exit__(self, kind, value, trace):
        if self.bar is not None:
            self.bar.close()
        if kind is None:
            seconds = max(time.monotonic() - self.start, 1e-9)
            print(f"downloaded {self.name}: {self.done / 1e6:.1f} MB in {seconds:.1f} s ({self.done / 1e6 / seconds:.1f} MB/s)", file=sys.stderr, flush=True)
        return False
