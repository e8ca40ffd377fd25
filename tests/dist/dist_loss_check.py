"""Worker for tests/test_losses_distributed.py: the gathered loss in 2 CPU processes.

Run under the launcher (CUDA_VISIBLE_DEVICES must be unset, not empty: paddle
3.3.1's launcher reads "" as one GPU and then fails to place 2 processes)::

    env -u CUDA_VISIBLE_DEVICES PYTHONPATH=. python -m paddle.distributed.launch \
        --nproc_per_node 2 --log_dir /tmp/log tests/dist/dist_loss_check.py /tmp/out

Every rank builds the same global batch and the same tiny dual encoder, takes
its slice, and runs one backward through ``paddle.DataParallel`` twice: with
``Loss`` (``gather_with_grad``) and with a naive
``all_gather`` whose outputs carry no gradient. It writes ``OUT/rank{r}.npz``
with keys ``{exact,naive}/loss``, ``{exact,naive}/input/<view>`` (gradient of
the rank's loss w.r.t. its local inputs) and ``{exact,naive}/param/<name>``
(parameter gradients after DataParallel's all-reduce). The pytest side
compares them with :func:`single_process_reference`.

Float64 keeps the comparison about the maths, not about summation order.
"""
import math
import os
import sys

import numpy as np
import paddle
import paddle.distributed as dist
import paddle.nn.functional as F

from ernievil2.losses import symmetric_info_nce
from ernievil2.models.dual_encoder import clamp_logit_scale
from tests.helpers import table_loss

PAIRS = [
    ["image_v1", "text_v1", 1.0],
    ["image_v2", "text_v2", 1.0],
    ["image_v1", "image_v2", 0.5],
    ["text_v1", "text_v2", 0.5],
    ["image_v1", "tag", 0.5],
]
VIEW_TOWER = {"image_v1": "image", "image_v2": "image", "text_v1": "text", "text_v2": "text", "tag": "text"}
INPUT_DIM = {"image": 6, "text": 5}
EMBED_DIM = 4
LOCAL_BATCH = 3
SEED = 20240917
DTYPE = "float64"
WORLD_SIZE = 2  # what the test launches; main() works on any number of ranks


class LinearTower(paddle.nn.Layer):
    def __init__(self, weight, bias):
        super().__init__()
        self.weight = self.create_parameter(
            weight.shape, dtype=DTYPE, default_initializer=paddle.nn.initializer.Assign(weight)
        )
        self.bias = self.create_parameter(
            bias.shape, dtype=DTYPE, default_initializer=paddle.nn.initializer.Assign(bias)
        )

    def forward(self, x):
        return paddle.matmul(x, self.weight) + self.bias


class TinyDualEncoder(paddle.nn.Layer):
    """Two linear towers and a learned temperature, like the real model's interface."""

    def __init__(self, rng):
        super().__init__()
        self.towers = paddle.nn.LayerDict(
            {
                name: LinearTower(rng.standard_normal((dim, EMBED_DIM)), rng.standard_normal(EMBED_DIM))
                for name, dim in INPUT_DIM.items()
            }
        )
        self.temperature_b = self.create_parameter(
            [], dtype=DTYPE, default_initializer=paddle.nn.initializer.Constant(math.log(1 / 0.07))
        )

    def forward(self, inputs):
        features = {view: self.towers[VIEW_TOWER[view]](x) for view, x in inputs.items()}
        return features, clamp_logit_scale(self.temperature_b, 100.0)


def build_model():
    return TinyDualEncoder(np.random.default_rng(SEED))


def global_inputs(world_size):
    rng = np.random.default_rng(SEED + 1)
    rows = world_size * LOCAL_BATCH
    return {view: rng.standard_normal((rows, INPUT_DIM[tower])) for view, tower in VIEW_TOWER.items()}


def naive_gather_loss(features, logit_scale):
    """The official pattern: gathered negatives that pass no gradient back."""
    rank = dist.get_rank()
    local = {v: F.normalize(x, axis=-1) for v, x in sorted(features.items())}
    gathered = {}
    for view, x in local.items():
        pieces = []
        dist.all_gather(pieces, x)
        gathered[view] = paddle.concat(pieces).detach()
    total = 0.0
    for view_a, view_b, weight in PAIRS:
        terms = symmetric_info_nce(
            local[view_a], local[view_b], logit_scale, gathered[view_a], gathered[view_b], rank
        )
        total = total + weight * terms["loss"]
    return {"loss": total}


def loss_and_gradients(model, loss_fn, inputs, prefix):
    """One forward and backward; the loss, input gradients and parameter gradients."""
    tensors = {v: paddle.to_tensor(x, stop_gradient=False) for v, x in inputs.items()}
    features, logit_scale = model(tensors)
    loss = loss_fn(features, logit_scale)["loss"]
    loss.backward()
    layer = model._layers if isinstance(model, paddle.DataParallel) else model
    result = {f"{prefix}/loss": loss.numpy()}
    result.update({f"{prefix}/input/{v}": t.grad.numpy() for v, t in tensors.items()})
    result.update({f"{prefix}/param/{n}": p.grad.numpy() for n, p in layer.named_parameters()})
    layer.clear_gradients()
    return result


def single_process_reference(world_size=WORLD_SIZE):
    """The global-batch loss and gradients, computed in one process."""
    loss_fn = table_loss(PAIRS)
    return loss_and_gradients(build_model(), loss_fn, global_inputs(world_size), "global")


def start_rank():
    """Join the process group on CPU: (rank, world size, this rank's slice of the global inputs)."""
    paddle.set_device("cpu")
    dist.init_parallel_env()
    rank, world_size = dist.get_rank(), dist.get_world_size()
    rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    return rank, world_size, {v: x[rows] for v, x in global_inputs(world_size).items()}


def main(out_dir):
    rank, world_size, inputs = start_rank()
    model = paddle.DataParallel(build_model())
    exact_loss = table_loss(PAIRS, rank=rank, world_size=world_size)
    result = loss_and_gradients(model, exact_loss, inputs, "exact")
    result.update(loss_and_gradients(model, naive_gather_loss, inputs, "naive"))
    np.savez(os.path.join(out_dir, f"rank{rank}.npz"), world_size=world_size, **result)


if __name__ == "__main__":
    main(sys.argv[1])
