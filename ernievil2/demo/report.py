"""Example queries against an exported model, printed and drawn as a picture.

Used at the end of the demo: the test split's images are encoded with the
exported image tower (Paddle Inference), a few captions are encoded with the
exported text tower, and each query's top-k images are listed with their
scores and drawn in a grid (one row per query; a green frame marks an image
the query describes).
"""
import json
import os

import cv2

from ..data.errors import SkipCounter
from ..data.readers import ChineseClipSplit, decode_image_bytes
from ..inference.index import Gallery

CJK_FONTS = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
)


def load_split(root, split):
    """(image ids, RGB images, texts with their image ids) of a Chinese-CLIP layout split."""
    data = ChineseClipSplit(root, split)
    counter = SkipCounter("raise")
    ids, images = [], []
    for record in data.iter_images(counter):
        ids.append(record.image_id)
        images.append(decode_image_bytes(record.image, record.where))
    texts = [(t.text, set(t.image_ids)) for t in data.iter_texts(counter)]
    return ids, images, texts


def pick_queries(texts, count):
    """``count`` captions spread evenly over the split (deterministic)."""
    step = max(1, len(texts) // count)
    return texts[::step][:count]


def search_examples(model, gallery, queries, k):
    """For each (caption, relevant ids): the top-k (image id, score, relevant?)."""
    scores, positions = gallery.search(model.encode_texts([q for q, _ in queries]), k)
    results = []
    for (caption, relevant), row_scores, row_positions in zip(queries, scores, positions):
        hits = [(gallery.ids[p], float(s), gallery.ids[p] in relevant) for s, p in zip(row_scores, row_positions)]
        results.append((caption, hits))
    return results


def format_examples(results):
    lines = []
    for caption, hits in results:
        lines.append(f"query: {caption}")
        for rank, (image_id, score, relevant) in enumerate(hits, 1):
            lines.append(f"  {rank}. image {image_id}  score {score:.3f}" + ("  <- described by the query" if relevant else ""))
    return "\n".join(lines)


def _font(size):
    from PIL import ImageFont

    for path in CJK_FONTS:
        if os.path.isfile(path):
            return ImageFont.truetype(path, size)
    return None


def wrap_caption(text, font, width, max_lines=2):
    """Split ``text`` into at most ``max_lines`` lines that fit ``width`` pixels ("…" when cut)."""
    lines, current = [], ""
    for ch in text:
        if font.getlength(current + ch) > width:
            lines.append(current)
            current = ""
        current += ch
    lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][:-1] + "…"
    return "\n".join(lines)


def render_grid(results, images_by_id, path, cell=128, caption_height=50):
    """One row per query: the caption above its top-k images; green frames mark relevant ones.

    Without a CJK font (Debian ``fonts-wqy-microhei``) rows are labelled Q1, Q2, ...
    and the captions are listed in the printed report instead.
    """
    from PIL import Image, ImageDraw

    k = max(len(hits) for _, hits in results)
    width, row_height = k * cell, caption_height + cell
    canvas = Image.new("RGB", (width, row_height * len(results)), "white")
    draw = ImageDraw.Draw(canvas)
    font = _font(18)
    for row, (caption, hits) in enumerate(results):
        top = row * row_height
        label = wrap_caption(caption, font, width - 8) if font else f"Q{row + 1}"
        draw.text((4, top + 4), label, fill="black", font=font)
        for col, (image_id, score, relevant) in enumerate(hits):
            tile = cv2.resize(images_by_id[image_id], (cell - 8, cell - 8), interpolation=cv2.INTER_NEAREST)
            x, y = col * cell + 4, top + caption_height + 4
            canvas.paste(Image.fromarray(tile), (x, y))
            if relevant:
                draw.rectangle([x - 3, y - 3, x + cell - 6, y + cell - 6], outline=(0, 170, 0), width=3)
            draw.text((x + 2, y + cell - 24), f"{score:.2f}", fill=(200, 0, 0), font=font)
    canvas.save(path)
    return path


def demo_report(model, root, split, out_dir, queries=5, k=5):
    """Encode the split's images, run example queries, print them and save ``examples.png``."""
    ids, images, texts = load_split(root, split)
    gallery = Gallery.from_embeddings(model.encode_images(images, batch_size=64), ids, "image")
    results = search_examples(model, gallery, pick_queries(texts, queries), k)
    os.makedirs(out_dir, exist_ok=True)
    png = render_grid(results, dict(zip(ids, images)), os.path.join(out_dir, "examples.png"))
    return format_examples(results), png


def load_trained_run(folder):
    """(eval_metrics.json, train_summary.json) of a training output folder trained with ``Data.val``."""
    loaded = []
    for name in ("eval_metrics.json", "train_summary.json"):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise ValueError(f"{folder}: no {name} (a training output folder, trained with Data.val set, was expected)")
        with open(path, encoding="utf-8") as f:
            loaded.append(json.load(f))
    return tuple(loaded)


def compare_trained(runs):
    """A table of trained runs side by side: ``runs`` is [(label, eval metrics, train summary)];
    the last column is each run's MeanRecall over the first run's (official protocol)."""
    def recall(metrics, direction, key):
        return metrics["official"][direction][key] * 100

    first = recall(runs[0][1], "mean", "mean_recall")
    lines = [
        "| run | steps | training s | T2I R@1 | I2T R@1 | MeanRecall | x first |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, metrics, summary in runs:
        mean = recall(metrics, "mean", "mean_recall")
        lines.append(
            f"| {label} | {summary['steps']} | {summary['step_seconds']:.0f} | {recall(metrics, 'text2image', 'r1'):.2f} | "
            f"{recall(metrics, 'image2text', 'r1'):.2f} | {mean:.2f} | {mean / max(first, 1e-9):.2f}x |"
        )
    return "\n".join(lines)
