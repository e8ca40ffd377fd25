"""Worker for tests/test_momentum_distributed.py: the momentum queue in 2 CPU processes.

Run under the launcher (CUDA_VISIBLE_DEVICES unset, not empty; see
dist_loss_check.py)::

    env -u CUDA_VISIBLE_DEVICES PYTHONPATH=. python -m paddle.distributed.launch \
        --nproc_per_node 2 --log_dir /tmp/log tests/dist/dist_momentum_check.py /tmp/out

Every rank builds the same tiny dual encoder, its EMA copy and the loss with a
queue (mode ``both``, masking, warm-up and ramp), and trains ``STEPS`` SGD steps
on its slice of a fixed global batch per step, in the trainer's order: loss,
backward (``paddle.DataParallel``), optimizer step, EMA update, enqueue. The
queue of 6 rows takes 4 keys a step, so it wraps, and it is active from step 2
(warm-up 2, ramp 2: queue shares 0, 0, 0.5, 1). :func:`run` writes, per step, the
rank's loss, the synced parameter gradients, the queue buffers after the
enqueue and the momentum copy's parameters to ``OUT/rank{r}.npz``; the pytest
side compares them with the same :func:`run` on the global batch in one process.
"""
import contextlib
import os
import sys

import numpy as np
import paddle
import paddle.distributed as dist

from tests.helpers import queue_loss
from tests.dist.dist_loss_check import EMBED_DIM, INPUT_DIM, TinyDualEncoder  # the same tiny towers

PAIRS = [["image_v1", "text_v1", 1.0], ["image_v1", "image_v2", 0.5]]
QUEUE = {
    "size": 6,
    "mode": "both",
    "momentum": 0.9,
    "weight": 0.5,
    "temperature": {"init": 0.1},
    "warmup_steps": 2,
    "ramp_steps": 2,
    "mask_same_image": True,
}
VIEW_TOWER = {"image_v1": "image", "image_v2": "image", "text_v1": "text"}
WORLD_SIZE = 2
LOCAL_BATCH = 2
STEPS = 4
LEARNING_RATE = 0.1
SEED = 20240918


def random_batch(seed, rows, view_tower, id_arrays=1):
    """Inputs for every view of ``view_tower``, then ``id_arrays`` arrays of ids; ids 0..2 repeat, -1 is unknown."""
    rng = np.random.default_rng(seed)
    inputs = {view: rng.standard_normal((rows, INPUT_DIM[tower])) for view, tower in view_tower.items()}
    return (inputs, *(rng.integers(-1, 3, rows) for _ in range(id_arrays)))


def global_batch(step):
    """The step's inputs for every view and its image ids."""
    return random_batch(SEED + 1 + step, WORLD_SIZE * LOCAL_BATCH, VIEW_TOWER)


@contextlib.contextmanager
def float64_default():
    # Float64 keeps the comparison about the maths; the queue takes the default dtype.
    previous = paddle.get_default_dtype()
    paddle.set_default_dtype("float64")
    try:
        yield
    finally:
        paddle.set_default_dtype(previous)


def run(rank, world_size, rows):
    """``STEPS`` training steps on ``rows`` of each global batch; what each step left behind."""
    with float64_default():
        model = TinyDualEncoder(np.random.default_rng(SEED))
        loss_fn, momentum = queue_loss(PAIRS, QUEUE, EMBED_DIM, rank, world_size, model=model)
        trained = paddle.DataParallel(model) if world_size > 1 else model
        optimizer = paddle.optimizer.SGD(learning_rate=LEARNING_RATE, parameters=model.parameters())
        record = {}
        for step in range(STEPS):
            inputs, ids = global_batch(step)
            tensors = {view: paddle.to_tensor(x[rows]) for view, x in inputs.items()}
            image_ids = paddle.to_tensor(ids[rows])

            features, logit_scale = trained(tensors)
            key_features, _ = momentum.encoder({v: tensors[v] for v in ("image_v1", "text_v1")})
            keys = {"image": key_features["image_v1"], "text": key_features["text_v1"]}
            out = loss_fn(features, logit_scale, image_ids=image_ids, momentum=momentum.batch(keys, step, image_ids))
            out["loss"].backward()
            record[f"step{step}/loss"] = out["loss"].numpy()
            record[f"step{step}/queue_share"] = out["queue/share"].numpy()
            record.update({f"step{step}/grad/{n}": p.grad.numpy() for n, p in model.named_parameters()})
            optimizer.step()
            optimizer.clear_grad()
            momentum.after_step(model)

            record.update({f"step{step}/queue/{n}": t.numpy() for n, t in momentum.queue.state_dict().items()})
            record.update({f"step{step}/momentum/{n}": p.numpy() for n, p in momentum.encoder.model.named_parameters()})
        return record


def single_process_reference():
    """The same steps on the whole global batch, in one process."""
    return run(0, 1, slice(None))


def main(out_dir):
    paddle.set_device("cpu")
    dist.init_parallel_env()
    rank, world_size = dist.get_rank(), dist.get_world_size()
    if world_size != WORLD_SIZE:
        raise SystemExit(f"launch with --nproc_per_node {WORLD_SIZE}, got world size {world_size}")
    record = run(rank, world_size, slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH))
    np.savez(os.path.join(out_dir, f"rank{rank}.npz"), world_size=world_size, **record)


if __name__ == "__main__":
    main(sys.argv[1])
