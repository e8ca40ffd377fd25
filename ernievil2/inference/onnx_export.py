"""ONNX export: paddle2onnx conversion, int8 post-training quantisation (ONNX Runtime).

Why ONNX Runtime for int8: with Paddle 3.3 neither of Paddle's own post-training
quantisations exports this model. The static one (``paddle.static.quantization``,
which PaddleSlim 2.6's ``quant_post_static`` wraps) needs an old-IR ``.pdmodel``, and
Paddle 3.3 cannot trace the towers to the old IR; the dygraph one
(``paddle.quantization.PTQ``) calibrates, but ``paddle.jit.save`` of the quantised
layers fails under PIR. ONNX Runtime's static quantisation works on the converted
fp32 file and runs int8 matmuls on AVX2 as on AVX-512 VNNI.

Imported only for ONNX exports: paddle2onnx and ONNX Runtime's quantisation are loaded here and nowhere else;
the ONNX Runtime predictor is :mod:`.onnx_runtime`.
"""
import contextlib
import os

import numpy as np

from ..data.errors import SkipCounter
from .deploy import TOWERS, tower_files
from .errors import ExportError
from .inputs import decoded_images, iter_tsv_images
from .predictor import ExportedModel, PredictorOptions

OPSET = 17
# Calibration batches: the shapes the predictor meets, at a size that keeps calibration memory small.
CALIBRATION_BATCH = 16


def convert_towers(paddle_dir, output_dir):
    """Each tower's Paddle program in ``paddle_dir`` -> ``output_dir/<tower>/model.onnx`` (weights inside)."""
    import paddle2onnx

    for tower in TOWERS:
        program, params = (os.path.join(paddle_dir, path) for path in tower_files(tower))
        target = os.path.join(output_dir, tower_files(tower, "onnx")[0])
        os.makedirs(os.path.dirname(target), exist_ok=True)
        # onnxoptimizer, not paddle2onnx's default polygraphy: polygraphy tries to pip-install
        # onnx_graphsurgeon while it runs, which fails offline and costs seconds online.
        paddle2onnx.export(program, params, target, opset_version=OPSET, enable_onnx_checker=True,
                           optimize_tool="onnxoptimizer")
        if not os.path.isfile(target):
            raise ExportError(f"paddle2onnx did not write {target}")


def read_calibration(path, samples, on_error="skip"):
    """``(images, texts)``: the decodable images and the captions of the first ``samples`` lines of an
    official ``text \\t image_id \\t base64`` TSV (an image captioned on several lines counts once)."""
    if samples < 1:
        raise ValueError(f"calibration samples must be at least 1, got {samples}")
    counter = SkipCounter(on_error)
    texts, images, seen = [], [], set()
    for item in iter_tsv_images(path, counter):
        if len(texts) == samples:
            break
        texts.append(item.caption)
        if item.image_id not in seen:
            seen.add(item.image_id)
            images.extend(rgb for _, rgb in decoded_images([item], counter))
    if not images or not texts:
        raise ValueError(f"{path}: no usable calibration samples (images and captions) in its first {samples} lines")
    return images, texts


class Recorder:
    """Wraps a tower predictor and keeps a copy of every input it is given."""

    def __init__(self, predictor):
        self.predictor = predictor
        self.inputs = []

    def __call__(self, array):
        self.inputs.append(np.array(array))
        return self.predictor(array)


def calibration_inputs(exported, calibration):
    """{tower: [input arrays]}: what ``exported`` feeds its towers for the calibration images and texts.

    Recording the predictor's own inputs keeps calibration faithful to deployment: the same
    preprocessing, tokenizer, length-sorted batches and shape buckets.
    """
    images, texts = calibration
    exported.image_predictor = Recorder(exported.image_predictor)
    exported.text_predictor = Recorder(exported.text_predictor)
    exported.encode_images(images, batch_size=CALIBRATION_BATCH)
    exported.encode_texts(texts, batch_size=CALIBRATION_BATCH)
    return {"image": exported.image_predictor.inputs, "text": exported.text_predictor.inputs}


def quantize_file(fp32_file, int8_file, input_name, batches):
    """Static int8 quantisation of ``fp32_file`` calibrated on ``batches`` (arrays for ``input_name``)."""
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{input_name: batch} for batch in batches])

        def get_next(self):
            return next(self.feeds, None)

    fp32_file, int8_file = os.path.abspath(fp32_file), os.path.abspath(int8_file)
    # ONNX Runtime's shape inference saves a model that it could not fully infer into the working
    # directory; running inside the temporary one keeps it out of the user's.
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        prepared = os.path.join(tmp, "prepared.onnx")
        # Folds and fuses the graph first, so that what gets quantised is the graph that runs. Symbolic
        # shape inference is skipped: it stops on the towers' dynamic reshapes.
        quant_pre_process(fp32_file, prepared, skip_symbolic_shape=True)
        quantize_static(prepared, int8_file, Reader(), **quantisation_settings())


def quantisation_settings():
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    return {
        "quant_format": QuantFormat.QOperator,
        "op_types_to_quantize": ["MatMul", "Gemm"],
        "per_channel": True,
        "activation_type": QuantType.QUInt8,
        "weight_type": QuantType.QInt8,
        # 7-bit weights: on x86 CPUs without VNNI the u8 x s8 kernels add pairs of products in
        # 16 bits, which saturate with full-range weights (the demo model lost 9.3 MeanRecall on
        # an AVX2 EPYC; with VNNI it loses 0.05). The export may be served on either kind.
        "reduce_range": True,
        "calibrate_method": CalibrationMethod.MinMax,
        # Only the weight matmuls: attention's activation-by-activation products stay fp32.
        "extra_options": {"MatMulConstBOnly": True},
    }


def quantize_export(fp32_dir, output_dir, calibration, threads=None):
    """Quantise the fp32 ONNX export in ``fp32_dir`` into ``output_dir`` (model files only)."""
    options = PredictorOptions() if threads is None else PredictorOptions(cpu_threads=threads)
    fp32 = ExportedModel(fp32_dir, options)
    batches = calibration_inputs(fp32, calibration)
    for tower in TOWERS:
        relative = fp32.deploy[tower]["model_file"]
        target = os.path.join(output_dir, relative)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        quantize_file(os.path.join(fp32_dir, relative), target, fp32.deploy[tower]["input_name"], batches[tower])
