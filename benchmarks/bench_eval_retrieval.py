"""Time and memory of blocked retrieval evaluation against the bare score product.

    python -m benchmarks.bench_eval_retrieval                 # 50k x 50k, 768-d, 3 repeats
    python -m benchmarks.bench_eval_retrieval --n 5000 --repeats 1

Every measurement runs in a fresh child process that generates random unit
embeddings (float32, no full-size temporaries), reads its RSS high-water mark
(VmHWM) as the baseline, runs the measured call once and reports its wall and
CPU time (all threads) and the high-water mark above the baseline. On a shared
machine, CPU time is the steadier of the two. Modes run round-robin ``--repeats``
times; the table shows median times and the largest peaks.

Measured, at ``--n``:
  eval        evaluate_official (both directions, blocked)
  gemm        the bare product text @ image.T, block by block into one buffer
              (the same BLAS work without counting: the strict baseline)
  gemm_full   text @ image.T as one N x N matrix (only if it fits in memory)
and the official eval_retri.py algorithm (full N x N float32 scores, then a
rows x N comparison per tenth of the rows, both directions) next to ours at
``--n`` when its N x N matrix fits in memory, else at ``--naive-n``.
"""
import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time

import numpy as np
import psutil

from ernievil2.evaluation import retrieval

OFFICIAL_CHUNKS = 10
MEMORY_HEADROOM = 0.6  # share of currently available memory a full-matrix run may plan to use
MiB = 2**20


def vm_hwm_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not in /proc/self/status")


def random_unit_embeddings(n, dim, seed):
    rng = np.random.default_rng(seed)
    return [retrieval.normalize_rows_(rng.standard_normal((n, dim), dtype=np.float32)) for _ in range(2)]


def bare_gemm(text, image, block_size):
    buf = np.empty(block_size * block_size, dtype=np.float32)
    for r0, r1 in retrieval.block_bounds(len(text), block_size):
        for c0, c1 in retrieval.block_bounds(len(image), block_size):
            shape = (r1 - r0, c1 - c0)
            np.matmul(text[r0:r1], image[c0:c1].T, out=buf[: shape[0] * shape[1]].reshape(shape))


def official_direction(scores):
    """Ranks as eval_retri.py's single_eval computes them for one positive per row (positive i at column i)."""
    ranks = []
    for a, b in retrieval.block_bounds(len(scores), -(-len(scores) // OFFICIAL_CHUNKS)):
        rows = scores[a:b]
        positive = rows[np.arange(b - a), np.arange(a, b)]
        ranks.append((rows > positive[:, None]).sum(axis=1))
    return np.concatenate(ranks)


def official_algorithm(text, image):
    scores = text @ image.T
    t2i = retrieval.recall_metrics(official_direction(scores))
    i2t = retrieval.recall_metrics(official_direction(scores.T))
    return {"text2image": t2i, "image2text": i2t}


def child(mode, n, dim, block_size, seed):
    """One timed call in this process; prints time, memory and metrics as JSON."""
    text, image = random_unit_embeddings(n, dim, seed)
    baseline = vm_hwm_bytes()
    calls = {
        "eval": lambda: retrieval.evaluate_official(text, image, block_size),
        "gemm": lambda: bare_gemm(text, image, block_size),
        "gemm_full": lambda: text @ image.T,
        "official": lambda: official_algorithm(text, image),
    }
    start, cpu_start = time.perf_counter(), time.process_time()
    result = calls[mode]()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    peak = vm_hwm_bytes()
    metrics = None
    if isinstance(result, dict):
        metrics = {d: {k: result[d][k] for k in retrieval.METRIC_KEYS} for d in ("text2image", "image2text")}
    print(json.dumps({"seconds": seconds, "cpu": cpu, "baseline": baseline, "peak": peak, "metrics": metrics}))


def run_child(mode, n, args):
    command = [
        sys.executable, __file__, "--child", mode, "--n", str(n), "--dim", str(args.dim),
        "--block-size", str(args.block_size), "--seed", str(args.seed),
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    run = json.loads(out.strip().splitlines()[-1])
    print(f"  {mode:<9} n={n:<6} {run['seconds']:7.2f} s wall {run['cpu']:7.2f} s CPU   "
          f"peak +{(run['peak'] - run['baseline']) / MiB:5.0f} MiB", flush=True)
    return run


def summary(runs):
    """Median time and the largest peaks over the repeats of one (mode, n)."""
    return {
        "median": statistics.median(r["seconds"] for r in runs),
        "cpu": statistics.median(r["cpu"] for r in runs),
        "above": max(r["peak"] - r["baseline"] for r in runs) / MiB,
        "absolute": max(r["peak"] for r in runs) / MiB,
        "metrics": runs[-1]["metrics"],
    }


def full_matrix_fits(n):
    """Whether an n x n float32 matrix (plus the official per-chunk comparison) fits in available memory."""
    need = 4 * n * n * (1 + 1 / OFFICIAL_CHUNKS) + 2 * 4 * n * 768
    return need < MEMORY_HEADROOM * psutil.virtual_memory().available


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000, help="texts = images")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--block-size", type=int, default=retrieval.DEFAULT_BLOCK_SIZE)
    parser.add_argument("--naive-n", type=int, default=10_000, help="n for the official algorithm when --n does not fit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", choices=("eval", "gemm", "gemm_full", "official"), help=argparse.SUPPRESS)
    return parser.parse_args()


def main():
    args = parse_args()
    if args.child:
        child(args.child, args.n, args.dim, args.block_size, args.seed)
        return
    print(f"command: python {shlex.join(sys.argv)}")
    print(f"cores: {psutil.cpu_count()}, available memory: {psutil.virtual_memory().available / 2**30:.1f} GiB")
    fits = full_matrix_fits(args.n)
    naive_n = args.n if fits else args.naive_n
    plan = [("eval", args.n), ("gemm", args.n)] + [("gemm_full", args.n)] * fits + [("official", naive_n)]
    if naive_n != args.n:
        plan.append(("eval", naive_n))
    # Round-robin, so that load from other processes hits every mode alike.
    runs = {key: [] for key in plan}
    for repeat in range(args.repeats):
        print(f"repeat {repeat + 1}/{args.repeats}")
        for mode, n in plan:
            runs[mode, n].append(run_child(mode, n, args))
    s = {key: summary(value) for key, value in runs.items()}
    ours, gemm = s["eval", args.n], s["gemm", args.n]
    rows = [("eval (blocked, both directions)", args.n, ours, gemm), ("bare GEMM, blocked into one buffer", args.n, gemm, gemm)]
    if fits:
        rows.append(("text @ image.T (full N x N)", args.n, s["gemm_full", args.n], gemm))
    official, ours_naive = s["official", naive_n], s["eval", naive_n]
    rows.append(("official algorithm (full N x N)", naive_n, official, ours_naive))

    print()
    print("| what | n | wall s | ratio | CPU s | ratio | peak above baseline MiB | absolute peak MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for name, n, m, ref in rows:
        print(f"| {name} | {n} | {m['median']:.2f} | {m['median'] / ref['median']:.3f} | {m['cpu']:.2f} | "
              f"{m['cpu'] / ref['cpu']:.3f} | {m['above']:.0f} | {m['absolute']:.0f} |")
    print()
    print("medians over repeats; ratio: against the blocked bare GEMM, "
          "except the official algorithm: against our eval at the same n")
    if fits:
        full = s["gemm_full", args.n]
        print(f"eval / (text @ image.T): wall {ours['median'] / full['median']:.3f}, CPU {ours['cpu'] / full['cpu']:.3f}")
    where = "its N x N matrix fits in memory" if fits else f"n={args.n} would not fit in memory"
    print(f"official algorithm run at n={naive_n} ({where}); "
          f"metrics identical to ours: {official['metrics'] == ours_naive['metrics']}")


if __name__ == "__main__":
    main()
