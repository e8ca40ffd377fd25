"""Writing files so that a crash never leaves half of one under its real name, and their digests."""
import hashlib
import os
import tempfile
from contextlib import contextmanager


def umask_mode(folder=False):
    """The mode ``open`` or ``mkdir`` would give under this process's umask.

    ``mkstemp`` and ``mkdtemp`` make 0600 and 0700 whatever the umask, so files written through
    them would stay unreadable to a service running as another user.
    """
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if folder else 0o666) & ~umask


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
    os.chmod(tmp, umask_mode())
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


def check_path(path, folder=False):
    """Raise an OSError naming ``path`` unless it is a readable, non-empty file (a readable folder with ``folder``;
    ``folder=None``: either)."""
    kind = "folder" if folder else "file"
    if not os.path.exists(path):
        raise FileNotFoundError(f"{kind if folder is not None else 'path'} not found: {path}")
    if folder and not os.path.isdir(path):
        raise NotADirectoryError(f"{path} is a file, not a folder")
    if folder is False and os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a folder, not a file")
    if not os.access(path, os.R_OK | (os.X_OK if os.path.isdir(path) else 0)):
        raise PermissionError(f"{path} is not readable (permissions)")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise EmptyFileError(f"{path} is empty (0 bytes)")


class EmptyFileError(OSError):
    """A file that is there but holds nothing."""
