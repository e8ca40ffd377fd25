"""One error policy for every tool in ``tools/``: a user's mistake is one line and exit code 2.

A config, data, checkpoint or missing-file problem prints ``error: <what and
where>`` on stderr; anything else is a bug and keeps its traceback. The error
types are imported when an error happens, not before: ``tools/train.py`` is
imported by its decode workers, which must not load Paddle for nothing.
"""
import sys

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def user_errors():
    from .checkpoint.state import CheckpointMismatchError, CheckpointReadError
    from .data.errors import DataError
    from .data.parallel import WorkerCrashError
    from .evaluation.retrieval import RetrievalInputError
    from .inference.errors import DeviceUnavailableError, ExportError, GalleryError, OptionsError
    from .registry import ConfigError

    return (
        ConfigError, DataError, CheckpointMismatchError, CheckpointReadError, RetrievalInputError, WorkerCrashError,
        ExportError, GalleryError, OptionsError, DeviceUnavailableError, FileNotFoundError, IsADirectoryError,
        NotADirectoryError, PermissionError,
    )


def run(main, argv=None):
    """``main(argv)``'s exit code; a user error -> one line on stderr and 2; Ctrl-C -> 130."""
    try:
        return main(argv) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001  (re-raised below unless it is the user's)
        if isinstance(err, user_errors()):
            print(f"error: {err}", file=sys.stderr)
            return EXIT_USER_ERROR
        raise
