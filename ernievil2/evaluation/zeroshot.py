"""Zero-shot classification and tagging maths, on numpy arrays.

A class is embedded as CLIP does it: each prompt (a template filled with the
class name) is encoded and L2-normalised, the prompts of a class are averaged,
and the mean is normalised again, so every template weighs the same whatever
its norm before normalisation. An image's score for a class is the dot product
of the two unit vectors.

The rank of the true class is the number of classes scoring strictly higher
(ties count in the image's favour, as in retrieval); top-k accuracy is the
share of images whose rank is below k.
"""
import numpy as np

TOPK = (1, 5)


def normalize_rows(x, eps=1e-12):
    """Rows of ``x`` scaled to unit L2 norm (a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, eps)


def class_embeddings(prompt_emb):
    """``[classes, templates, dim]`` prompt embeddings -> ``[classes, dim]`` unit class embeddings."""
    prompt_emb = np.asarray(prompt_emb, dtype=np.float32)
    if prompt_emb.ndim != 3 or 0 in prompt_emb.shape:
        raise ValueError(f"prompt embeddings must be [classes, templates, dim], got shape {prompt_emb.shape}")
    return normalize_rows(normalize_rows(prompt_emb).mean(axis=1))


def fill_templates(templates, names):
    """Every prompt, class by class: each template with its ``{}`` replaced by the name.

    Not ``str.format``: a template may hold other braces, and a name may too.
    """
    return [template.replace("{}", name) for name in names for template in templates]


def true_class_ranks(scores, labels):
    """How many classes score strictly higher than the true class, per image."""
    scores = np.asarray(scores)
    labels = np.asarray(labels, dtype=np.int64)
    true = scores[np.arange(len(labels)), labels]
    return (scores > true[:, None]).sum(axis=1)


def topk_indices(scores, k):
    """``[n, min(k, classes)]`` class indices, best first; ties go to the lower class index."""
    scores = np.asarray(scores)
    k = min(k, scores.shape[1])
    # A stable sort of the negated scores keeps equal scores in class order.
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def topk_accuracy(ranks, ks=TOPK):
    """``{"top{k}": share of ranks < k}`` (0.0 for no images)."""
    ranks = np.asarray(ranks)
    return {f"top{k}": float((ranks < k).mean()) if ranks.size else 0.0 for k in ks}


def confusion_matrix(labels, predictions, num_classes):
    """``[true, predicted]`` counts."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return matrix


def per_class(confusion, ranks, labels, ks=TOPK):
    """One row per class: images, top-k accuracy (recall) and top-1 precision.

    Precision is None for a class never predicted; accuracies are None for a
    class with no image.
    """
    confusion = np.asarray(confusion)
    ranks, labels = np.asarray(ranks), np.asarray(labels)
    predicted = confusion.sum(axis=0)
    rows = []
    for c in range(len(confusion)):
        mine = ranks[labels == c]
        row = {"images": int(mine.size)}
        for k in ks:
            row[f"top{k}"] = float((mine < k).mean()) if mine.size else None
        row["precision"] = float(confusion[c, c] / predicted[c]) if predicted[c] else None
        rows.append(row)
    return rows


def most_confused(confusion, n=10):
    """The ``n`` largest off-diagonal cells as ``(true, predicted, count, share of the true class)``.

    Ordered by count, then by (true, predicted) index, so the list is the same on every run.
    """
    confusion = np.asarray(confusion)
    totals = confusion.sum(axis=1)
    cells = [
        (int(confusion[t, p]), t, p)
        for t in range(len(confusion))
        for p in range(len(confusion))
        if t != p and confusion[t, p] > 0
    ]
    cells.sort(key=lambda cell: (-cell[0], cell[1], cell[2]))
    return [(t, p, count, count / totals[t]) for count, t, p in cells[:n]]


def softmax(logits):
    """Row-wise softmax, computed stably."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def select_tags(probs, top_k=None, threshold=None):
    """Per image, the tag indices kept, most probable first.

    ``top_k`` keeps at most that many; ``threshold`` keeps those whose
    probability is at least it; given both, a tag must pass both. Ties go to
    the lower tag index.
    """
    if top_k is None and threshold is None:
        raise ValueError("give top_k, threshold or both")
    probs = np.asarray(probs)
    order = topk_indices(probs, probs.shape[1] if top_k is None else top_k)
    chosen = []
    for row, indices in zip(probs, order):
        if threshold is not None:
            indices = indices[row[indices] >= threshold]
        chosen.append([int(i) for i in indices])
    return chosen


def tag_precision_recall(predicted, true):
    """Micro precision, recall and F1 of predicted tag sets against true ones, image by image."""
    if len(predicted) != len(true):
        raise ValueError(f"{len(predicted)} predicted tag sets for {len(true)} true ones")
    hits = sum(len(set(p) & set(t)) for p, t in zip(predicted, true))
    n_pred = sum(len(set(p)) for p in predicted)
    n_true = sum(len(set(t)) for t in true)
    precision = hits / n_pred if n_pred else 0.0
    recall = hits / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "predicted": n_pred, "true": n_true, "hits": hits}


def zeroshot_report(scores, labels, names, n_confused=10):
    """Top-k accuracy, the per-class table and the most confused pairs, as plain JSON-able values.

    ``scores``: ``[images, classes]``; ``labels``: the true class index of each image; ``names``: the class names.
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels, dtype=np.int64)
    if scores.ndim != 2 or scores.shape != (len(labels), len(names)):
        raise ValueError(f"scores of shape {scores.shape} for {len(labels)} images and {len(names)} classes")
    ranks = true_class_ranks(scores, labels)
    predictions = topk_indices(scores, 1)[:, 0] if len(labels) else np.zeros(0, np.int64)
    confusion = confusion_matrix(labels, predictions, len(names))
    rows = [{"class": name, **row} for name, row in zip(names, per_class(confusion, ranks, labels))]
    seen = [row["top1"] for row in rows if row["top1"] is not None]
    return {
        "images": int(len(labels)),
        "classes": len(names),
        **topk_accuracy(ranks),
        "mean_per_class_top1": float(np.mean(seen)) if seen else 0.0,
        "per_class": rows,
        "most_confused": [
            {"true": names[t], "predicted": names[p], "count": count, "share_of_true": float(share)}
            for t, p, count, share in most_confused(confusion, n_confused)
        ],
    }


def _percent(value):
    return "-" if value is None else f"{100 * value:.1f}"


def format_report(report):
    """The report as text: the headline, the per-class table, the most confused pairs."""
    lines = [
        f"zero-shot: {report['images']} images, {report['classes']} classes: "
        f"top-1 {_percent(report['top1'])}%, top-5 {_percent(report['top5'])}%, "
        f"mean per-class top-1 {_percent(report['mean_per_class_top1'])}%",
        "",
        "| class | images | top-1 % | top-5 % | precision % |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in report["per_class"]:
        lines.append(
            f"| {row['class']} | {row['images']} | {_percent(row['top1'])} | {_percent(row['top5'])} | {_percent(row['precision'])} |"
        )
    if report["most_confused"]:
        lines += ["", "most confused (true -> predicted: images, share of the true class):"]
        lines += [
            f"  {c['true']} -> {c['predicted']}: {c['count']} ({_percent(c['share_of_true'])}%)" for c in report["most_confused"]
        ]
    return "\n".join(lines)
