"""Latency and throughput of the retrieval service under a bounded load, over loopback.

    python benchmarks/bench_service.py --arch tiny --concurrency 1,8,32 --requests 400
    python benchmarks/bench_service.py --arch base --concurrency 1,8 --requests 100 --max-seconds 120

The model (random weights) is exported to a temporary folder, a gallery of ``--gallery-size``
random unit vectors is saved for it, and ``tools/serve.py`` is started as its own process on
127.0.0.1. This process is the client: for each concurrency level it keeps that many requests in
flight until ``--requests`` have completed or ``--max-seconds`` have passed, after a short warm-up.
It reports p50/p99 latency, throughput, and the mean batch size the server formed (from
``/healthz``). Each request is a text query: POST /search (text -> top-k images) or /embed/text.
"""
import argparse
import asyncio
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

REPO = Path(__file__).resolve().parents[1]

ARCH_CONFIGS = {"tiny": "configs/tiny_official_fixture.yaml", "base": "configs/ernievil2_base_vit16.yaml"}
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
    return parser.parse_args(argv)


def prepare(arch, gallery_size, folder):
    """Export a random-weight model and save a random gallery for it; returns (export, index) folders."""
    import paddle

    from ernievil2.config import load_config
    from ernievil2.inference.export import export_model
    from ernievil2.models import build_model

    config = load_config(str(REPO / ARCH_CONFIGS[arch]))
    paddle.seed(0)
    export_dir = os.path.join(folder, "export")
    export_model(build_model(config["Arch"]), config, None, export_dir)
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


def request_for(args, i):
    query = QUERIES[i % len(QUERIES)]
    if args.endpoint == "search":
        return "/search", {"text": query, "k": args.k}
    return "/embed/text", {"texts": [query]}


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


def batch_counts(url):
    stats = httpx.get(f"{url}/healthz", timeout=10).json()["batching"]["text"]
    return stats["batches"], stats["items"]


def measure(args, url, concurrency):
    """One concurrency level's row of the table."""
    batches_before, items_before = batch_counts(url)
    latencies, errors, wall = asyncio.run(run_load(args, url, concurrency))
    batches_after, items_after = batch_counts(url)
    # The warm-up requests are in the counts too; they ran one at a time.
    batches = batches_after - batches_before - WARM_UP_REQUESTS
    items = items_after - items_before - WARM_UP_REQUESTS
    ms = np.array(latencies) * 1000
    return {
        "concurrency": concurrency, "requests": len(latencies), "errors": errors,
        "throughput": len(latencies) / wall, "p50": np.percentile(ms, 50),
        "p99": np.percentile(ms, 99), "mean_batch": items / max(batches, 1),
    }


def main(argv=None):
    args = parse_args(argv)
    # A log line per request would cost the client more CPU than the requests themselves.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    levels = [int(c) for c in args.concurrency.split(",")]
    rows = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        export_dir, index_dir = prepare(args.arch, args.gallery_size, folder)
        process, url = start_server(args, export_dir, index_dir, os.path.join(folder, "server.log"))
        try:
            for concurrency in levels:
                row = measure(args, url, concurrency)
                rows.append(row)
                print(f"concurrency {concurrency}: {row['throughput']:.1f} req/s, p50 {row['p50']:.1f} ms, "
                      f"p99 {row['p99']:.1f} ms, mean batch {row['mean_batch']:.1f}", flush=True)
        finally:
            process.terminate()
            process.wait(timeout=30)

    print()
    print(f"command: python {shlex.join(['benchmarks/bench_service.py', *(argv or sys.argv[1:])])}")
    print(f"arch {args.arch}, POST /{args.endpoint.replace('-', '/')}, gallery {args.gallery_size}, k {args.k}, "
          f"server threads {args.threads}, max batch {args.max_batch}, max wait {args.max_wait_ms} ms")
    print(f"1-minute load average: {load_before:.2f} before, {os.getloadavg()[0]:.2f} after "
          f"({os.cpu_count()} cores; server and client add about {args.threads + 1}, the rest is other processes)")
    print()
    print("| in flight | requests | errors | throughput | p50 | p99 | mean batch |")
    print("|---|---|---|---|---|---|---|")
    base = rows[0]["throughput"]
    for row in rows:
        print(f"| {row['concurrency']} | {row['requests']} | {row['errors']} | {row['throughput']:.1f} req/s "
              f"({row['throughput'] / base:.2f}x) | {row['p50']:.1f} ms | {row['p99']:.1f} ms | "
              f"{row['mean_batch']:.1f} |")


if __name__ == "__main__":
    main()
