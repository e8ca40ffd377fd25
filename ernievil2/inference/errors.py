"""Errors that describe the user's files or machine rather than a bug: tools print them without a traceback."""
from ..data.errors import DataError


class ExportError(ValueError):
    """A missing, incomplete or corrupt export folder; the message says which file and why."""


class GalleryError(ValueError):
    """A gallery that is missing, inconsistent, or made by another model."""


class OptionsError(ValueError):
    """Predictor options that contradict each other (fp16 without TensorRT, ...)."""


class DeviceUnavailableError(RuntimeError):
    """A GPU, TensorRT or GPU faiss was asked for and this installation cannot provide it."""


USER_ERRORS = (ExportError, GalleryError, OptionsError, DeviceUnavailableError, DataError, FileNotFoundError)
