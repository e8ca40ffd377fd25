"""Small data and configs for tests: made on the fly, nothing downloaded."""
import base64

import cv2
import numpy as np
import yaml

from tests.conftest import REPO

COLOURS = {"红色": (220, 30, 30), "绿色": (30, 180, 60), "蓝色": (30, 60, 220), "黄色": (230, 210, 40)}
SHAPES = ("方块", "圆形")


def scene(colour, shape, size=32):
    image = np.full((size, size, 3), 245, np.uint8)
    rgb = COLOURS[colour]
    if shape == "方块":
        cv2.rectangle(image, (6, 6), (size - 7, size - 7), rgb, -1)
    else:
        cv2.circle(image, (size // 2, size // 2), size // 3, rgb, -1)
    return image


def jpeg_b64(rgb):
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return base64.b64encode(data.tobytes()).decode("ascii")


def write_pairs_tsv(path, n, seed=0, size=32, id_prefix="img"):
    """An official-format TSV (with tags) of ``n`` coloured-shape scenes, image ids ``{id_prefix}{i}``."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        colour = list(COLOURS)[rng.integers(len(COLOURS))]
        shape = SHAPES[rng.integers(len(SHAPES))]
        lines.append(f"一个{colour}的{shape}\t{id_prefix}{i}\t{jpeg_b64(scene(colour, shape, size))}\t{colour}{shape}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


TINY_ARCH = {
    "image_tower": {"name": "ViT", "img_size": 32, "patch_size": 16, "embed_dim": 32, "depth": 1, "num_heads": 2},
    "text_tower": {
        "name": "ErnieText", "hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64,
        "max_position_embeddings": 32,
    },
}


def write_train_config(tmp_path, train_tsv, val_spec=None, **sections):
    """A tiny training config over ``train_tsv``; ``sections`` update it (section -> dict)."""
    config = {
        "_base_": str(REPO / "configs" / "ernievil2_base_vit16.yaml"),
        "Global": {"seed": 3, "output_dir": str(tmp_path / "out")},
        "Arch": TINY_ARCH,
        "Tokenizer": {"max_len": 16},
        "Preprocess": {"image_size": 32, "resize_short": 32},
        "Augment": {"image_size": 32, "resize_short": 32},
        "Data": {"train": {"format": "official_tsv", "path": str(train_tsv)}, "val": val_spec, "num_workers": 0, "shuffle_buffer": 16},
        "Train": {"max_steps": 4, "batch_size": 4, "log_every": 1, "save_every": 2},
        "Optimizer": {"lr": 1.0e-3, "warmup_steps": 1},
        "Loss": {"terms": [{"name": "info_nce", "pairs": [["image_v1", "text_v1", 1.0], ["image_v1", "image_v2", 0.5], ["text_v1", "text_v2", 0.5]]}]},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def processes_tagged(variable, value):
    """Pids of live processes whose environment holds ``variable=value``: a run's children carry its tag."""
    import os

    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if f"{variable}={value}".encode() in f.read().split(b"\0"):
                    found.append(int(pid))
        except OSError:
            pass
    return found


def table_loss(pairs, rank=0, world_size=1, gather=True, terms=(), positives=None):
    """A :class:`~ernievil2.losses.Loss` of an info_nce term over ``pairs`` (none when empty and ``terms`` carry the loss), then ``terms``."""
    from ernievil2.losses import InfoNCEPairs, Loss
    from ernievil2.losses.positives import parse_positives

    built = ([InfoNCEPairs(pairs)] if pairs or not terms else []) + list(terms)
    return Loss(built, rank=rank, world_size=world_size, gather=gather, positives=parse_positives(positives))


def queue_loss(pairs, queue, embed_dim, rank=0, world_size=1, positives=None, model=None):
    """``(loss, momentum)``: :func:`table_loss` with a momentum_queue term of the ``queue`` options (``weight``
    among them), and the :class:`~ernievil2.losses.MomentumQueue` for it around ``model`` (an empty layer where a
    test gives the keys itself)."""
    import paddle

    from ernievil2.losses import InfoNCEPairs, Loss, MomentumQueue, MomentumQueueTerm
    from ernievil2.losses.positives import parse_positives

    options = dict(queue)
    weight = options.pop("weight", 1.0)
    parsed = parse_positives(positives)
    table = [InfoNCEPairs(pairs)] if pairs else []
    term = MomentumQueueTerm(**options, positives=parsed)
    loss = Loss([*table, term], [1.0] * len(table) + [weight], rank, world_size, positives=parsed)
    momentum = MomentumQueue(model or paddle.nn.Layer(), term.momentum, embed_dim, loss.needs.ids, world_size)
    return loss, momentum
