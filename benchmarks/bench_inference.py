"""Exported predictors (Paddle Inference) against the dygraph towers, per tower and batch size, on CPU.

    python -m benchmarks.bench_inference --arch base --batches 1,16 --repeats 3      # the realistic figure
    python -m benchmarks.bench_inference --arch tiny --batches 1,16,64 --repeats 5   # quick

The model is built from the architecture's config with random weights (timing does not depend on
them) and exported to a temporary folder. For each tower and batch, dygraph and the two predictor
variants each get one warm-up call, then run in turn ``--repeats`` times (interleaved, so that a
load spike from another process hits all three alike); the table shows the median seconds per
batch, and the load average before and after is printed. Texts are ``--text-len`` tokens with no
padding, so both sides do the same work. The predictor runs with oneDNN and without it. Run it
alone: the machine has two cores and anything else running skews the figures. On 2 cores the base
image tower takes about 0.4 s per image (batch 64 is about 30 s per call).
"""
import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARCH_CONFIGS = {"tiny": "configs/tiny_official_fixture.yaml", "base": "configs/ernievil2_base_vit16.yaml"}
MODES = ("onednn", "plain")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", choices=sorted(ARCH_CONFIGS), default="base")
    parser.add_argument("--batches", default="1,16", help="comma-separated batch sizes")
    parser.add_argument("--towers", default="image,text", help="comma-separated: image, text")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--text-len", type=int, default=48)
    return parser.parse_args(argv)


def interleaved_medians(calls, repeats):
    """{name: median seconds} of each call, after one warm-up each, timed in turn ``repeats`` times."""
    for call in calls.values():
        call()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None):
    args = parse_args(argv)
    # Before Paddle loads: its math library reads these once.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    import numpy as np
    import paddle

    from ernievil2.config import load_config
    from ernievil2.inference.export import export_model
    from ernievil2.inference.predictor import ExportedModel, PredictorOptions
    from ernievil2.models import build_model

    batches = [int(b) for b in args.batches.split(",")]
    towers = args.towers.split(",")
    config = load_config(str(REPO / ARCH_CONFIGS[args.arch]))
    paddle.seed(0)
    model = build_model(config["Arch"])
    model.eval()
    rng = np.random.RandomState(0)
    size = config["Preprocess"]["image_size"]
    vocab = config["Arch"]["text_tower"]["vocab_size"]

    def make_input(tower, batch):
        if tower == "image":
            return rng.randn(batch, 3, size, size).astype(np.float32)
        ids = rng.randint(4, vocab, (batch, args.text_len)).astype(np.int64)
        ids[:, 0], ids[:, -1] = 1, 2
        return ids

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        export_model(model, config, None, folder, overwrite=True)
        exported = {
            mode: ExportedModel(folder, PredictorOptions(cpu_threads=args.threads, onednn=mode == "onednn"))
            for mode in MODES
        }
        rows = []
        for tower in towers:
            dygraph = model.encode_image if tower == "image" else model.encode_text
            for batch in batches:
                data = make_input(tower, batch)
                tensor = paddle.to_tensor(data)

                def run_dygraph():
                    with paddle.no_grad():
                        return dygraph(tensor).numpy()

                reference = run_dygraph()
                calls = {"dygraph": run_dygraph}
                row = {"tower": tower, "batch": batch}
                for mode, ex in exported.items():
                    predictor = ex.image_predictor if tower == "image" else ex.text_predictor
                    row[f"{mode}_diff"] = float(np.abs(predictor(data) - reference).max())
                    calls[mode] = lambda predictor=predictor: predictor(data)
                row.update(interleaved_medians(calls, args.repeats))
                rows.append(row)
                print_row(row, flush=True)

    print()
    print(f"command: python {shlex.join(['benchmarks/bench_inference.py', *(argv or sys.argv[1:])])}")
    print(f"arch {args.arch}, paddle {paddle.__version__}, {args.threads} threads, text length {args.text_len}, "
          f"median of {args.repeats} after 1 warm-up; seconds per batch (items/s), speed-up over dygraph")
    print(f"1-minute load average: {load_before:.2f} before, {os.getloadavg()[0]:.2f} after "
          f"({os.cpu_count()} cores; this run adds up to {args.threads}, the rest is other processes)")
    print()
    print("| tower | batch | dygraph | predictor, oneDNN | predictor, plain | max abs diff |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        cells = [f"{row['dygraph']:.3f} s ({row['batch'] / row['dygraph']:.1f}/s)"]
        for mode in MODES:
            cells.append(f"{row[mode]:.3f} s ({row['batch'] / row[mode]:.1f}/s), {row['dygraph'] / row[mode]:.2f}x")
        diff = max(row[f"{mode}_diff"] for mode in MODES)
        print(f"| {row['tower']} | {row['batch']} | " + " | ".join(cells) + f" | {diff:.1e} |")


def print_row(row, flush):
    ratios = ", ".join(f"{mode} {row['dygraph'] / row[mode]:.2f}x" for mode in MODES)
    print(f"{row['tower']:>5} batch {row['batch']:>3}: dygraph {row['dygraph']:.3f} s; {ratios}", flush=flush)


if __name__ == "__main__":
    main()
