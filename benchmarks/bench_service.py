"""Latency and throughput of the retrieval service under a bounded load, over loopback.

    python -m benchmarks.bench_service --arch tiny --concurrency 1,8,32 --requests 400
    python -m benchmarks.bench_service --arch base --concurrency 1,8 --requests 100 --max-seconds 120
    python -m benchmarks.bench_service --arch base --query image --breakdown --concurrency 1 --requests 20

The model (random weights) is exported to a temporary folder, a gallery of ``--gallery-size``
random unit vectors is saved for it, and ``tools/serve.py`` is started as its own process on
127.0.0.1. This process is the client: for each concurrency level it keeps that many requests in
flight until ``--requests`` have completed or ``--max-seconds`` have passed, after a short warm-up.
It reports p50/p99 latency, throughput, and the mean batch size the server formed (from
``/healthz``). Each request is a text query (POST /search, text -> top-k images, or /embed/text)
or, with ``--query image``, an image query (POST /search with a base64 JPEG, -> top-k images).

Against bare compute: the tower's matmul FLOPs for the query (``bench_train_step``'s counts,
the text at its own token count, unpadded) at the best fp32 GEMM rate of this machine, which
``common.gemm_rates`` measures at the start of the same run. Printed: p50 with one in flight
/ bare compute, and throughput / what that rate allows (the rate over the FLOPs of one query).
``--breakdown``: where one query's time goes, each stage timed in this process on the same
export (median of ``--repeats``): tokenisation or image decoding, input preparation, the
predictor call, the faiss search and the response rows; what remains of the p50 with one in
flight is HTTP, JSON, the event loop and the batcher.
"""
import argparse
import asyncio
import functools
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from benchmarks.common import gemm_rates, load_average, print_table
from benchmarks.common import measure as time_call

REPO = Path(__file__).resolve().parents[1]

ARCH_CONFIGS = {
    "tiny": "configs/tiny_official_fixture.yaml",
    "demo": "configs/demo/base.yaml",
    "base": "configs/ernievil2_base_vit16.yaml",
}
# The demo config reads the vocab that `make demo` builds; the benchmark needs none of its data,
# so the demo-size model takes the bundled ERNIE vocab (the towers' FLOPs are the same).
BUNDLED_VOCAB = "ernievil2/resources/vocab/ernie-3.0-base-zh/vocab.txt"
QUERIES = [
    "一张草莓的照片", "一只在草地上奔跑的狗", "红色的连衣裙", "海边的日落", "一辆蓝色的汽车停在路边",
    "桌上的一杯咖啡", "雪山和湖泊", "穿着白色运动鞋的人", "一群在天空中飞翔的鸟", "夜晚城市的灯光",
    "一盘新鲜的水果", "正在睡觉的小猫", "黑色的皮鞋", "公园里的长椅", "一本打开的书",
]
WARM_UP_REQUESTS = 8


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", choices=sorted(ARCH_CONFIGS), default="tiny")
    parser.add_argument("--endpoint", choices=("search", "embed-text"), default="search")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated numbers of requests in flight")
    parser.add_argument("--requests", type=int, default=400, help="requests per concurrency level (at most)")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="time limit per concurrency level")
    parser.add_argument("--gallery-size", type=int, default=10000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="server predictor threads")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="server predictor device")
    parser.add_argument("--format", choices=("paddle", "onnx"), default="paddle", help="export format (its runtime)")
    parser.add_argument("--query", choices=("text", "image"), default="text", help="what each request searches with")
    parser.add_argument("--breakdown", action="store_true", help="time each stage of one query in this process")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per stage of --breakdown")
    return parser.parse_args(argv)


def arch_config(arch):
    from ernievil2.config import load_config
    from ernievil2.data.tokenizer import load_vocab

    config = load_config(str(REPO / ARCH_CONFIGS[arch]))
    if arch == "demo":
        config["Tokenizer"]["vocab_file"] = str(REPO / BUNDLED_VOCAB)
        config["Arch"]["text_tower"]["vocab_size"] = len(load_vocab(str(REPO / BUNDLED_VOCAB)))
    return config


def prepare(arch, gallery_size, folder, fmt="paddle"):
    """Export a random-weight model and save a random gallery for it; returns (export, index) folders."""
    import paddle

    from ernievil2.inference.export import export_model
    from ernievil2.models import build_model

    config = arch_config(arch)
    paddle.seed(0)
    export_dir = os.path.join(folder, "export")
    export_model(build_model(config["Arch"]), config, None, export_dir, fmt=fmt)
    return export_dir, save_gallery(export_dir, gallery_size, os.path.join(folder, "index"))


def save_gallery(export_dir, gallery_size, index_dir):
    """A gallery of ``gallery_size`` random unit vectors for the export in ``export_dir``; returns ``index_dir``."""
    from ernievil2.inference.deploy import model_id, read_deploy
    from ernievil2.inference.index import Gallery

    deploy = read_deploy(export_dir)
    vectors = np.random.RandomState(0).randn(gallery_size, int(deploy["embed_dim"])).astype(np.float32)
    ids = [f"img{i:06d}" for i in range(gallery_size)]
    Gallery.from_embeddings(vectors, ids, "image", model_id(deploy)).save(index_dir)
    return index_dir


# The server binds any free port (--port 0) and names it in its start-up line.
LISTENING = re.compile(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")


def start_server(args, export_dir, index_dir, log_path):
    command = [
        sys.executable, str(REPO / "tools" / "serve.py"), "--model", export_dir, "--index", index_dir,
        "--host", "127.0.0.1", "--port", "0", "--threads", str(args.threads), "--no-access-log",
        "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms), "--device", args.device,
    ]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            match = LISTENING.search(f.read())
        if match:
            return process, match.group(1)
        time.sleep(0.5)
    process.kill()
    with open(log_path, encoding="utf-8", errors="replace") as f:
        raise RuntimeError(f"the server did not start:\n{f.read()[-3000:]}")


@functools.lru_cache(maxsize=None)
def query_image_base64(size=256):
    """A smooth synthetic photo as a base64 JPEG: a real decode, no file needed."""
    import base64

    import cv2

    ramp = np.linspace(0, 255, size, dtype=np.float32)
    image = np.stack([np.add.outer(ramp, ramp) / 2, np.add.outer(ramp, 255 - ramp) / 2, np.tile(ramp, (size, 1))], -1)
    ok, data = cv2.imencode(".jpg", image.astype(np.uint8))
    return base64.b64encode(data.tobytes()).decode("ascii")


def request_for(args, i):
    query = QUERIES[i % len(QUERIES)]
    if args.query == "image":
        return "/search", {"image": query_image_base64(), "k": args.k, "target": "images"}
    if args.endpoint == "search":
        return "/search", {"text": query, "k": args.k}
    return "/embed/text", {"texts": [query]}


def run_one_at_a_time(args, url):
    """(latencies in seconds, errors, wall seconds) of requests sent one after another.

    A blocking client, as a person's browser sends a search: the asyncio client below
    costs several milliseconds of its own per request, which is not the service's time.
    """
    latencies, errors = [], 0
    deadline = time.monotonic() + args.max_seconds
    with httpx.Client(base_url=url, timeout=120) as http:
        for i in range(WARM_UP_REQUESTS):
            path, body = request_for(args, i)
            http.post(path, json=body)
        start = time.perf_counter()
        for i in range(args.requests):
            if time.monotonic() >= deadline:
                break
            path, body = request_for(args, i)
            sent = time.perf_counter()
            response = http.post(path, json=body)
            latencies.append(time.perf_counter() - sent)
            errors += response.status_code != 200
        return latencies, errors, time.perf_counter() - start


async def run_load(args, url, concurrency):
    """(latencies in seconds, errors, wall seconds) for one concurrency level."""
    latencies, errors = [], 0
    issued = 0
    deadline = time.monotonic() + args.max_seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        for i in range(WARM_UP_REQUESTS):
            path, body = request_for(args, i)
            await http.post(path, json=body)

        async def worker():
            nonlocal issued, errors
            while issued < args.requests and time.monotonic() < deadline:
                path, body = request_for(args, issued)
                issued += 1
                start = time.perf_counter()
                response = await http.post(path, json=body)
                latencies.append(time.perf_counter() - start)
                errors += response.status_code != 200

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, errors, time.perf_counter() - start


def http_floor_ms(url, repeats=50):
    """Median ms of GET /healthz: a request and a JSON answer with no model or search work."""
    with httpx.Client(base_url=url, timeout=30) as http:
        return time_call(lambda: http.get("/healthz"), repeats).wall * 1000


def batch_counts(url, kind):
    stats = httpx.get(f"{url}/healthz", timeout=10).json()["batching"][kind]
    return stats["batches"], stats["items"]


def measure(args, url, concurrency):
    """One concurrency level's row of the table."""
    batches_before, items_before = batch_counts(url, args.query)
    if concurrency == 1:
        latencies, errors, wall = run_one_at_a_time(args, url)
    else:
        latencies, errors, wall = asyncio.run(run_load(args, url, concurrency))
    batches_after, items_after = batch_counts(url, args.query)
    # The warm-up requests are in the counts too; they ran one at a time.
    batches = batches_after - batches_before - WARM_UP_REQUESTS
    items = items_after - items_before - WARM_UP_REQUESTS
    ms = np.array(latencies) * 1000
    return {
        "concurrency": concurrency, "requests": len(latencies), "errors": errors,
        "throughput": len(latencies) / wall, "p50": np.percentile(ms, 50),
        "p99": np.percentile(ms, 99), "mean_batch": items / max(batches, 1),
    }


def query_flops(args, model):
    """Matmul FLOPs of one query of the run: the image tower on one image, or the text tower
    on each of QUERIES at its own token count (no padding), averaged."""
    from benchmarks.bench_train_step import text_forward_flops, vit_forward_flops

    arch = arch_config(args.arch)["Arch"]
    if args.query == "image":
        return vit_forward_flops(arch["image_tower"], 1, cls_only_last=True)
    lengths = (model.tokenizer.encode(QUERIES) != model.tokenizer.pad_id).sum(axis=1)
    return float(np.mean([text_forward_flops(arch["text_tower"], 1, int(n), cls_only_last=True) for n in lengths]))


def breakdown(args, model, gallery):
    """[(stage, median ms, counted in the sum)] of one query, each stage timed alone in this process."""
    from ernievil2.data.tokenizer import trim_padding
    from ernievil2.inference.predictor import pad_text_batch
    from ernievil2.inference.service import ServiceSettings, decode_base64_image, search_results

    def ms(fn):
        return time_call(fn, args.repeats).wall * 1000

    stages = []
    if args.query == "text":
        tok, query = model.tokenizer, QUERIES[1]
        ids = tok.encode([query])

        def prepare_input():
            return pad_text_batch(trim_padding(ids, tok.pad_id), model.max_len, tok.cls_id, tok.sep_id, tok.pad_id)

        predictor, array = model.text_predictor, prepare_input()
        stages += [("tokenisation", ms(lambda: tok.encode([query])), True),
                   ("input preparation (trim, pad to a bucket)", ms(prepare_input), True)]
        embedding = model.encode_texts([query])
    else:
        b64, limit = query_image_base64(), ServiceSettings().max_image_pixels
        rgb = decode_base64_image(b64, "image", limit)
        predictor, array = model.image_predictor, model.preprocess(rgb)[None]
        stages += [("base64 and JPEG decoding", ms(lambda: decode_base64_image(b64, "image", limit)), True),
                   ("preprocessing (resize, crop, normalise)", ms(lambda: model.preprocess(rgb)), True)]
        embedding = model.encode_pixels(array)
    stages.append(("predictor call (copy in, run, copy out)", ms(lambda: predictor(array)), True))
    # A Paddle Inference predictor's own run(), on the input the call above left in place.
    runner = getattr(predictor, "_predictor", None)
    if runner is not None:
        stages.append(("  of which Paddle Inference's run()", ms(runner.run), False))
    scores, positions = gallery.search(embedding, args.k)
    stages += [("faiss search", ms(lambda: gallery.search(embedding, args.k)), True),
               ("response rows and JSON", ms(lambda: json.dumps(
                   {"results": search_results(gallery, scores[0], positions[0], gallery)})), True)]
    return stages


def best_gemm_rate():
    """(best fp32 GEMM GFLOP/s of this machine's backends now, {backend: rate})."""
    rates = gemm_rates()
    return max(rates.values()), rates


def main(argv=None):
    args = parse_args(argv)
    # A log line per request would cost the client more CPU than the requests themselves.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    levels = [int(c) for c in args.concurrency.split(",")]
    rows = []
    load_before = load_average()
    rate_before, rates = best_gemm_rate()
    with tempfile.TemporaryDirectory() as folder:
        export_dir, index_dir = prepare(args.arch, args.gallery_size, folder, args.format)
        from ernievil2.inference.galleries import load_galleries
        from ernievil2.inference.predictor import ExportedModel, PredictorOptions

        model = ExportedModel(export_dir, PredictorOptions(cpu_threads=args.threads))
        flops = query_flops(args, model)
        stages = breakdown(args, model, load_galleries(index_dir)[0]) if args.breakdown else []
        del model
        process, url = start_server(args, export_dir, index_dir, os.path.join(folder, "server.log"))
        try:
            floor = http_floor_ms(url)
            for concurrency in levels:
                row = measure(args, url, concurrency)
                rows.append(row)
                print(f"concurrency {concurrency}: {row['throughput']:.1f} req/s, p50 {row['p50']:.1f} ms, "
                      f"p99 {row['p99']:.1f} ms, mean batch {row['mean_batch']:.1f}", flush=True)
        finally:
            process.terminate()
            process.wait(timeout=30)
    rate_after, _ = best_gemm_rate()
    rate = (rate_before + rate_after) / 2
    bare_ms = flops / (rate * 1e9) * 1000

    print()
    print(f"command: python -m benchmarks.bench_service {shlex.join(argv or sys.argv[1:])}")
    print(f"arch {args.arch}, {args.format} export, {args.query} queries, POST /{args.endpoint.replace('-', '/')}, "
          f"gallery {args.gallery_size}, k {args.k}, server threads {args.threads}, max batch {args.max_batch}, "
          f"max wait {args.max_wait_ms} ms")
    print(f"1-minute load average: {load_before:.2f} before, {load_average():.2f} after "
          f"({os.cpu_count()} cores; server and client add about {args.threads + 1}, the rest is other processes)")
    print(f"fp32 GEMM (2048 cubed), GFLOP/s: {', '.join(f'{k} {v:.0f}' for k, v in rates.items())} at the start; "
          f"best {rate_before:.0f} at the start, {rate_after:.0f} at the end, mean {rate:.0f}")
    print(f"bare compute of one query: {flops / 1e9:.3f} GFLOP at {rate:.0f} GFLOP/s = {bare_ms:.2f} ms")
    print()
    base = rows[0]["throughput"]
    print_table(
        ["in flight", "requests", "errors", "throughput", "p50", "p99", "mean batch", "p50 / bare", "throughput / GEMM-allowed"],
        [[row["concurrency"], row["requests"], row["errors"],
          f"{row['throughput']:.1f} req/s ({row['throughput'] / base:.2f}x)", f"{row['p50']:.1f} ms",
          f"{row['p99']:.1f} ms", f"{row['mean_batch']:.1f}", f"{row['p50'] / bare_ms:.2f}x",
          f"{row['throughput'] * bare_ms / 1000:.2f}x"] for row in rows],
    )
    single = [row for row in rows if row["concurrency"] == 1]
    if stages and single:
        p50 = single[0]["p50"]
        rest = p50 - floor - sum(t for _, t, counted in stages if counted)
        print()
        print(f"one {args.query} query, p50 {p50:.2f} ms with one in flight:")
        print_table(["stage", "median ms", "share of p50"],
                    [[name, f"{t:.3f}", f"{t / p50:.0%}"] for name, t, _ in stages]
                    + [["HTTP round trip with a JSON answer (GET /healthz)", f"{floor:.3f}", f"{floor / p50:.0%}"],
                       ["request parsing, event loop, batcher, thread hand-offs (the rest)", f"{rest:.3f}", f"{rest / p50:.0%}"],
                       ["bare compute (FLOPs at the GEMM rate)", f"{bare_ms:.3f}", f"{bare_ms / p50:.0%}"]])


if __name__ == "__main__":
    main()
