"""Training checkpoints: written atomically, found again for auto-resume.

A checkpoint is a folder ``step_000123/`` holding ``model.pdparams`` (the
official key layout, so it loads anywhere a released checkpoint does),
``optimizer.pdopt``, ``extra.pdparams`` (loss buffers, momentum encoder, when
present) and ``trainer_state.pkl`` (step, every rank's data position and RNG
state). It is written into a temporary folder and renamed into place, so a
crash never leaves a half checkpoint under a real name; ``latest`` names the
newest complete one.
"""
import errno
import os
import pickle
import re
import shutil
import tempfile

import paddle

from ..files import atomic_text_file, umask_mode
from . import MODEL_WEIGHTS, latest_checkpoint
from .state import CheckpointReadError, CheckpointWriteError

STEP_DIR = re.compile(r"^step_(\d+)$")
LATEST = "latest"


def checkpoint_root(output_dir):
    return os.path.join(output_dir, "checkpoints")


def save_checkpoint(output_dir, step, model, optimizer, extra_state, trainer_state, keep=3):
    """Write ``step_<step>`` atomically, point ``latest`` at it, prune to ``keep``; returns its path."""
    root = checkpoint_root(output_dir)
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, f"step_{step:06d}")
    tmp = tempfile.mkdtemp(prefix=f".step_{step:06d}-", dir=root)
    os.chmod(tmp, umask_mode(folder=True))
    try:
        paddle.save(model.state_dict(), os.path.join(tmp, MODEL_WEIGHTS))
        paddle.save(optimizer.state_dict(), os.path.join(tmp, "optimizer.pdopt"))
        paddle.save(extra_state, os.path.join(tmp, "extra.pdparams"))
        with open(os.path.join(tmp, "trainer_state.pkl"), "wb") as f:
            pickle.dump(trainer_state, f)
        for name in os.listdir(tmp):
            with open(os.path.join(tmp, name), "rb") as f:
                os.fsync(f.fileno())
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            needed = state_bytes([model.state_dict(), optimizer.state_dict(), extra_state])
            raise CheckpointWriteError(
                f"no space left on the disk of {root} for checkpoint step {step}: it needs about {mib(needed)}, "
                f"{mib(shutil.disk_usage(root).free)} are free; free some, lower Train.keep_checkpoints or change Global.output_dir"
            ) from None
        raise
    _write_latest(root, os.path.basename(final))
    for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def state_bytes(state):
    """The bytes of the arrays in a (nested) state: what writing it takes on disk, near enough."""
    if isinstance(state, dict):
        return sum(state_bytes(value) for value in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(value) for value in state)
    if isinstance(state, paddle.Tensor):
        return int(state.numel()) * state.element_size()
    return getattr(state, "nbytes", 0)


def mib(size):
    return f"{size / 2**20:.1f} MiB"


def estimate_checkpoint_bytes(model, extra_state):
    """One checkpoint before the first step has filled the optimizer: the weights, AdamW's two moments
    of each trained weight, and the extra state (loss buffers, momentum encoder)."""
    trained = sum(int(p.numel()) * p.element_size() for p in model.parameters() if not p.stop_gradient)
    return state_bytes(model.state_dict()) + 2 * trained + state_bytes(extra_state)


def check_free_space(output_dir, needed):
    """Refuse to start training when the disk of ``output_dir`` cannot take one checkpoint of ``needed`` bytes."""
    free = shutil.disk_usage(output_dir).free
    if free < needed:
        raise CheckpointWriteError(
            f"{output_dir}: {mib(free)} free on its disk, one checkpoint needs about {mib(needed)}; "
            "free some space or change Global.output_dir"
        )


def _write_latest(root, name):
    with atomic_text_file(os.path.join(root, LATEST)) as f:
        f.write(name + "\n")


def list_checkpoints(output_dir):
    """Complete checkpoint folders, oldest first."""
    root = checkpoint_root(output_dir)
    if not os.path.isdir(root):
        return []
    found = [(int(m.group(1)), os.path.join(root, n)) for n in os.listdir(root) if (m := STEP_DIR.match(n))]
    return [path for _, path in sorted(found)]


def resume_candidates(output_dir, resume):
    """Checkpoint folders to try, in order: ``auto`` = every one here, newest first; ``never`` = none; else that path."""
    if resume == "never":
        return []
    if resume != "auto":
        if not os.path.isfile(os.path.join(resume, "trainer_state.pkl")):
            raise FileNotFoundError(f"Train.resume: {resume} is not a training checkpoint (no trainer_state.pkl)")
        return [resume]
    found = list_checkpoints(output_dir)[::-1]
    latest = latest_checkpoint(output_dir)
    if latest in found:
        found.remove(latest)
        found.insert(0, latest)
    return found


def clean_temporary(output_dir):
    """Remove what an interrupted save left behind (``.step_*`` folders, ``.latest-*`` files); returns their paths."""
    root = checkpoint_root(output_dir)
    if not os.path.isdir(root):
        return []
    removed = []
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if name.startswith(".step_") and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        elif name.startswith(".latest-") and os.path.isfile(path):
            os.remove(path)
            removed.append(path)
    return removed


def load_checkpoint(path):
    """(model state, optimizer state, extra state, trainer state) of a checkpoint folder, all read before any is used.

    A missing, truncated or corrupt file raises :class:`CheckpointReadError` naming it.
    """
    parts = []
    for name in (MODEL_WEIGHTS, "optimizer.pdopt", "extra.pdparams", "trainer_state.pkl"):
        file = os.path.join(path, name)
        try:
            if name.endswith(".pkl"):
                with open(file, "rb") as f:
                    parts.append(pickle.load(f))
            else:
                parts.append(paddle.load(file))
        except Exception as err:  # noqa: BLE001  (a cut file fails in pickle, numpy or Paddle)
            raise CheckpointReadError(f"{file}: cannot be read ({type(err).__name__}: {err})") from None
    return tuple(parts)


__all__ = ["check_free_space", "clean_temporary", "estimate_checkpoint_bytes", "list_checkpoints", "load_checkpoint", "resume_candidates", "save_checkpoint"]
