"""Exported predictors side by side: Paddle fp32 and bf16 (oneDNN), ONNX Runtime fp32 and int8, and dygraph.

    # speed at the demo size with a trained demo model, and its recall on the demo test split:
    python -m benchmarks.bench_precision -c configs/demo/single_view.yaml \\
        -o Tokenizer.vocab_file=demo_data/fashion_scenes_cn/vocab.txt --weights output/demo/train \\
        --eval-data demo_data/fashion_scenes_cn/test.tsv
    # speed alone at the base size (random weights; int8 calibrated on the demo images all the same):
    python -m benchmarks.bench_precision -c configs/ernievil2_base_vit16.yaml --batches 1,16 --repeats 3

One process exports the model in each format and precision, then for each tower and batch
times every predictor in turn (interleaved, one warm-up each, median of ``--repeats``), so a
load spike from another process hits all alike; only these ratios mean anything on a shared
machine. Throughput is also given in GFLOP/s of the towers' matmuls and against the machine's
fp32 GEMM ceiling measured in the same run (``benchmarks/common.py``). With ``--eval-data`` (an
official TSV) each predictor then encodes that split and the official-protocol recall is printed
beside fp32's, with the largest embedding difference from fp32. bf16 runs only on CPUs with bf16
instructions; elsewhere its column says so.
"""
import argparse
import os
import shlex
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

import ernievil2  # noqa: E402,F401  (CPU runtime set-up before Paddle loads)
from benchmarks.bench_inference import interleaved_medians  # noqa: E402
from benchmarks.bench_train_step import text_forward_flops, vit_forward_flops  # noqa: E402
from benchmarks.common import gemm_gflops, load_average, print_table  # noqa: E402

DEMO_DATA = REPO / "demo_data" / "fashion_scenes_cn"
# name: (format, precision)
VARIANTS = {"paddle_fp32": ("paddle", "fp32"), "paddle_bf16": ("paddle", "bf16"),
            "onnx_fp32": ("onnx", "fp32"), "onnx_int8": ("onnx", "int8")}
BASELINE = "paddle_fp32"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-c", "--config", default=str(REPO / "configs" / "demo" / "single_view.yaml"))
    parser.add_argument("-o", "--override", action="append", default=[], metavar="Section.key=value")
    parser.add_argument("--weights", default=None, help="checkpoint to export (default: random weights)")
    parser.add_argument("--calib-data", default=str(DEMO_DATA / "train.tsv"), help="int8 calibration TSV")
    parser.add_argument("--calib-samples", type=int, default=300)
    parser.add_argument("--eval-data", default=None, help="official TSV: recall of each predictor (official protocol)")
    parser.add_argument("--batches", default="1,16", help="comma-separated batch sizes")
    parser.add_argument("--towers", default="image,text")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="predictor threads (default: the runtime's)")
    parser.add_argument("--text-len", type=int, default=32, help="tokens per timed text (no padding)")
    parser.add_argument("--no-dygraph", action="store_true", help="leave dygraph out of the timing")
    return parser.parse_args(argv)


def tower_flops(arch, tower, batch, text_len):
    if tower == "image":
        return vit_forward_flops(arch["image_tower"], batch, cls_only_last=True)
    return text_forward_flops(arch["text_tower"], batch, text_len, cls_only_last=True)


def read_pairs(path):
    """The official protocol's rows: (captions, RGB images), line by line."""
    from ernievil2.inference.inputs import iter_tsv_images

    items = list(iter_tsv_images(path))
    return [item.caption for item in items], [item.decode() for item in items]


def main(argv=None):
    args = parse_args(argv)
    import numpy as np
    import paddle

    from ernievil2 import runtime
    from ernievil2.config import load_config
    from ernievil2.evaluation.retrieval import evaluate_official
    from ernievil2.inference.errors import DeviceUnavailableError
    from ernievil2.inference.export import export_model, load_model
    from ernievil2.inference.onnx_export import read_calibration
    from ernievil2.inference.predictor import ExportedModel, PredictorOptions
    from ernievil2.models import build_model

    threads = args.threads or runtime.available_cores()
    config = load_config(args.config, args.override)
    paddle.seed(0)
    if args.weights:
        model = load_model(config, args.weights)
    else:
        model = build_model(config["Arch"])
        model.eval()
    arch = config["Arch"]
    calibration = read_calibration(args.calib_data, args.calib_samples)
    ceiling, _ = gemm_gflops()
    load_before = load_average()
    notes = []
    with tempfile.TemporaryDirectory() as root:
        predictors = {}
        for name, (fmt, precision) in VARIANTS.items():
            folder = os.path.join(root, name)
            export_model(model, config, args.weights, folder, fmt=fmt, precision=precision,
                         calibration=calibration if precision == "int8" else None)
            try:
                predictors[name] = ExportedModel(folder, PredictorOptions(cpu_threads=threads))
            except DeviceUnavailableError as err:
                notes.append(f"{name}: not run ({err})")
        size = int(config["Preprocess"]["image_size"])
        vocab = int(arch["text_tower"]["vocab_size"])
        rng = np.random.RandomState(0)
        rows = []
        for tower in args.towers.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                if tower == "image":
                    data = rng.randn(batch, 3, size, size).astype(np.float32)
                else:
                    data = rng.randint(4, vocab, (batch, args.text_len)).astype(np.int64)
                    data[:, 0], data[:, -1] = 1, 2
                calls = {}
                if not args.no_dygraph:
                    encode = model.encode_image if tower == "image" else model.encode_text
                    tensor = paddle.to_tensor(data)

                    def run_dygraph(encode=encode, tensor=tensor):
                        with paddle.no_grad():
                            return encode(tensor).numpy()

                    calls["dygraph"] = run_dygraph
                for name, exported in predictors.items():
                    predictor = exported.image_predictor if tower == "image" else exported.text_predictor
                    calls[name] = lambda predictor=predictor, data=data: predictor(data)
                times = interleaved_medians(calls, args.repeats)
                flops = tower_flops(arch, tower, batch, args.text_len)
                rows.append((tower, batch, times, flops))
                print(f"{tower} batch {batch}: " + ", ".join(f"{k} {v:.4f} s" for k, v in times.items()), flush=True)
        recall = {}
        if args.eval_data:
            texts, images = read_pairs(args.eval_data)
            embeddings = {}
            for name, exported in predictors.items():
                embeddings[name] = (exported.encode_texts(texts), exported.encode_images(images))
                recall[name] = evaluate_official(*embeddings[name])
            for name, (text_emb, image_emb) in embeddings.items():
                base_text, base_image = embeddings[BASELINE]
                recall[name]["diff"] = float(max(np.abs(text_emb - base_text).max(),
                                                 np.abs(image_emb - base_image).max()))
    load_after = load_average()

    print()
    print(f"command: python {shlex.join(['benchmarks/bench_precision.py', *(argv or sys.argv[1:])])}")
    print(f"config {args.config}, weights {args.weights or 'random'}, paddle {paddle.__version__}, {threads} threads, "
          f"text length {args.text_len}, median of {args.repeats} after 1 warm-up; int8 calibrated on "
          f"{len(calibration[0])} images and {len(calibration[1])} captions of {args.calib_data}")
    print(f"fp32 GEMM ceiling measured in this run: {ceiling:.0f} GFLOP/s; 1-minute load average "
          f"{load_before:.2f} before, {load_after:.2f} after ({os.cpu_count()} cores)")
    for note in notes:
        print(note)
    print()
    names = list(rows[0][2]) if rows else []
    headers = ["tower", "batch"] + [f"{n} (vs {BASELINE})" for n in names]
    table = []
    for tower, batch, times, flops in rows:
        cells = []
        for name in names:
            rate = flops / times[name] / 1e9
            cells.append(f"{times[name] * 1e3:.1f} ms, {batch / times[name]:.1f}/s, {times[BASELINE] / times[name]:.2f}x, "
                         f"{rate:.0f} GFLOP/s ({rate / ceiling:.0%})")
        table.append([tower, batch] + cells)
    print("seconds per batch, items/s, speed-up over Paddle fp32 (higher is faster), matmul GFLOP/s (share of ceiling)")
    print_table(headers, table)
    if recall:
        print()
        print(f"official protocol on {args.eval_data}: mean recall (R@1/5/10 averaged), R@1 each way, "
              f"largest |embedding - {BASELINE}|")
        out = []
        for name, metrics in recall.items():
            mean = metrics["mean"]["mean_recall"] * 100
            delta = mean - recall[BASELINE]["mean"]["mean_recall"] * 100
            out.append([name, f"{mean:.2f}", f"{delta:+.2f}", f"{metrics['text2image']['r1'] * 100:.2f}",
                        f"{metrics['image2text']['r1'] * 100:.2f}", f"{metrics['diff']:.1e}"])
        print_table(["predictor", "mean recall", f"vs {BASELINE}", "T2I R@1", "I2T R@1", "max diff"], out)


if __name__ == "__main__":
    main()
