"""Worker for tests/test_positives_distributed.py: multiple positives in 2 CPU processes.

Run under the launcher (CUDA_VISIBLE_DEVICES unset, not empty; see
dist_loss_check.py)::

    env -u CUDA_VISIBLE_DEVICES PYTHONPATH=. python -m paddle.distributed.launch \
        --nproc_per_node 2 --log_dir /tmp/log tests/dist/dist_positives_check.py /tmp/out

For every case of :data:`CASES` (each mode on a table of three pairs, and
multi_positive with a momentum queue in mode ``both``), every rank builds the
same tiny dual encoder and trains ``STEPS`` SGD steps on its slice of a fixed
global batch whose image and caption ids repeat across the ranks, in the
trainer's order (loss, backward through ``paddle.DataParallel``, step, and with
the queue: EMA update, enqueue with the ids). :func:`run` records per step the
rank's loss, the synced parameter gradients and the queue's buffers; the
pytest side compares them with the same :func:`run` on the global batch in
one process.
"""
import os
import sys

import numpy as np
import paddle
import paddle.distributed as dist

from tests.helpers import queue_loss, table_loss
from tests.dist.dist_loss_check import TinyDualEncoder  # the same tiny towers
from tests.dist.dist_momentum_check import EMBED_DIM, float64_default, random_batch

PAIRS = [["image_v1", "text_v1", 1.0], ["image_v1", "image_v2", 0.5], ["text_v1", "image_v2", 0.5]]
QUEUE = {"size": 6, "mode": "both", "momentum": 0.9, "weight": 0.5, "temperature": {"init": 0.1}, "warmup_steps": 1}
CASES = {
    "masked": {"positives": {"mode": "masked", "same_caption": True}},
    "multi_positive": {"positives": {"mode": "multi_positive", "same_caption": True}},
    "queue_multi_positive": {"positives": {"mode": "multi_positive", "same_caption": True}, "momentum_queue": QUEUE},
    "queue_masked": {"positives": {"mode": "masked"}, "momentum_queue": QUEUE},
}
VIEW_TOWER = {"image_v1": "image", "image_v2": "image", "text_v1": "text"}
WORLD_SIZE = 2
LOCAL_BATCH = 3
STEPS = 3
LEARNING_RATE = 0.1
SEED = 20240919


def global_batch(step):
    """The step's inputs for every view, its image ids and its caption ids."""
    return random_batch(SEED + 1 + step, WORLD_SIZE * LOCAL_BATCH, VIEW_TOWER, id_arrays=2)


def run(case, rank, world_size, rows):
    """``STEPS`` training steps of ``case`` on ``rows`` of each global batch; what each step left behind."""
    config = CASES[case]
    with float64_default():
        model = TinyDualEncoder(np.random.default_rng(SEED))
        queue = config.get("momentum_queue")
        if queue:
            loss_fn, momentum = queue_loss(PAIRS, queue, EMBED_DIM, rank, world_size, config["positives"], model)
        else:
            loss_fn = table_loss(PAIRS, rank, world_size, positives=config["positives"])
        trained = paddle.DataParallel(model) if world_size > 1 else model
        optimizer = paddle.optimizer.SGD(learning_rate=LEARNING_RATE, parameters=model.parameters())
        record = {}
        for step in range(STEPS):
            inputs, image_ids, caption_ids = global_batch(step)
            tensors = {view: paddle.to_tensor(x[rows]) for view, x in inputs.items()}
            given = {"image_ids": paddle.to_tensor(image_ids[rows]), "caption_ids": paddle.to_tensor(caption_ids[rows])}
            ids = {k: v for k, v in given.items() if k in loss_fn.needs.ids}
            features, logit_scale = trained(tensors)
            kwargs = dict(ids)
            if queue:
                key_features, _ = momentum.encoder({v: tensors[v] for v in ("image_v1", "text_v1")})
                kwargs["momentum"] = momentum.batch({"image": key_features["image_v1"], "text": key_features["text_v1"]}, step, **ids)
            out = loss_fn(features, logit_scale, **kwargs)
            out["loss"].backward()
            record[f"{case}/step{step}/loss"] = out["loss"].numpy()
            record.update({f"{case}/step{step}/grad/{n}": p.grad.numpy() for n, p in model.named_parameters()})
            optimizer.step()
            optimizer.clear_grad()
            if queue:
                record[f"{case}/step{step}/queue_share"] = out["queue/share"].numpy()
                momentum.after_step(model)
                record.update({f"{case}/step{step}/queue/{n}": t.numpy() for n, t in momentum.queue.state_dict().items()})
        return record


def single_process_reference():
    """Every case's steps on the whole global batch, in one process."""
    return {k: v for case in CASES for k, v in run(case, 0, 1, slice(None)).items()}


def main(out_dir):
    paddle.set_device("cpu")
    dist.init_parallel_env()
    rank, world_size = dist.get_rank(), dist.get_world_size()
    if world_size != WORLD_SIZE:
        raise SystemExit(f"launch with --nproc_per_node {WORLD_SIZE}, got world size {world_size}")
    rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    record = {k: v for case in CASES for k, v in run(case, rank, world_size, rows).items()}
    np.savez(os.path.join(out_dir, f"rank{rank}.npz"), world_size=world_size, **record)


if __name__ == "__main__":
    main(sys.argv[1])
