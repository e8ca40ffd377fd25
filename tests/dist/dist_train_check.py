"""Worker for tests/test_engine_distributed.py: the trainer's steps on 2 CPU processes.

Every rank builds the same tiny dual encoder and the same global batch, takes
its slice and computes parameter gradients with the trainer's own step
functions: a plain step through fleet's DataParallel, and a GradCache step of
two micro-batches followed by ``average_gradients``; and the plain step again
with the image views at two patch keep ratios (two image-tower calls inside
the one DataParallel forward). It writes ``OUT/rank{r}.npz`` with
``{plain,accumulated,split}/loss`` and ``{plain,accumulated,split}/grad/<name>``;
the pytest side compares them with :func:`single_process_reference` on the
whole batch.
"""
import copy
import sys

import numpy as np
import paddle

from ernievil2.engine.build import init_distributed
from ernievil2.engine.steps import accumulated_step, average_gradients, train_step
from ernievil2.models import build_model
from tests.helpers import TINY_ARCH, table_loss

GLOBAL_BATCH = 8
# 0.99 of the tiny ViT's 4 patches rounds to all 4: image_v2 takes the patch-dropout path in
# its own tower call, yet computes the same function, so the single-process reference holds.
SPLIT_KEEP = {"image_v1": 1.0, "image_v2": 0.99}
PAIRS = [["image_v1", "text_v1", 1.0], ["image_v2", "text_v2", 1.0], ["image_v1", "image_v2", 0.5], ["text_v1", "text_v2", 0.5], ["image_v1", "tag", 0.5]]


def make_model():
    # float64: the comparison is about the maths, not the summation order.
    paddle.set_default_dtype("float64")
    arch = copy.deepcopy(TINY_ARCH)
    arch["text_tower"].update(hidden_dropout=0.0, attention_dropout=0.0, vocab_size=50)
    paddle.seed(0)
    return build_model(arch)


def global_batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(4, 50, size=(GLOBAL_BATCH, 10))
    ids[:, 0], ids[:, -1] = 1, 2
    ids[::2, 6:] = 0
    return {
        "image_v1": rng.standard_normal((GLOBAL_BATCH, 3, 32, 32)),
        "image_v2": rng.standard_normal((GLOBAL_BATCH, 3, 32, 32)),
        "text": ids,
        "tag": np.roll(ids, 1, axis=1),
    }


def rows(batch, start, stop):
    return {k: paddle.to_tensor(v[start:stop]) for k, v in batch.items()}


def gradients(model):
    return {n: p.grad.numpy().copy() for n, p in model.named_parameters() if p.grad is not None}


def single_process_reference():
    model = make_model()
    loss = table_loss(PAIRS)
    terms = train_step(model, loss, rows(global_batch(), 0, GLOBAL_BATCH), loss.needs.views)
    return float(terms["loss"]), gradients(model)


def main(out_dir):
    from paddle.distributed import fleet

    rank, world = init_distributed()
    local = GLOBAL_BATCH // world
    batch = global_batch()
    model = make_model()
    loss = table_loss(PAIRS, rank=rank, world_size=world)
    wrapped = fleet.distributed_model(model)
    result = {}
    mine = rows(batch, rank * local, (rank + 1) * local)
    result["plain/loss"] = float(train_step(wrapped, loss, mine, loss.needs.views)["loss"])
    for name, grad in gradients(model).items():
        result[f"plain/grad/{name}"] = grad
    model.clear_gradients()
    half = local // 2
    micro = [rows(batch, rank * local, rank * local + half), rows(batch, rank * local + half, (rank + 1) * local)]
    terms = accumulated_step(wrapped, loss, micro, loss.needs.views, no_sync=wrapped.no_sync)
    average_gradients([p for p in model.parameters() if not p.stop_gradient], world)
    result["accumulated/loss"] = float(terms["loss"])
    for name, grad in gradients(model).items():
        result[f"accumulated/grad/{name}"] = grad
    model.clear_gradients()
    result["split/loss"] = float(train_step(wrapped, loss, mine, loss.needs.views, patch_keep=SPLIT_KEEP)["loss"])
    for name, grad in gradients(model).items():
        result[f"split/grad/{name}"] = grad
    result["world_size"] = world
    np.savez(f"{out_dir}/rank{rank}.npz", **result)


if __name__ == "__main__":
    main(sys.argv[1])
