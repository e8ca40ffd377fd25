"""Data pipeline throughput on ONE core: JPEG decode + two augmented views per image.

    python -m benchmarks.bench_data_pipeline
    python -m benchmarks.bench_data_pipeline --images 200 --repeats 9

OpenCV is pinned to one thread (``cv2.setNumThreads(1)``) so the figures are
per dataloader worker; a machine with N free cores runs about N workers.

Images are synthetic but photo-like (smooth colour fields, edges, shapes and
grain, JPEG quality 90 at 500x375, the typical size of a web photo) and
demo-like (64x64 canvases of coloured shapes on a light background, JPEG
quality 95, like ``tools/make_demo_data.py``). Every sample gets its own
generator from ``sample_generator(seed, epoch, index)``, as in training.
Each row is the median over repeats of the mean time per image: CPU time of
this process (``us/image``, ``images/s``) and wall time (``wall us``).
"""
import argparse
import os
import statistics
import sys
import time

import cv2
import numpy as np

from ernievil2.data.augment import TrainTransform, make_view_pair, sample_generator
from ernievil2.data.image_ops import EvalTransform
from ernievil2.data.readers import decode_image_bytes

DISTINCT_IMAGES = 8


def encode_jpeg(rgb, quality):
    ok, buffer = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("cv2 could not encode the synthetic image")
    return buffer.tobytes()


def smooth_field(rng, height, width, cells, amplitude):
    """Random colour field varying over about ``cells`` cells across, centred on 0."""
    coarse = rng.normal(0.0, amplitude, (max(2, cells * height // width), cells, 3)).astype(np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def synthetic_photo(rng, height=375, width=500):
    """Photo-like texture: broad colour regions, mid-scale detail, edges and sensor grain."""
    image = 128.0 + sum(smooth_field(rng, height, width, cells, amp) for cells, amp in ((4, 50.0), (24, 18.0), (120, 14.0)))
    for _ in range(12):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        colour = [float(c) for c in rng.uniform(0, 255, 3)]
        if rng.random() < 0.5:
            cv2.circle(image, centre, int(rng.integers(8, 80)), colour, -1, lineType=cv2.LINE_AA)
        else:
            end = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            cv2.line(image, centre, end, colour, int(rng.integers(1, 6)), lineType=cv2.LINE_AA)
    image += rng.normal(0.0, 5.0, image.shape).astype(np.float32)
    return encode_jpeg(np.clip(image, 0, 255).astype(np.uint8), quality=90)


def synthetic_canvas(rng, size=64):
    """Demo-like canvas: a light plain background with up to four coloured shapes."""
    image = np.empty((size, size, 3), np.uint8)
    image[:] = rng.integers(215, 250, 3).astype(np.uint8)
    for _ in range(int(rng.integers(1, 5))):
        centre = (int(rng.integers(8, size - 8)), int(rng.integers(8, size - 8)))
        axes = (int(rng.integers(4, 14)), int(rng.integers(4, 14)))
        colour = [int(c) for c in rng.integers(0, 256, 3)]
        cv2.ellipse(image, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, lineType=cv2.LINE_AA)
    return encode_jpeg(image, quality=95)


def per_image_seconds(run, images, count, repeats):
    """Medians over ``repeats`` of the mean (CPU, wall) time of ``run(data, index)`` per image.

    CPU time is the figure to read on a shared machine: other processes on the
    same cores stretch the wall time of this single-threaded loop, not its CPU time.
    """
    run(images[0], 0)  # warm-up: first-call allocations and table builds
    cpu, wall = [], []
    for _ in range(repeats):
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        for index in range(count):
            run(images[index % len(images)], index)
        cpu.append((time.process_time() - cpu_start) / count)
        wall.append((time.perf_counter() - wall_start) / count)
    return statistics.median(cpu), statistics.median(wall)


def cases(photo_bytes, canvas_bytes):
    """``(label, encoded images, run)``; ``run(data, index)`` is one sample's work."""
    train = TrainTransform()
    resized_crop = TrainTransform({"crop": {"name": "random_resized"}})
    train64 = TrainTransform({"image_size": 64, "resize_short": 64})
    eval224, eval64 = EvalTransform(), EvalTransform(64, 64)

    def decode(data, index):
        return decode_image_bytes(data, "bench")

    def evaluate(transform):
        return lambda data, index: transform(decode(data, index))

    def two_views(transform):
        return lambda data, index: make_view_pair(decode(data, index), transform, sample_generator(0, 0, index))

    return [
        ("photo 500x375: decode only", photo_bytes, decode),
        ("photo 500x375: decode + eval 224", photo_bytes, evaluate(eval224)),
        ("photo 500x375: decode + 2 train views 224 (random crop)", photo_bytes, two_views(train)),
        ("photo 500x375: decode + 2 train views 224 (random_resized)", photo_bytes, two_views(resized_crop)),
        ("canvas 64x64: decode only", canvas_bytes, decode),
        ("canvas 64x64: decode + eval 224", canvas_bytes, evaluate(eval224)),
        ("canvas 64x64: decode + 2 train views 224", canvas_bytes, two_views(train)),
        ("canvas 64x64: decode + eval 64", canvas_bytes, evaluate(eval64)),
        ("canvas 64x64: decode + 2 train views 64", canvas_bytes, two_views(train64)),
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100, help="samples per repeat")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)

    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    photo_bytes = [synthetic_photo(rng) for _ in range(DISTINCT_IMAGES)]
    canvas_bytes = [synthetic_canvas(rng) for _ in range(DISTINCT_IMAGES)]

    print("command: python " + " ".join(sys.argv))
    print(f"cv2 {cv2.__version__}, threads {cv2.getNumThreads()}, numpy {np.__version__}")
    print(
        f"JPEG sizes: photo {np.mean([len(b) for b in photo_bytes]) / 1024:.0f} KiB (q90), "
        f"canvas {np.mean([len(b) for b in canvas_bytes]) / 1024:.1f} KiB (q95); "
        f"{args.images} images x {args.repeats} repeats, median"
    )
    print(f"load average before: {os.getloadavg()[0]:.2f} (wall time includes waiting for other processes)")
    print(f"{'case':60s} {'us/image':>9s} {'images/s':>9s} {'wall us':>9s}")
    for label, images, run in cases(photo_bytes, canvas_bytes):
        cpu, wall = per_image_seconds(run, images, args.images, args.repeats)
        print(f"{label:60s} {cpu * 1e6:9.0f} {1.0 / cpu:9.0f} {wall * 1e6:9.0f}")


if __name__ == "__main__":
    main()
