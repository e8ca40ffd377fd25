"""The predictor of an exported ONNX tower, run by ONNX Runtime (imported on first use, not with this module)."""
import os
import threading

import numpy as np

from .errors import DeviceUnavailableError, ExportError


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as err:
        raise DeviceUnavailableError(
            f"ONNX exports run with onnxruntime, which cannot be imported ({err}); pip install onnxruntime"
        ) from None
    return onnxruntime


class OnnxTowerPredictor:
    """One exported ONNX tower run by ONNX Runtime on CPU: ``predictor(array) -> embeddings``."""

    def __init__(self, model_file, input_name, options):
        if not os.path.isfile(model_file):
            raise ExportError(f"{model_file} is missing from the export")
        ort = import_onnxruntime()
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = options.cpu_threads
        session_options.inter_op_num_threads = 1
        # Idle threads sleep instead of spinning: both towers (and the service's other work) share the cores.
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session_options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(model_file, session_options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own error types for unreadable files
            raise ExportError(f"ONNX Runtime cannot load {model_file}: {err}") from err
        names = [node.name for node in self._session.get_inputs()]
        if names != [input_name]:
            raise ExportError(f"{model_file}: expected one input {input_name!r}, the model has {names}")
        self._input = input_name
        self._lock = threading.Lock()

    def __call__(self, array):
        with self._lock:
            return self._session.run(None, {self._input: np.ascontiguousarray(array)})[0]
