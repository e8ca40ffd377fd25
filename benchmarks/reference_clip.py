"""A plain CLIP loop, the outside reference that our trainer is measured against.

Deliberately ordinary: a small ViT and a small text transformer built from
Paddle's stock layers with Paddle's default initialisers, images decoded once
into memory and scaled to [-1, 1], no augmentation, the symmetric InfoNCE loss
with a learnable scale from 1/0.07, AdamW at a constant learning rate. Nothing
in it comes from ``ernievil2`` except the tokenizer (ids equal to the official
reader's), the retrieval metric (the official protocol) and, for the diagnosis
in ``bench_learning.py towers``, our towers swapped in for the plain ones.
"""
import base64
import math
import time

import cv2
import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F


def read_official_tsv(path, tokenizer, max_len=48):
    """(uint8 images [N, H, W, 3] RGB, ids [N, max_len]) of an official-format TSV."""
    texts, images = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            text, _, b64 = line.rstrip("\n").split("\t")[:3]
            data = np.frombuffer(base64.b64decode(b64), np.uint8)
            images.append(cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
            texts.append(text)
    return np.stack(images), tokenizer.encode(texts, max_len)


def to_unit_range(images):
    """uint8 NHWC -> float32 NCHW in [-1, 1]."""
    return paddle.to_tensor(images.transpose(0, 3, 1, 2).astype("float32") / 127.5 - 1.0)


class PlainViT(nn.Layer):
    def __init__(self, img_size=64, patch=16, width=128, depth=4, heads=4):
        super().__init__()
        self.patch = nn.Conv2D(3, width, patch, stride=patch)
        tokens = (img_size // patch) ** 2 + 1
        self.cls = self.create_parameter([1, 1, width])
        self.pos = self.create_parameter([1, tokens, width])
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="relu", normalize_before=True)
        self.blocks = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(width))
        self.out_dim = width

    def forward(self, images):
        x = self.patch(images).flatten(2).transpose([0, 2, 1])
        x = paddle.concat([self.cls.expand([x.shape[0], -1, -1]), x], axis=1) + self.pos
        return self.blocks(x)[:, 0]


class PlainText(nn.Layer):
    def __init__(self, vocab_size=128, max_len=64, width=128, depth=2, heads=4, dropout=0.1):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, width)
        self.pos = nn.Embedding(max_len, width)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=dropout, activation="relu")
        self.blocks = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(width))
        self.out_dim = width

    def forward(self, ids):
        positions = paddle.arange(ids.shape[1]).unsqueeze(0)
        mask = (ids == 0).astype("float32").unsqueeze([1, 2]) * -1e4
        return self.blocks(self.tok(ids) + self.pos(positions), mask)[:, 0]


def clip_loss(image, text, log_scale):
    image, text = F.normalize(image, axis=-1), F.normalize(text, axis=-1)
    logits = paddle.exp(log_scale.clip(max=math.log(100.0))) * image @ text.T
    labels = paddle.arange(len(image))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


@paddle.no_grad()
def embed(tower, inputs, batch=500):
    tower.eval()
    out = np.concatenate([F.normalize(tower(inputs[i : i + batch]), axis=-1).numpy() for i in range(0, len(inputs), batch)])
    tower.train()
    return out


def train_plain(image_tower, text_tower, train, test, steps=None, seconds=None, batch=128, lr=1e-3, seed=0, log=None):
    """Train on ``train`` = (images, ids) for ``steps`` (or ``seconds`` of training); returns (metrics, stats).

    ``test`` = (images, ids), one caption per image: the official protocol.
    """
    from ernievil2.evaluation.retrieval import evaluate_official

    rng = np.random.default_rng(seed)
    log_scale = paddle.create_parameter([1], "float32", default_initializer=nn.initializer.Constant(math.log(1 / 0.07)))
    params = list(image_tower.parameters()) + list(text_tower.parameters()) + [log_scale]
    optimizer = paddle.optimizer.AdamW(learning_rate=lr, parameters=params, weight_decay=0.05)
    images, ids = train
    train_time, step, losses = 0.0, 0, []
    while (steps is None or step < steps) and (seconds is None or train_time < seconds):
        tick = time.perf_counter()
        index = rng.choice(len(ids), batch, replace=False)
        loss = clip_loss(image_tower(to_unit_range(images[index])), text_tower(paddle.to_tensor(ids[index])), log_scale)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        losses.append(float(loss))
        train_time += time.perf_counter() - tick
        step += 1
        if log and step % 25 == 0:
            log(f"  step {step} loss {np.mean(losses[-25:]):.3f} ({train_time:.0f} s)")
    test_images, test_ids = test
    metrics = evaluate_official(embed(text_tower, paddle.to_tensor(test_ids)), embed(image_tower, to_unit_range(test_images)))
    return metrics, {"steps": step, "train_seconds": train_time, "final_loss": float(np.mean(losses[-10:]))}
