"""One error policy for every tool in ``tools/``: a user's mistake is one line and exit code 2.

A config, data, checkpoint or missing-file problem prints ``error: <what and
where>`` on stderr; anything else is a bug and keeps its traceback. The error
types are imported when an error happens, not before: ``tools/train.py`` is
imported by its decode workers, which must not load Paddle for nothing.
"""
import importlib
import sys

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def user_errors():
    from .checkpoint.released import ReleasedModelError
    from .checkpoint.state import CheckpointMismatchError, CheckpointReadError, CheckpointWriteError
    from .data.errors import DataError
    from .data.parallel import WorkerCrashError
    from .data.sources import DataFormatError
    from .evaluation.retrieval import RetrievalInputError
    from .files import EmptyFileError
    from .inference.errors import DeviceUnavailableError, ExportError, GalleryError, OptionsError
    from .registry import ConfigError

    return (
        ConfigError, DataError, DataFormatError, CheckpointMismatchError, CheckpointReadError, CheckpointWriteError, EmptyFileError,
        RetrievalInputError, WorkerCrashError, ReleasedModelError,
        ExportError, GalleryError, OptionsError, DeviceUnavailableError, FileNotFoundError, IsADirectoryError,
        NotADirectoryError, PermissionError,
    )


def run(main, argv=None, more_user_errors=()):
    """``main(argv)``'s exit code; a user error -> one line on stderr and 2; Ctrl-C -> 130.

    ``more_user_errors``: exception types that are the user's for this command too.
    """
    try:
        return main(argv) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001  (re-raised below unless it is the user's)
        # Paddle hands a Ctrl-C that lands inside a Python backward (a PyLayer) back as an OSError.
        if isinstance(err, OSError) and "KeyboardInterrupt:" in str(err):
            print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        if isinstance(err, user_errors() + tuple(more_user_errors)):
            print(f"error: {err}", file=sys.stderr)
            return EXIT_USER_ERROR
        raise


def run_command(name, argv=None):
    """The exit code of the command ``ernievil2/commands/<name>.py`` run with ``argv``."""
    module = importlib.import_module(f"ernievil2.commands.{name}")
    return run(module.main, argv, getattr(module, "USER_ERRORS", ()))


def run_as_script(module_name, name):
    """What ``tools/<name>.py`` does: run the command when executed, nothing when imported."""
    if module_name == "__main__":
        sys.exit(run_command(name))


def command(name):
    """The console-script function of a command (``setup.py`` names one per module of ``commands/``)."""

    def entry():
        return run_command(name)

    entry.__name__ = name
    return entry


build_index = command("build_index")
check_data = command("check_data")
build_vocab = command("build_vocab")
convert_checkpoint = command("convert_checkpoint")
demo_report = command("demo_report")
eval_retrieval = command("eval_retrieval")
eval_zeroshot = command("eval_zeroshot")
export_model = command("export_model")
extract_features = command("extract_features")
infer = command("infer")
make_demo_data = command("make_demo_data")
make_tags = command("make_tags")
serve = command("serve")
train = command("train")
