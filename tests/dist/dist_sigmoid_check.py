"""Worker for tests/test_sigmoid_distributed.py: the sigmoid (SigLIP) term's ring in several CPU processes.

    env -u CUDA_VISIBLE_DEVICES PYTHONPATH=. python -m paddle.distributed.launch \
        --nproc_per_node 2 --log_dir /tmp/log tests/dist/dist_sigmoid_check.py /tmp/out

Every rank builds the same global batch, the tiny dual encoder of
``dist_loss_check.py`` (in ``paddle.DataParallel``) and the same sigmoid term,
takes its slice and runs one backward; the term's scale and bias gradients are
then averaged as the trainer does (``average_gradients``). The gathering path
of the loss is replaced by one that raises: the term must pass rows round the
ring, never gather them. Each rank writes ``OUT/rank{r}.npz``: ``loss``,
``input/<view>``, ``param/<name>`` (after DataParallel), ``term/<name>``.
"""
import os
import sys

import numpy as np
import paddle
import paddle.distributed as dist

import ernievil2.losses.loss as loss_module
from ernievil2.engine.steps import average_gradients
from ernievil2.losses import SigmoidPairs
from tests.helpers import table_loss
from tests.dist.dist_loss_check import LOCAL_BATCH, VIEW_TOWER, build_model, global_inputs

# view_a stays, view_b travels: the second pair sends an image view round the ring.
PAIRS = [["image_v1", "text_v1", 1.0], ["text_v2", "image_v2", 0.5]]
# Not SigLIP's start (t = 10, b = -10): there nearly every negative sits at σ ≈ 0 and
# contributes almost no gradient, which would hide a negative scored wrongly.
SCALE_INIT, BIAS_INIT = 3.0, -1.5


def build_loss(rank=0, world_size=1):
    return table_loss([], rank=rank, world_size=world_size, terms=[SigmoidPairs(PAIRS, SCALE_INIT, BIAS_INIT)])


def loss_and_gradients(model, loss_fn, inputs, world_size):
    tensors = {v: paddle.to_tensor(x, stop_gradient=False) for v, x in inputs.items() if v in loss_fn.needs.views}
    features, logit_scale = model(tensors)
    loss = loss_fn(features, logit_scale)["loss"]
    loss.backward()
    term = loss_fn.term_layers[0]
    average_gradients(list(term.parameters()), world_size)
    layer = model._layers if isinstance(model, paddle.DataParallel) else model
    result = {"loss": loss.numpy()}
    result.update({f"input/{v}": t.grad.numpy() for v, t in tensors.items()})
    result.update({f"param/{n}": p.grad.numpy() for n, p in layer.named_parameters() if p.grad is not None})
    result.update({f"term/{n}": p.grad.numpy() for n, p in term.named_parameters()})
    return result


def single_process_reference(world_size):
    """The global-batch loss and gradients, in one process."""
    return loss_and_gradients(build_model(), build_loss(), global_inputs(world_size), 1)


def refuse_to_gather(x, group=None):
    raise AssertionError("the sigmoid term must not all-gather its views")


def main(out_dir):
    paddle.set_device("cpu")
    dist.init_parallel_env()
    rank, world_size = dist.get_rank(), dist.get_world_size()
    loss_module.gather_with_grad = refuse_to_gather
    rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    inputs = {v: x[rows] for v, x in global_inputs(world_size).items()}
    # The temperature is unused by a sigmoid-only loss: DataParallel must not wait for its gradient.
    model = build_model()
    model.temperature_b.stop_gradient = True
    result = loss_and_gradients(paddle.DataParallel(model), build_loss(rank, world_size), inputs, world_size)
    np.savez(os.path.join(out_dir, f"rank{rank}.npz"), world_size=world_size, **result)


if __name__ == "__main__":
    main(sys.argv[1])
