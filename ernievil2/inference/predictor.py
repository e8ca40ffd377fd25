"""Paddle Inference (or ONNX Runtime) predictors for an export folder, and batched encoding of texts and images.

The export's format and precision come from its ``deploy.yaml`` (``runtime``): a Paddle
export runs in Paddle Inference, in bf16 through oneDNN when it was exported so; an
ONNX export (fp32 or int8) runs in ONNX Runtime on CPU.

CPU: oneDNN on or off and a thread count. GPU: ``enable_use_gpu`` and,
optionally, the TensorRT subgraph engine (FP32 or FP16) with dynamic shape
ranges. The GPU and TensorRT paths use the standard ``paddle.inference`` calls
but could not be run where this was written (CPU-only Paddle); asking for them
on a build without CUDA or TensorRT is an error, not a silent CPU fallback.
"""
import dataclasses
import os
import threading
from functools import cached_property

import numpy as np
import paddle
from paddle import inference as paddle_infer

from .. import runtime
from ..data.image_ops import EvalTransform
from ..data.tokenizer import ErnieTokenizer, trim_padding
from .deploy import model_id, read_deploy, runtime_of, verify_files
from .errors import DeviceUnavailableError, ExportError, OptionsError
from .onnx_runtime import OnnxTowerPredictor

DEVICES = ("cpu", "gpu")
PRECISIONS = ("fp32", "fp16")
# Shortest text the tokenizer produces: [CLS] [SEP].
MIN_TEXT_LEN = 2


@dataclasses.dataclass(frozen=True)
class PredictorOptions:
    device: str = "cpu"
    cpu_threads: int = max(1, os.cpu_count() or 1)
    onednn: bool = True
    # Text batches are padded to a few sizes (see pad_text_batch), so that a service meets a
    # bounded set of input shapes: oneDNN keeps kernels and memory for each one.
    shape_buckets: bool = True
    gpu_id: int = 0
    gpu_memory_mb: int = 512
    tensorrt: bool = False
    precision: str = "fp32"
    # TensorRT builds engines for a shape range: batches 1..max_batch_size, texts 2..max_len.
    max_batch_size: int = 64
    opt_batch_size: int = 16

    def __post_init__(self):
        if self.device not in DEVICES:
            raise OptionsError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise OptionsError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.cpu_threads < 1:
            raise OptionsError(f"cpu_threads must be at least 1, got {self.cpu_threads}")
        if not 1 <= self.opt_batch_size <= self.max_batch_size:
            raise OptionsError("need 1 <= opt_batch_size <= max_batch_size")
        if self.tensorrt and self.device != "gpu":
            raise OptionsError("TensorRT needs device='gpu'")
        if self.precision == "fp16" and not self.tensorrt:
            raise OptionsError("fp16 is only available through TensorRT (tensorrt=True)")


def check_device_support(options):
    """Fail clearly when the installed Paddle cannot do what ``options`` ask."""
    if options.device == "gpu" and not paddle.device.is_compiled_with_cuda():
        raise DeviceUnavailableError(
            "device='gpu' needs a CUDA build of Paddle (paddlepaddle-gpu); this one is CPU-only"
        )
    if options.tensorrt and paddle_infer.get_trt_compile_version() == (0, 0, 0):
        raise DeviceUnavailableError("TensorRT was requested but this Paddle build was compiled without TensorRT")


def shape_range(input_name, example_shape, options, max_len=None):
    """Keyword arguments of ``Config.set_trt_dynamic_shape_info``: min, max and optimal shapes.

    ``example_shape`` is the input shape with the batch axis first; for the
    text tower the sequence axis varies from 2 to ``max_len``.
    """
    rest = list(example_shape[1:])
    if max_len is None:
        low, opt, high = rest, rest, rest
    else:
        low, opt, high = [MIN_TEXT_LEN], [max_len], [max_len]
    return {
        "min_input_shape": {input_name: [1] + low},
        "max_input_shape": {input_name: [options.max_batch_size] + high},
        "optim_input_shape": {input_name: [options.opt_batch_size] + opt},
    }


def check_runtime_support(fmt, precision, options):
    """Fail clearly when an export's format and precision cannot run with ``options`` here.

    bf16 runs only where the CPU has bf16 instructions (avx512_bf16 or AMX): elsewhere Paddle
    would log a line and quietly run fp32, which is not what the export promises.
    """
    if fmt == "onnx":
        if options.device != "cpu":
            raise OptionsError("ONNX exports run on CPU (ONNX Runtime); use device='cpu'")
        return
    if precision == "bf16":
        if options.device != "cpu" or not options.onednn:
            raise OptionsError("a bf16 export runs on CPU through oneDNN: use device='cpu' with oneDNN on")
        if not paddle.base.core.supports_bfloat16():
            raise DeviceUnavailableError(
                "a bf16 export needs a CPU with bf16 instructions (avx512_bf16 or AMX); this one has none "
                "(Paddle would run it in fp32): use an fp32 export here"
            )


def inference_config(model_file, params_file, options, shapes=None, bf16=False):
    """A ``paddle.inference.Config`` for one tower (``bf16``: oneDNN converts the fp32 program)."""
    config = paddle_infer.Config(model_file, params_file)
    config.disable_glog_info()
    if options.device == "cpu":
        config.disable_gpu()
        config.set_cpu_math_library_num_threads(options.cpu_threads)
        if options.onednn:
            config.enable_onednn()
            # 0 = one cache for all shapes. Paddle's default (a bounded cache per input shape) keeps a
            # reordered copy of every weight per shape: measured here, each new text shape of the base
            # model then cost about 1 s and 330 MB, against 0.1 s and 1-2 MB with 0.
            config.set_onednn_cache_capacity(0)
            if bf16:
                config.enable_onednn_bfloat16()
        else:
            config.disable_onednn()
        return config
    config.enable_use_gpu(options.gpu_memory_mb, options.gpu_id)
    if options.tensorrt:
        precision = {"fp16": paddle_infer.PrecisionType.Half, "fp32": paddle_infer.PrecisionType.Float32}
        config.enable_tensorrt_engine(
            workspace_size=1 << 30,
            max_batch_size=options.max_batch_size,
            min_subgraph_size=3,
            precision_mode=precision[options.precision],
            use_static=False,
            use_calib_mode=False,
        )
        config.set_trt_dynamic_shape_info(**shapes)
    return config


class TowerPredictor:
    """One exported tower: ``predictor(array) -> embeddings`` (float32 ``[N, D]``).

    A Paddle predictor must not run two batches at once; calls are serialised.
    """

    def __init__(self, model_file, params_file, input_name, options, shapes=None, bf16=False):
        for path in (model_file, params_file):
            if not os.path.isfile(path):
                raise ExportError(f"{path} is missing from the export")
        try:
            self._predictor = paddle_infer.create_predictor(
                inference_config(model_file, params_file, options, shapes, bf16)
            )
        except Exception as err:  # Paddle raises assorted error types for unreadable programs
            raise ExportError(f"Paddle Inference cannot load {model_file} with {params_file}: {err}") from err
        names = self._predictor.get_input_names()
        if names != [input_name]:
            raise ExportError(f"{model_file}: expected one input {input_name!r}, the program has {names}")
        self._input = self._predictor.get_input_handle(input_name)
        self._output = self._predictor.get_output_handle(self._predictor.get_output_names()[0])
        self._lock = threading.Lock()

    def __call__(self, array):
        with self._lock:
            self._input.reshape(list(array.shape))
            self._input.copy_from_cpu(np.ascontiguousarray(array))
            self._predictor.run()
            runtime.restore_matmul_threads()
            return self._output.copy_to_cpu()


def bucket_size(n):
    """The smallest of 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, ... (powers of two and 1.5 times them) >= ``n``."""
    power = 1 << (n - 1).bit_length()
    return 3 * power // 4 if power >= 4 and 3 * power // 4 >= n else power


def pad_text_batch(input_ids, max_length, cls_id, sep_id, pad_id=0):
    """``input_ids`` padded to bucket sizes: extra rows are ``[CLS] [SEP]``, extra columns padding.

    The number of distinct shapes a service sees stays small (about ten batch
    sizes by about ten lengths), and with it oneDNN's per-shape memory. The extra
    rows are dropped after the call; extra columns are masked like any padding.
    """
    rows, length = input_ids.shape
    shape = (bucket_size(rows), max(length, min(bucket_size(length), max_length)))
    padded = np.full(shape, pad_id, dtype=np.int64)
    padded[rows:, 0], padded[rows:, 1] = cls_id, sep_id
    padded[:rows, :length] = input_ids
    return padded


def length_sorted_batches(lengths, batch_size):
    """Index batches of similar lengths (longest first), so that padding is small."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def run_batched(encode, inputs, batch_size, embed_dim):
    """``encode`` over consecutive slices of ``inputs``, concatenated."""
    if len(inputs) == 0:
        return np.zeros((0, embed_dim), np.float32)
    return np.concatenate([encode(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)])


class ExportedModel:
    """An export folder ready to encode: tokenizer, image transform and both tower predictors.

    Towers are loaded on first use, so text-only work never reads the image
    weights. ``verify`` checks every file's size and SHA-256 first.
    """

    def __init__(self, folder, options=None, verify=True, max_len=None):
        self.folder = folder
        self.deploy = read_deploy(folder)
        if verify:
            verify_files(folder, self.deploy)
        self.options = options or PredictorOptions()
        self.format, self.precision = runtime_of(self.deploy)
        check_runtime_support(self.format, self.precision, self.options)
        check_device_support(self.options)
        text = self.deploy["text"]
        self.max_len = int(max_len or text["max_len"])
        if not MIN_TEXT_LEN < self.max_len <= text["max_position_embeddings"]:
            raise OptionsError(
                f"max_len must be in ({MIN_TEXT_LEN}, {text['max_position_embeddings']}] for this model, "
                f"got {self.max_len}"
            )
        self.tokenizer = ErnieTokenizer(
            os.path.join(folder, text["vocab_file"]), self.max_len, do_lower_case=text["do_lower_case"]
        )
        preprocess = self.deploy["image"]["preprocess"]
        self.transform = EvalTransform.from_config(preprocess)
        self.image_size = int(preprocess["image_size"])
        self.embed_dim = int(self.deploy["embed_dim"])
        self.logit_scale = float(self.deploy["logit_scale"])
        self.model_id = model_id(self.deploy)

    def _tower(self, name, example_shape, max_len=None):
        section = self.deploy[name]
        model_file = os.path.join(self.folder, section["model_file"])
        if self.format == "onnx":
            return OnnxTowerPredictor(model_file, section["input_name"], self.options)
        shapes = shape_range(section["input_name"], example_shape, self.options, max_len)
        return TowerPredictor(
            model_file,
            os.path.join(self.folder, section["params_file"]),
            section["input_name"],
            self.options,
            shapes,
            bf16=self.precision == "bf16",
        )

    @cached_property
    def image_predictor(self):
        return self._tower("image", [1, 3, self.image_size, self.image_size])

    @cached_property
    def text_predictor(self):
        return self._tower("text", [1, self.max_len], max_len=self.max_len)

    def encode_ids(self, input_ids):
        """Embeddings of one batch of token ids (``[N, L]`` int64; padding trimmed, then bucketed)."""
        tok = self.tokenizer
        ids = trim_padding(np.asarray(input_ids, np.int64), tok.pad_id)
        if not self.options.shape_buckets:
            return self.text_predictor(ids)
        # Padding stops at max_len, the longest text TensorRT's shape range admits.
        padded = pad_text_batch(ids, self.max_len, tok.cls_id, tok.sep_id, tok.pad_id)
        return self.text_predictor(padded)[: len(ids)]

    def encode_texts(self, texts, batch_size=64):
        """Embeddings of ``texts`` (``[N, D]``), batching texts of similar length together."""
        texts = list(texts)
        out = np.zeros((len(texts), self.embed_dim), np.float32)
        if not texts:
            return out
        ids = self.tokenizer.encode(texts)
        lengths = (ids != self.tokenizer.pad_id).sum(axis=1)
        for rows in length_sorted_batches(lengths, batch_size):
            out[rows] = self.encode_ids(ids[rows])
        return out

    def warm_up(self):
        """Load both towers and run a small batch through each: the first real call does not pay for it."""
        self.encode_texts(["warm up"])
        self.encode_pixels(np.zeros((1, 3, self.image_size, self.image_size), np.float32))

    def preprocess(self, rgb):
        """An RGB uint8 HWC image -> the float32 CHW model input."""
        return self.transform(rgb)

    def encode_pixels(self, batch):
        """Embeddings of preprocessed images (``[N, 3, S, S]`` float32)."""
        return self.image_predictor(np.asarray(batch, np.float32))

    def encode_images(self, images, batch_size=16):
        """Embeddings of RGB uint8 images (a list of HWC arrays), ``batch_size`` at a time."""
        images = list(images)
        return run_batched(
            lambda chunk: self.encode_pixels(np.stack([self.preprocess(im) for im in chunk])),
            images,
            batch_size,
            self.embed_dim,
        )
