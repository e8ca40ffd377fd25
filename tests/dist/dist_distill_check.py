"""Worker for tests/test_distill_distributed.py: the distill term's similarity mode on several CPU processes.

    env -u CUDA_VISIBLE_DEVICES PYTHONPATH=. python -m paddle.distributed.launch \
        --nproc_per_node 2 --log_dir /tmp/log tests/dist/dist_distill_check.py /tmp/out

Every rank builds the same global batch, the tiny dual encoder of ``dist_loss_check.py`` (in
``paddle.DataParallel``) as the student and another one, frozen, as the teacher, takes its slice and
runs one backward of the distill term (similarity mode, each model's own scale).
Each rank writes ``OUT/rank{r}.npz``: ``loss``, ``distill``, ``input/<view>``, ``param/<name>``
(after DataParallel).
"""
import os
import sys

import numpy as np
import paddle

from ernievil2.losses.distill import DistillTerm, TeacherBatch
from tests.dist.dist_loss_check import SEED, TinyDualEncoder, build_model, global_inputs, start_rank
from tests.helpers import table_loss

VIEWS = ("image_v1", "text_v1")
WORLD_SIZE = 2


def build_loss(rank=0, world_size=1):
    # The term alone: no info_nce pair gathers its views for it.
    return table_loss([], rank=rank, world_size=world_size, terms=[DistillTerm("similarity", list(VIEWS))])


def teacher_batch(inputs):
    teacher = TinyDualEncoder(np.random.default_rng(SEED + 7))
    teacher.temperature_b.set_value(paddle.to_tensor(np.log(20.0)))
    with paddle.no_grad():
        features, scale = teacher({v: paddle.to_tensor(inputs[v]) for v in VIEWS})
    return TeacherBatch(features, scale)


def loss_and_gradients(model, loss_fn, inputs):
    tensors = {v: paddle.to_tensor(inputs[v], stop_gradient=False) for v in VIEWS}
    features, logit_scale = model(tensors)
    out = loss_fn(features, logit_scale, teacher=teacher_batch(inputs))
    out["loss"].backward()
    layer = model._layers if isinstance(model, paddle.DataParallel) else model
    result = {"loss": out["loss"].numpy(), "distill": out["loss/distill"].numpy()}
    result.update({f"input/{v}": t.grad.numpy() for v, t in tensors.items()})
    result.update({f"param/{n}": p.grad.numpy() for n, p in layer.named_parameters() if p.grad is not None})
    return result


def single_process_reference(world_size=WORLD_SIZE):
    """The global-batch loss and gradients, in one process."""
    return loss_and_gradients(build_model(), build_loss(), global_inputs(world_size))


def main(out_dir):
    rank, world_size, inputs = start_rank()
    result = loss_and_gradients(paddle.DataParallel(build_model()), build_loss(rank, world_size), inputs)
    np.savez(os.path.join(out_dir, f"rank{rank}.npz"), world_size=world_size, **result)


if __name__ == "__main__":
    main(sys.argv[1])
