"""One NVIDIA GPU, every GPU path of the project in one run: parity, AMP training, inference, service.

    bash test_tipc/gpu_check.sh                        # writes gpu_check.json
    bash test_tipc/gpu_check.sh --output out.json --batch 16 --steps 50

In this order (each step runs even when an earlier one failed; the table says which failed):

1. ``fixture``: the official tiny checkpoint on the GPU against the embeddings the official
   code made (``../shared/fixtures/official_ernievil2_tiny``, ``--fixtures``), fp32.
2. ``training``: ``--steps`` base-size single-view steps in fp32, then the same steps from the
   same weights and batches with AMP (bf16 where the GPU has it, else fp16 with a loss scaler)
   and FlashAttention (the towers' fused attention, taken in half precision on CUDA):
   both loss curves, median step times, and the fused-attention calls per AMP step.
3. ``inference``: the fp32-trained model exported; a Paddle Inference GPU predictor (fp32) and,
   where Paddle has TensorRT, a TensorRT fp16 one, each against the dygraph towers on the GPU;
   batch-1 latencies.
4. ``service``: ``tools/serve.py --device gpu`` on that export over a random gallery, text
   queries with 1 and with 32 requests in flight (``benchmarks/bench_service.py``'s client).

Prints one table, writes it as JSON (``--output``), exits 1 when any check failed, 2 (with one
``error:`` line) when there is no GPU to check. fp32 is true fp32: ``gpu_check.sh`` sets
``NVIDIA_TF32_OVERRIDE=0`` unless it is set already.
"""
import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]

FIXTURE_CONFIG = REPO / "configs" / "tiny_official_fixture.yaml"
BASE_CONFIG = REPO / "configs" / "ernievil2_base_vit16.yaml"
DEFAULT_FIXTURES = Path(os.environ.get("ERNIEVIL2_SHARED", REPO.parent / "shared")) / "fixtures" / "official_ernievil2_tiny"
SEED = 2024
# The CPU meets the fixture to 2.5e-7 (docs/benchmarks.md); fp32 on the GPU sums in another order.
FP32_ATOL = 1e-4
# TensorRT fp16 against fp32 dygraph: the embeddings' direction, row by row.
FP16_MIN_COSINE = 0.999
# AMP against fp32 over the last 10 steps: |mean loss difference| <= this share of the fp32 loss.
AMP_LOSS_SHARE = 0.05
DISTINCT_BATCHES = 4


class Row(NamedTuple):
    step: str
    check: str
    value: object
    limit: str = ""
    status: str = "info"  # pass, fail, info or skipped


def at_most(step, check, value, limit):
    return Row(step, check, value, f"<= {limit:g}", "pass" if value <= limit else "fail")


def at_least(step, check, value, limit):
    return Row(step, check, value, f">= {limit:g}", "pass" if value >= limit else "fail")


def failed_step(step, err):
    """A step that raised: one failed row naming the error, and the later steps still run."""
    return [Row(step, "ran", f"{type(err).__name__}: {err}".splitlines()[0][:300], "no error", "fail")]


class NoGPUError(RuntimeError):
    pass


def gpu_machine():
    """What the check runs on; :class:`NoGPUError` saying why when there is no usable GPU."""
    import paddle

    if not paddle.device.is_compiled_with_cuda():
        raise NoGPUError(
            f"no GPU: this Paddle ({paddle.__version__}) is the CPU build; install paddlepaddle-gpu "
            "(README.md, 'GPU install') on a machine with an NVIDIA GPU"
        )
    if paddle.device.cuda.device_count() < 1:
        raise NoGPUError("no GPU: Paddle is the CUDA build but sees no device (driver, CUDA_VISIBLE_DEVICES?)")
    paddle.device.set_device("gpu:0")
    major, minor = paddle.device.cuda.get_device_capability()
    return {
        "gpu": paddle.device.cuda.get_device_name(),
        "capability": f"{major}.{minor}",
        "paddle": paddle.__version__,
        "cuda": paddle.version.cuda(),
        "tensorrt": ".".join(map(str, paddle.inference.get_trt_compile_version())),
        "tf32_override": os.environ.get("NVIDIA_TF32_OVERRIDE", "unset"),
        "host": platform.node(),
    }


def amp_dtype():
    """bf16 where the GPU computes in it (Ampere and later), else fp16."""
    import paddle

    return "bfloat16" if paddle.amp.is_bfloat16_supported() else "float16"


def has_tensorrt():
    import paddle

    return paddle.inference.get_trt_compile_version() != (0, 0, 0)


# --- 1. the official fixture ---------------------------------------------------------
def fixture_embeddings(fixture_dir):
    """(text, image) embeddings of the fixture's rows by the official checkpoint, on the current device."""
    import base64

    import cv2
    import numpy as np
    import paddle

    from ernievil2.checkpoint import load_pretrained
    from ernievil2.config import load_config
    from ernievil2.data.image_ops import EvalTransform
    from ernievil2.data.tokenizer import ErnieTokenizer
    from ernievil2.models import build_model
    from ernievil2.resource_files import resolve_resource

    config = load_config(str(FIXTURE_CONFIG))
    model = build_model(config["Arch"])
    load_pretrained(model, str(Path(fixture_dir) / "model.pdparams"))
    model.eval()
    with open(Path(fixture_dir) / "test.coco_cn.data", encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f]
    tokenizer = ErnieTokenizer(resolve_resource(config["Tokenizer"]["vocab_file"], config))
    transform = EvalTransform.from_config(config["Preprocess"])

    def rgb(b64):
        bgr = cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_COLOR)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    ids = tokenizer.encode([row[0] for row in rows])
    images = np.stack([transform(rgb(row[2])) for row in rows])
    with paddle.no_grad():
        return model.encode_text(paddle.to_tensor(ids)).numpy(), model.encode_image(paddle.to_tensor(images)).numpy()


def check_fixture(fixture_dir):
    import numpy as np

    text, image = fixture_embeddings(fixture_dir)
    return [
        at_most("fixture", "text max |diff| vs official", float(np.abs(text - np.load(Path(fixture_dir) / "text_emb.npy")).max()), FP32_ATOL),
        at_most("fixture", "image max |diff| vs official", float(np.abs(image - np.load(Path(fixture_dir) / "image_emb.npy")).max()), FP32_ATOL),
    ]


# --- 2. training: fp32 against AMP + FlashAttention -----------------------------------
class FusedAttentionCounter:
    """Counts the attention calls that take the fused kernel (``models.layers``) while installed."""

    def __init__(self):
        from ernievil2.models import layers

        self.layers, self.original, self.fused = layers, layers._use_fused_attention, 0

    def __enter__(self):
        def counted(q):
            fused = self.original(q)
            self.fused += bool(fused)
            return fused

        self.layers._use_fused_attention = counted
        return self

    def __exit__(self, *exc):
        self.layers._use_fused_attention = self.original


def train_curve(config, state, batches, steps, dtype):
    """(losses, step seconds, fused attention calls per step) of ``steps`` steps from ``state``; ``dtype`` None: fp32."""
    import paddle

    from ernievil2.engine.optim import build_optimizer
    from ernievil2.engine.steps import batch_to_tensors, train_step
    from ernievil2.losses import build_loss
    from ernievil2.models import build_model

    paddle.seed(SEED)
    model = build_model(config["Arch"])
    model.set_state_dict(state)
    model.train()
    loss_fn = build_loss({"terms": [{"name": "info_nce", "pairs": [["image_v1", "text_v1", 1.0]]}]})
    optimizer = build_optimizer(model, dict(config["Optimizer"], warmup_steps=10))
    tensors = [batch_to_tensors(b) for b in batches]
    autocast = (lambda: paddle.amp.auto_cast(enable=True, dtype=dtype, level="O1")) if dtype else None
    scaler = paddle.amp.GradScaler() if dtype == "float16" else None
    losses, seconds = [], []
    with FusedAttentionCounter() as counter:
        for step in range(steps):
            start = time.perf_counter()
            terms = train_step(model, loss_fn, tensors[step % len(tensors)], loss_fn.needs.views, autocast=autocast, scaler=scaler)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.clear_grad()
            losses.append(float(terms["loss"]))  # reads the loss back: the step has finished
            seconds.append(time.perf_counter() - start)
    return losses, seconds, counter.fused / steps, model


def random_batches(config, batch, text_len=32):
    from benchmarks.bench_train_step import make_inputs

    arch = config["Arch"]
    return [
        {k: v for k, v in make_inputs(batch, arch["image_tower"]["img_size"], text_len, 8, arch["text_tower"]["vocab_size"], SEED + i).items()
         if k in ("image_v1", "text")}
        for i in range(DISTINCT_BATCHES)
    ]


def check_training(config, steps, batch, dtype):
    """Rows, the two loss curves, and the fp32-trained model (exported by the next step)."""
    import paddle

    from ernievil2.models import build_model

    paddle.seed(SEED)
    state = {k: v.clone() for k, v in build_model(config["Arch"]).state_dict().items()}
    batches = random_batches(config, batch)
    fp32_losses, fp32_seconds, _, model = train_curve(config, state, batches, steps, None)
    amp_losses, amp_seconds, fused, _ = train_curve(config, state, batches, steps, dtype)
    # The first steps build kernels and caches.
    settled = slice(min(5, steps - 1), None)
    fp32_time, amp_time = statistics.median(fp32_seconds[settled]), statistics.median(amp_seconds[settled])
    tail = slice(-min(10, steps), None)
    fp32_tail, amp_tail = statistics.mean(fp32_losses[tail]), statistics.mean(amp_losses[tail])
    finite = all(map(math.isfinite, amp_losses + fp32_losses))
    rows = [
        Row("training", f"{steps} steps, batch {batch}, AMP dtype", dtype),
        Row("training", "fp32 step (median, s)", round(fp32_time, 4)),
        Row("training", f"AMP step (median, s), speed-up {fp32_time / amp_time:.2f}x", round(amp_time, 4)),
        Row("training", "losses finite", finite, "True", "pass" if finite else "fail"),
        Row("training", "loss first -> last 10 (fp32)", f"{fp32_losses[0]:.4f} -> {fp32_tail:.4f}"),
        Row("training", "loss first -> last 10 (AMP)", f"{amp_losses[0]:.4f} -> {amp_tail:.4f}"),
        at_most("training", "|AMP - fp32| loss, last 10, share of fp32", round(abs(amp_tail - fp32_tail) / abs(fp32_tail), 5), AMP_LOSS_SHARE),
        at_least("training", "FlashAttention calls per AMP step", fused, 1),
    ]
    curves = {"fp32": fp32_losses, "amp": amp_losses, "fp32_seconds": fp32_seconds, "amp_seconds": amp_seconds}
    return rows, curves, model


# --- 3. Paddle Inference on the GPU ---------------------------------------------------
def embedding_gap(model, exported):
    """(max |diff|, min row cosine) of the exported towers against the dygraph ones, on random inputs."""
    import numpy as np
    import paddle

    from ernievil2.inference.export import parity_inputs

    images, ids = parity_inputs(exported.image_size, model.text_model.word_emb.weight.shape[0])
    model.eval()
    with paddle.no_grad():
        refs = [model.encode_image(paddle.to_tensor(images)).numpy(), model.encode_text(paddle.to_tensor(ids)).numpy()]
    gots = [exported.encode_pixels(images), exported.encode_ids(ids)]
    diff = max(float(np.abs(g - r).max()) for g, r in zip(gots, refs))
    # Both are unit rows: the row-wise dot product is the cosine.
    cosine = min(float((g * r).sum(1).min()) for g, r in zip(gots, refs))
    return diff, cosine


def batch1_ms(exported, repeats=20):
    """Median ms of one text query and one 224-px image, after a warm-up call each."""
    import numpy as np

    pixels = np.zeros((1, 3, exported.image_size, exported.image_size), np.float32)
    out = {}
    for name, call in (("text", lambda: exported.encode_texts(["一只在草地上奔跑的狗"])), ("image", lambda: exported.encode_pixels(pixels))):
        call()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        out[name] = round(statistics.median(times) * 1000, 3)
    return out


def check_inference(config, model, export_dir, device="gpu", tensorrt=None):
    """Rows for an export of ``model`` run by Paddle Inference on ``device`` (fp32, then TensorRT fp16)."""
    from ernievil2.inference.export import export_model
    from ernievil2.inference.predictor import ExportedModel, PredictorOptions

    export_model(model, config, None, export_dir, overwrite=True)
    rows = []
    variants = [("fp32", PredictorOptions(device=device))]
    if device == "gpu" and (has_tensorrt() if tensorrt is None else tensorrt):
        variants.append(("TensorRT fp16", PredictorOptions(device="gpu", tensorrt=True, precision="fp16")))
    else:
        rows.append(Row("inference", "TensorRT fp16", "not in this Paddle build", "", "skipped"))
    for name, options in variants:
        exported = ExportedModel(export_dir, options)
        diff, cosine = embedding_gap(model, exported)
        if name == "fp32":
            rows.append(at_most("inference", f"{name} max |diff| vs dygraph", diff, FP32_ATOL))
        else:
            rows.append(at_least("inference", f"{name} min cosine vs dygraph fp32", round(cosine, 6), FP16_MIN_COSINE))
        for tower, ms in batch1_ms(exported).items():
            rows.append(Row("inference", f"{name} {tower} batch 1 (median, ms)", ms))
    return rows


# --- 4. the service -------------------------------------------------------------------
def check_service(export_dir, folder, requests=200, device="gpu"):
    """Rows of the service on ``export_dir`` with 1 and 32 text queries in flight."""
    from benchmarks import bench_service

    args = bench_service.parse_args(["--concurrency", "1,32", "--requests", str(requests), "--max-seconds", "60",
                                     "--device", device])
    index_dir = bench_service.save_gallery(export_dir, args.gallery_size, os.path.join(folder, "index"))
    process, url = bench_service.start_server(args, export_dir, index_dir, os.path.join(folder, "server.log"))
    rows = []
    try:
        for concurrency in (1, 32):
            row = bench_service.measure(args, url, concurrency)
            rows.append(Row("service", f"{concurrency} in flight: errors", row["errors"], "0", "pass" if row["errors"] == 0 else "fail"))
            rows.append(Row("service", f"{concurrency} in flight: p50 ms / req/s / mean batch",
                            f"{row['p50']:.1f} / {row['throughput']:.1f} / {row['mean_batch']:.1f}"))
    finally:
        process.terminate()
        process.wait(timeout=30)
    return rows


# --- the report -----------------------------------------------------------------------
def report(rows, machine, path, extra=None):
    """Print the table, write it as JSON to ``path``; returns the exit status (1 if any check failed)."""
    from benchmarks.common import print_table
    from ernievil2.files import atomic_text_file

    print_table(["step", "check", "value", "limit", "result"], [list(row) for row in rows])
    failed = [row for row in rows if row.status == "fail"]
    document = {
        "machine": machine,
        "passed": not failed,
        "rows": [row._asdict() for row in rows],
        **(extra or {}),
    }
    with atomic_text_file(path) as f:
        f.write(json.dumps(document, ensure_ascii=False, indent=1) + "\n")
    print(f"\n{len(rows) - len(failed)} of {len(rows)} rows without failure; {'PASSED' if not failed else 'FAILED'}; written to {path}")
    return 1 if failed else 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="gpu_check.json", help="the table as JSON")
    parser.add_argument("--fixtures", default=str(DEFAULT_FIXTURES), help="the official tiny fixture folder")
    parser.add_argument("--steps", type=int, default=50, help="training steps per precision")
    parser.add_argument("--batch", type=int, default=32, help="training batch (base size)")
    parser.add_argument("--requests", type=int, default=200, help="service requests per concurrency level")
    args = parser.parse_args(argv)
    if args.steps < 2 or args.batch < 2 or args.requests < 1:
        parser.error("need --steps >= 2, --batch >= 2 and --requests >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        machine = gpu_machine()
    except NoGPUError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not (Path(args.fixtures) / "model.pdparams").is_file():
        print(f"error: {args.fixtures}: no official fixture here (model.pdparams); give its folder with --fixtures", file=sys.stderr)
        return 2
    from ernievil2.config import load_config

    print(f"[gpu_check] {machine}", flush=True)
    started = time.monotonic()
    rows, extra, model = [], {}, None
    config = load_config(str(BASE_CONFIG))
    with tempfile.TemporaryDirectory() as folder:
        export_dir = os.path.join(folder, "export")
        steps = [
            ("fixture", lambda: check_fixture(args.fixtures)),
            ("training", lambda: check_training(config, args.steps, args.batch, amp_dtype())),
            ("inference", lambda: check_inference(config, model, export_dir)),
            ("service", lambda: check_service(export_dir, folder, args.requests)),
        ]
        needs = {"inference": lambda: model is not None, "service": lambda: os.path.isfile(os.path.join(export_dir, "deploy.yaml"))}
        for name, run in steps:
            if not needs.get(name, lambda: True)():
                rows.append(Row(name, "ran", "not run: the step before it failed", "", "fail"))
                continue
            print(f"[gpu_check] {name} ({time.monotonic() - started:.0f}s)", flush=True)
            try:
                out = run()
            except Exception as err:  # a failed step is a row of the table; the next steps still run
                out = failed_step(name, err)
            if isinstance(out, tuple):
                out, extra["loss_curves"], model = out
            rows.extend(out)
    rows.append(Row("total", "seconds", round(time.monotonic() - started, 1), "<= 480", "info"))
    return report(rows, machine, args.output, extra)


if __name__ == "__main__":
    sys.exit(main())
