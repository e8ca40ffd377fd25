"""Helpers shared by the benchmarks: timing with warm-up, machine load, the GEMM ceiling, tables.

The machine is shared, so every figure is a median over repeats and is printed
next to the 1-minute load average seen when it was taken.
"""
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


def gemm_rates(size=2048, repeats=5):
    """{backend: median GFLOP/s} of an fp32 ``size``-cubed matmul in Paddle (MKL) and in numpy (its BLAS)."""
    import numpy as np
    import paddle

    a = paddle.randn([size, size], dtype="float32")
    b = paddle.randn([size, size], dtype="float32")
    x, y = a.numpy(), b.numpy()
    flop = 2 * size**3 / 1e9
    # Reading one element back makes sure the product is finished before the clock stops.
    return {
        "paddle": flop / measure(lambda: float(paddle.matmul(a, b)[0, 0]), repeats).wall,
        "numpy": flop / measure(lambda: float(np.matmul(x, y)[0, 0]), repeats).wall,
    }


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
