"""Loading state dicts strictly, and saving them atomically."""
import os

import paddle

from ..files import atomic_file


class CheckpointMismatchError(ValueError):
    """Keys or shapes of a checkpoint do not match the model; every problem is listed by name."""


class CheckpointReadError(ValueError):
    """A weights or checkpoint file that cannot be read at all (truncated, corrupt, not Paddle's)."""


class CheckpointWriteError(OSError):
    """A checkpoint that cannot be written: a full disk or a folder that takes no files."""


def _shape(value):
    return list(value.shape)


def compare_state(expected, given):
    """(missing, unexpected, mismatched) between an expected and a given state dict."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    mismatched = sorted(
        (k, _shape(expected[k]), _shape(given[k]))
        for k in set(expected) & set(given)
        if _shape(expected[k]) != _shape(given[k])
    )
    return missing, unexpected, mismatched


def describe_mismatch(missing, unexpected, mismatched, limit=20):
    lines = []
    for title, items in (("missing", missing), ("unexpected", unexpected)):
        if items:
            shown = ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
            lines.append(f"{len(items)} {title} key(s): {shown}")
    if mismatched:
        shown = "; ".join(f"{k}: model {a} vs checkpoint {b}" for k, a, b in mismatched[:limit])
        lines.append(f"{len(mismatched)} shape mismatch(es): {shown}")
    return "\n".join(lines)


def load_state_strict(layer, state, source="checkpoint", allow_missing=()):
    """Set ``state`` into ``layer``; any missing/unexpected key or shape mismatch is an error.

    ``allow_missing`` names key prefixes that may be absent (e.g. momentum
    encoders when starting from an official checkpoint).
    """
    missing, unexpected, mismatched = compare_state(layer.state_dict(), state)
    missing = [k for k in missing if not k.startswith(tuple(allow_missing))]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(f"{source} does not fit the model:\n" + describe_mismatch(missing, unexpected, mismatched))
    layer.set_state_dict(state)


def read_state(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = paddle.load(path)
    except Exception as err:  # noqa: BLE001  (paddle.load raises anything from int() to pickle errors)
        raise CheckpointReadError(f"{path}: cannot read as Paddle weights ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict):
        raise CheckpointMismatchError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def atomic_save(obj, path):
    """``paddle.save`` through :func:`~ernievil2.files.atomic_file`: never a half-written file."""
    with atomic_file(path) as tmp:
        paddle.save(obj, tmp)
