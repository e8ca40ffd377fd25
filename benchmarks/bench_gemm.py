"""The machine's fp32 GEMM ceiling, and what Paddle reaches as run by default and as ernievil2 sets it up.

    python benchmarks/bench_gemm.py [--size 2048] [--repeats 5] [--rounds 3]

Each setting runs in its own child process, because MKL reads its variables once, when
Paddle loads. Settings, in rotation over ``--rounds`` (medians pooled):
- ``paddle, 1 MKL thread``: what a process gets without ernievil2 (Paddle pins
  ``OMP_NUM_THREADS=1`` and MKL follows it);
- ``paddle, ernievil2 runtime``: after ``import ernievil2`` (every core, the AMD switch
  where it applies);
- ``numpy``: the same product in numpy's BLAS, the outside reference.
The ceiling for model FLOP utilisation is the best of them (``benchmarks/common.py``).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, os, sys, time
setting, size, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if setting == "ernievil2":
    import ernievil2
    from ernievil2 import runtime
import numpy as np
if setting == "numpy":
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    b = a.copy()
    run = lambda: float((a @ b)[0, 0])
else:
    import paddle
    a = paddle.randn([size, size]); b = paddle.randn([size, size])
    run = lambda: float(paddle.matmul(a, b)[0, 0])
run()
times = []
for _ in range(repeats):
    t = time.perf_counter(); run(); times.append(time.perf_counter() - t)
env = {k: os.environ.get(k) for k in ("MKL_NUM_THREADS", "OMP_NUM_THREADS", "MKL_DEBUG_CPU_TYPE")}
print(json.dumps({"times": times, "env": env}))
"""

SETTINGS = {
    "paddle, 1 MKL thread": ("plain", {}),
    "paddle, ernievil2 runtime": ("ernievil2", {}),
    "numpy": ("numpy", {}),
}


def child(setting, size, repeats):
    env = {k: v for k, v in os.environ.items() if k not in ("MKL_NUM_THREADS", "OMP_NUM_THREADS", "MKL_DEBUG_CPU_TYPE")}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, setting, str(size), str(repeats)], env=env, capture_output=True, text=True, check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    times, envs = {name: [] for name in SETTINGS}, {}
    for _ in range(args.rounds):
        for name, (setting, _) in SETTINGS.items():
            result = child(setting, args.size, args.repeats)
            times[name] += result["times"]
            envs[name] = result["env"]
    flop = 2 * args.size**3 / 1e9
    rates = {name: flop / statistics.median(t) for name, t in times.items()}
    ceiling = max(rates.values())
    print(f"fp32 {args.size}^3 matmul, medians of {args.rounds} x {args.repeats}, load {os.getloadavg()[0]:.1f}\n")
    print("| setting | GFLOP/s | of the ceiling | MKL / OMP threads, MKL_DEBUG_CPU_TYPE |")
    print("|---|---|---|---|")
    for name, rate in rates.items():
        env = envs[name]
        print(f"| {name} | {rate:.0f} | {rate / ceiling:.0%} | {env['MKL_NUM_THREADS']} / {env['OMP_NUM_THREADS']}, {env['MKL_DEBUG_CPU_TYPE']} |")


if __name__ == "__main__":
    main()
