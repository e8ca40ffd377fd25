"""Helpers shared by the benchmarks: timing with warm-up, machine load, the GEMM ceiling, tables.

The machine is shared, so every figure is a median over repeats and is printed
next to the 1-minute load average seen when it was taken.
"""
import functools
import os
import statistics
import time
from typing import Any, NamedTuple

from ernievil2.evaluation.retrieval import github_table


class Timing(NamedTuple):
    wall: float  # median wall seconds per call
    cpu: float  # median CPU seconds of this process per call, all threads together
    load: float  # 1-minute load average right after the last timed call
    first: Any  # what the warm-up call returned, for correctness checks at no extra cost
    results: list  # what each timed call returned


def load_average():
    return os.getloadavg()[0]


def measure(fn, repeats):
    """One untimed warm-up call of ``fn`` (first-call allocations, lazy tables), then ``repeats`` timed ones."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    first = fn()
    walls, cpus, results = [], [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        results.append(fn())
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return Timing(statistics.median(walls), statistics.median(cpus), load_average(), first, results)


# Every fp32 GEMM this machine offers the project: Paddle's dygraph matmul (MKL), numpy's BLAS,
# oneDNN as Paddle Inference runs it (the exported predictors), ONNX Runtime's MLAS (the ONNX exports).
GEMM_BACKENDS = ("paddle", "numpy", "onednn", "onnxruntime")


def gemm_shape(size):
    """(m, k, n) of a product: ``size`` is an int (a cube) or such a triple."""
    return (size, size, size) if isinstance(size, int) else tuple(size)


def gemm_flop(size):
    m, k, n = gemm_shape(size)
    return 2 * m * k * n


def _operands(size):
    import numpy as np

    m, k, n = gemm_shape(size)
    rng = np.random.default_rng(0)
    return (rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32))


@functools.lru_cache(maxsize=None)
def gemm_runner(backend, size):
    """A call that computes one fp32 product of ``size`` (see :func:`gemm_shape`) in ``backend``, returning when done.

    Built once per backend and size: the oneDNN and ONNX Runtime ones compile a one-matmul program.
    """
    import numpy as np

    a, b = _operands(size)
    if backend == "numpy":
        return lambda: float(np.matmul(a, b)[0, 0])
    if backend == "paddle":
        import paddle

        x, y = paddle.to_tensor(a), paddle.to_tensor(b)
        # Reading one element back makes sure the product is finished before the clock stops.
        return lambda: float(paddle.matmul(x, y)[0, 0])
    if backend == "onednn":
        return _onednn_runner(a, b)
    if backend == "onnxruntime":
        return _onnxruntime_runner(a, b)
    raise ValueError(f"unknown GEMM backend {backend!r}; one of {GEMM_BACKENDS}")


def _onednn_runner(a, b):
    import tempfile

    import paddle

    from ernievil2 import runtime
    from ernievil2.inference.predictor import PredictorOptions, inference_config

    class MatMul(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.b = self.create_parameter(b.shape, default_initializer=paddle.nn.initializer.Assign(b))

        def forward(self, x):
            return paddle.matmul(x, self.b)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "matmul")
        paddle.jit.save(MatMul(), path, input_spec=[paddle.static.InputSpec(list(a.shape), "float32")])
        options = PredictorOptions(cpu_threads=runtime.available_cores())
        predictor = paddle.inference.create_predictor(inference_config(path + ".json", path + ".pdiparams", options))
    predictor.get_input_handle(predictor.get_input_names()[0]).copy_from_cpu(a)

    def run():
        predictor.run()
        # the predictor leaves MKL on one thread, which would halve the next dygraph matmul
        runtime.restore_matmul_threads()

    return run


def _onnxruntime_runner(a, b):
    from onnx import TensorProto, helper, numpy_helper

    from ernievil2 import runtime
    from ernievil2.inference.onnx_runtime import import_onnxruntime

    ort = import_onnxruntime()
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, list(a.shape))],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [a.shape[0], b.shape[1]])],
        [numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = runtime.available_cores()
    options.inter_op_num_threads = 1
    # idle threads must not spin on the cores the next backend measures
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return lambda: session.run(None, {"a": a})[0][0, 0]


def gemm_rates(size=2048, repeats=5, backends=GEMM_BACKENDS):
    """{backend: median GFLOP/s} of an fp32 product of ``size`` (see :func:`gemm_shape`) in each of ``backends``."""
    flop = gemm_flop(size) / 1e9
    return {backend: flop / measure(gemm_runner(backend, size), repeats).wall for backend in backends}


def gemm_gflops(size=2048, repeats=5):
    """(GFLOP/s, load): the machine's fp32 GEMM ceiling, the best of the backends it has, for MFU.

    Not Paddle's rate alone: a framework that runs its matmuls slowly must not
    make its own model FLOP utilisation look high.
    """
    rates = gemm_rates(size, repeats)
    return max(rates.values()), load_average()


def print_table(headers, rows):
    """A Markdown table, so the output pastes into docs/benchmarks.md unchanged."""
    print(github_table(headers, [[str(c) for c in row] for row in rows]))
