"""Two CPU processes (gloo) with multiple positives train as one process does on the global batch.

Launches ``tests/dist/dist_positives_check.py`` with ``paddle.distributed.launch``
and compares what each rank recorded, step by step and case by case, against
the worker's ``run`` on the whole global batch in this process: the mean rank
loss, the synced gradients, and (with the queue) identical queues and ids.
The ids of positives cross the ranks, so the gathered ids must be right.
"""

import numpy as np
import paddle
import pytest

from tests.dist.launcher import REPO, cpu_launcher_only, module_fixtures, relative_error
from tests.helpers import table_loss

WORKER = REPO / "tests" / "dist" / "dist_positives_check.py"

pytestmark = cpu_launcher_only


worker, ranks, reference = module_fixtures(WORKER)


def test_positives_cross_the_ranks_and_change_the_loss(worker):
    """Guards the tests below: rows of one rank share ids with the other rank's rows, and it matters."""
    _, image_ids, caption_ids = worker.global_batch(0)
    half = worker.LOCAL_BATCH
    shared = [(a[:half, None] == a[None, half:]) & (a[:half, None] >= 0) for a in (image_ids, caption_ids)]
    assert shared[0].any() and shared[1].any()
    inputs, _, _ = worker.global_batch(0)
    with_positives = worker.run("masked", 0, 1, slice(None))["masked/step0/loss"]
    plain = table_loss(worker.PAIRS)
    model = worker.TinyDualEncoder(np.random.default_rng(worker.SEED))
    features, scale = model({v: paddle.to_tensor(x) for v, x in inputs.items()})
    assert abs(plain(features, scale)["loss"].item() - with_positives) > 1e-3


@pytest.mark.parametrize("case", ["masked", "multi_positive", "queue_multi_positive", "queue_masked"])
def test_mean_of_rank_losses_and_synced_gradients_are_the_global_ones(ranks, reference, worker, case):
    for step in range(worker.STEPS):
        prefix = f"{case}/step{step}"
        mean_loss = np.mean([r[f"{prefix}/loss"] for r in ranks])
        np.testing.assert_allclose(mean_loss, reference[f"{prefix}/loss"], rtol=1e-10, err_msg=prefix)
        names = sorted(k for k in reference if k.startswith(f"{prefix}/grad/"))
        assert len(names) == 5, names  # 2 towers x (weight, bias) + temperature_b
        for rank in ranks:
            for name in names:
                error = relative_error(rank[name], reference[name])
                assert error < 1e-9, (name, error)


@pytest.mark.parametrize("case, buffers", [
    ("queue_multi_positive", ["caption_ids", "filled", "ids", "ptr", "queue_image", "queue_text"]),
    ("queue_masked", ["filled", "ids", "ptr", "queue_image", "queue_text"]),
])
def test_the_queue_stores_the_ids_of_every_rank_and_is_scored(ranks, reference, worker, case, buffers):
    shares = [reference[f"{case}/step{s}/queue_share"].item() for s in range(worker.STEPS)]
    assert shares == [0.0, 1.0, 1.0]  # guards: steps 1 and 2 score against the queue (full after step 0)
    for step in range(worker.STEPS):
        names = sorted(k for k in reference if k.startswith(f"{case}/step{step}/queue/"))
        assert [n.rsplit("/", 1)[1] for n in names] == buffers
        for name in names:
            np.testing.assert_array_equal(ranks[0][name], ranks[1][name], err_msg=name)
            np.testing.assert_allclose(ranks[0][name], reference[name], rtol=0, atol=1e-12, err_msg=name)
        # The queue holds one global batch: every rank's ids, in rank order.
        _, image_ids, caption_ids = worker.global_batch(step)
        np.testing.assert_array_equal(ranks[0][f"{case}/step{step}/queue/ids"], image_ids)
        if "caption_ids" in buffers:
            np.testing.assert_array_equal(ranks[0][f"{case}/step{step}/queue/caption_ids"], caption_ids)
