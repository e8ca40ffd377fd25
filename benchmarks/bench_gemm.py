"""The machine's fp32 GEMM ceiling, and what Paddle reaches as run by default and as ernievil2 sets it up.

    python -m benchmarks.bench_gemm [--size 2048] [--repeats 5] [--rounds 3]
    python -m benchmarks.bench_gemm --mkl-cpu-types 5 6 7 --rounds 4 --repeats 9   # MKL's kernels on an AMD CPU

Each setting runs in its own child process, because MKL reads its variables once, when
Paddle loads. Settings, in rotation over ``--rounds`` (medians pooled):
- ``paddle, 1 MKL thread``: what a process gets without ernievil2 (Paddle pins
  ``OMP_NUM_THREADS=1`` and MKL follows it);
- ``paddle, ernievil2 runtime``: after ``import ernievil2`` (every core, the AMD switch
  where it applies);
- ``numpy``: the same product in numpy's BLAS, the outside reference;
- ``Paddle Inference (oneDNN)``: a one-matmul program run as the exported predictors run;
- ``ONNX Runtime (MLAS)``: a one-node ONNX graph, as the ONNX exports run.
The ceiling for model FLOP utilisation is the best of them (``benchmarks/common.py``).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# (the parent only counts; each setting's child sets up its own runtime)
from benchmarks.common import gemm_flop, gemm_shape  # noqa: E402

CHILD = r"""
import json, os, sys, time
setting, repeats, shapes = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
if setting == "plain":  # Paddle as it runs without ernievil2's runtime set-up
    import paddle
    def runner(shape):
        a = paddle.randn(shape[:2]); b = paddle.randn(shape[1:])
        return lambda: float(paddle.matmul(a, b)[0, 0])
else:
    import ernievil2
    from benchmarks.common import gemm_runner
    runner = lambda shape: gemm_runner(setting, tuple(shape))
times = []
for shape in shapes:
    run = runner(shape)
    run()
    times.append([])
    for _ in range(repeats):
        t = time.perf_counter(); run(); times[-1].append(time.perf_counter() - t)
env = {k: os.environ.get(k) for k in ("MKL_NUM_THREADS", "OMP_NUM_THREADS", "MKL_DEBUG_CPU_TYPE")}
print(json.dumps({"times": times, "env": env}))
"""

SETTINGS = {
    "paddle, 1 MKL thread": "plain",
    "paddle (MKL), ernievil2 runtime": "paddle",
    "numpy": "numpy",
    "Paddle Inference (oneDNN), ernievil2 runtime": "onednn",
    "ONNX Runtime (MLAS)": "onnxruntime",
}


def child(setting, shapes, repeats, **extra_env):
    """Per-shape lists of seconds for ``setting`` in a fresh interpreter (``extra_env`` as the user's own)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MKL_NUM_THREADS", "OMP_NUM_THREADS", "MKL_DEBUG_CPU_TYPE")}
    env.update(extra_env)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, setting, str(repeats), json.dumps(shapes)], env=env, capture_output=True, text=True,
        check=True, cwd=REPO,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def parse_shape(text):
    m, k, n = (int(x) for x in text.lower().split("x"))
    return [m, k, n]


def ceiling_table(args):
    cube = [gemm_shape(args.size)]
    times, envs = {name: [] for name in SETTINGS}, {}
    for _ in range(args.rounds):
        for name, setting in SETTINGS.items():
            result = child(setting, cube, args.repeats)
            times[name] += result["times"][0]
            envs[name] = result["env"]
    flop = gemm_flop(args.size) / 1e9
    rates = {name: flop / statistics.median(t) for name, t in times.items()}
    ceiling = max(rates.values())
    print(f"fp32 {args.size}^3 matmul, medians of {args.rounds} x {args.repeats}, load {os.getloadavg()[0]:.1f}\n")
    print("| setting | GFLOP/s | of the ceiling | MKL / OMP threads, MKL_DEBUG_CPU_TYPE |")
    print("|---|---|---|---|")
    for name, rate in rates.items():
        env = envs[name]
        print(f"| {name} | {rate:.0f} | {rate / ceiling:.0%} | {env['MKL_NUM_THREADS']} / {env['OMP_NUM_THREADS']}, {env['MKL_DEBUG_CPU_TYPE']} |")


def cpu_type_table(args):
    """Paddle's matmul under each ``MKL_DEBUG_CPU_TYPE`` at each shape, children in rotation."""
    shapes = [parse_shape(s) for s in args.shapes]
    rates = {t: [[] for _ in shapes] for t in args.mkl_cpu_types}
    for _ in range(args.rounds):
        for cpu_type in args.mkl_cpu_types:
            result = child("paddle", shapes, args.repeats, MKL_DEBUG_CPU_TYPE=cpu_type)
            for i, (shape, seconds) in enumerate(zip(shapes, result["times"])):
                rates[cpu_type][i].append(gemm_flop(shape) / statistics.median(seconds) / 1e9)
    print(f"\nPaddle (MKL, ernievil2 runtime) GFLOP/s per MKL_DEBUG_CPU_TYPE: median (min-max) over {args.rounds} rounds, "
          f"each the median of {args.repeats}; load {os.getloadavg()[0]:.1f}\n")
    print("| MKL_DEBUG_CPU_TYPE | " + " | ".join("x".join(map(str, s)) for s in shapes) + " |")
    print("|---|" + "---|" * len(shapes))
    for cpu_type, per_shape in rates.items():
        print(f"| {cpu_type} | " + " | ".join(f"{statistics.median(r):.0f} ({min(r):.0f}-{max(r):.0f})" for r in per_shape) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mkl-cpu-types", nargs="+", default=[], metavar="N",
                        help="instead: Paddle's matmul with each MKL_DEBUG_CPU_TYPE (e.g. 5 6 7) at --shapes")
    parser.add_argument("--shapes", nargs="+", default=["2048x2048x2048", "1576x768x3072", "1576x3072x768", "1576x768x768", "384x768x768"],
                        metavar="MxKxN", help="with --mkl-cpu-types (default: the base train step's matmuls)")
    args = parser.parse_args()
    if args.mkl_cpu_types:
        cpu_type_table(args)
    else:
        ceiling_table(args)


if __name__ == "__main__":
    main()
