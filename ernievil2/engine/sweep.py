"""Choosing the mixing weight of a weight interpolation (WiSE-FT) on a validation split.

Each ``alpha`` (the fine-tuned model's weight) is loaded into one model and
evaluated as the trainer evaluates (:func:`~ernievil2.engine.trainer.evaluate_model`);
the best is the one of the highest validation MeanRecall.
"""
from ..checkpoint.interpolate import check_alpha, interpolate_states
from ..checkpoint.state import load_state_strict

DEFAULT_ALPHAS = tuple(i / 10 for i in range(11))


def parse_alphas(text):
    """``"0,0.25,1"`` -> ``[0.0, 0.25, 1.0]``, each checked to lie in [0, 1]; a ValueError names a bad one."""
    alphas = []
    for part in text.split(","):
        try:
            alpha = float(part)
        except ValueError:
            raise ValueError(f"--alphas: {part.strip()!r} is not a number (give comma-separated weights in [0, 1])") from None
        check_alpha(alpha)
        alphas.append(alpha)
    return alphas


def retrieval_row(results):
    """``(protocol, T2I R@1, I2T R@1, MeanRecall, zero-shot top-1 or None)`` of one evaluation: the
    official protocol when the split has one caption per image, else the multi-ground-truth one."""
    protocol = "official" if "official" in results else "multi_gt"
    metrics = results[protocol]
    zeroshot = results.get("zeroshot")
    return (
        protocol,
        metrics["text2image"]["r1"],
        metrics["image2text"]["r1"],
        metrics["mean"]["mean_recall"],
        None if zeroshot is None else zeroshot["top1"],
    )


def sweep_alphas(model, start, end, alphas, evaluate, report=None):
    """``[(alpha, retrieval_row)]``: ``model`` loaded with each interpolation of the ``start`` and ``end``
    state dicts and scored by ``evaluate(model)`` (results as the trainer's evaluation gives them);
    ``report(alpha, row)`` is called as each is done."""
    rows = []
    for alpha in alphas:
        load_state_strict(model, interpolate_states(start, end, alpha), source=f"the interpolation at alpha {alpha:g}")
        row = retrieval_row(evaluate(model))
        rows.append((alpha, row))
        if report is not None:
            report(alpha, row)
    return rows


def best_alpha(rows):
    """The alpha of the highest MeanRecall (the smallest such alpha on a tie: the closer to the start model)."""
    return max(rows, key=lambda item: (item[1][3], -item[0]))[0]


def table_header(with_zeroshot):
    return f"{'alpha':>6} {'T2I R@1':>8} {'I2T R@1':>8} {'MeanRecall':>10}" + (f" {'zero-shot top-1':>15}" if with_zeroshot else "")


def table_line(alpha, row):
    _, t2i, i2t, mean_recall, zeroshot = row
    line = f"{alpha:>6g} {100 * t2i:>8.2f} {100 * i2t:>8.2f} {100 * mean_recall:>10.2f}"
    return line if zeroshot is None else line + f" {100 * zeroshot:>15.2f}"
