"""Writing files so that a crash never leaves half of one under its real name, and their digests."""
import hashlib
import os
import tempfile
from contextlib import contextmanager


@contextmanager
def atomic_file(path):
    """Yield a temporary path beside ``path``; when the block ends without error, the file written
    there is synced to disk and renamed to ``path``, else removed.

    The temporary name is ``.<name>-<random>``, so a folder's leftovers of an
    interrupted write are easy to find (``checkpoint.training.clean_temporary``).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}-", dir=folder)
    os.close(handle)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


@contextmanager
def atomic_text_file(path):
    """A text file (UTF-8, ``\\n`` line ends) written through :func:`atomic_file`."""
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        yield f


def file_digest(path, chunk=1 << 20):
    """``{"bytes": size, "sha256": hex}`` of a file."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            sha.update(block)
    return {"bytes": os.path.getsize(path), "sha256": sha.hexdigest()}
