"""Two CPU processes (gloo) train with the momentum queue as one process does on the global batch.

Launches ``tests/dist/dist_momentum_check.py`` with ``paddle.distributed.launch``
and compares what each rank recorded, step by step, against the worker's
``run`` on the whole global batch in this process: identical queues on both
ranks, the mean rank loss, the synced gradients and the EMA copies.
"""

import numpy as np

from tests.dist.launcher import REPO, cpu_launcher_only, module_fixtures, relative_error

WORKER = REPO / "tests" / "dist" / "dist_momentum_check.py"

pytestmark = cpu_launcher_only


worker, ranks, reference = module_fixtures(WORKER)


def keys_of(record, step, kind):
    prefix = f"step{step}/{kind}/"
    return sorted(k for k in record if k.startswith(prefix))


def test_the_queue_is_warmed_up_then_ramped_in(reference, worker):
    """Guards the tests below: the later steps really score against the queue."""
    shares = [reference[f"step{s}/queue_share"].item() for s in range(worker.STEPS)]
    assert shares == [0.0, 0.0, 0.5, 1.0]


def test_the_mask_drops_entries_at_the_active_steps(reference, worker):
    """Guards the tests below: the batch shares known image ids with the queue it is scored against."""
    for step in (2, 3):
        _, batch_ids = worker.global_batch(step)
        queue_ids = reference[f"step{step - 1}/queue/ids"]
        assert ((batch_ids[:, None] == queue_ids[None, :]) & (batch_ids[:, None] >= 0)).any(), step


def test_both_ranks_hold_the_single_process_queue_after_every_step(ranks, reference, worker):
    for step in range(worker.STEPS):
        names = keys_of(reference, step, "queue")
        assert [n.rsplit("/", 1)[1] for n in names] == ["filled", "ids", "ptr", "queue_image", "queue_text"]
        for name in names:
            np.testing.assert_array_equal(ranks[0][name], ranks[1][name], err_msg=name)
            np.testing.assert_allclose(ranks[0][name], reference[name], rtol=0, atol=1e-12, err_msg=name)
    assert reference[f"step{worker.STEPS - 1}/queue/ptr"].item() == (4 * worker.STEPS) % worker.QUEUE["size"]


def test_mean_of_rank_losses_is_the_global_loss_at_every_step(ranks, reference, worker):
    for step in range(worker.STEPS):
        mean_loss = np.mean([r[f"step{step}/loss"] for r in ranks])
        np.testing.assert_allclose(mean_loss, reference[f"step{step}/loss"], rtol=1e-10, err_msg=f"step {step}")


def test_synced_gradients_are_the_global_gradients_at_every_step(ranks, reference, worker):
    for step in range(worker.STEPS):
        names = keys_of(reference, step, "grad")
        assert len(names) == 5, names  # 2 towers x (weight, bias) + temperature_b
        assert abs(reference[f"step{step}/grad/temperature_b"]) > 0.1, "the scale is pinned at a clamp bound"
        for rank in ranks:
            for name in names:
                error = relative_error(rank[name], reference[name])
                assert error < 1e-9, (name, error)


def test_the_momentum_copies_follow_the_single_process_copy(ranks, reference, worker):
    for step in range(worker.STEPS):
        for name in keys_of(reference, step, "momentum"):
            for rank in ranks:
                np.testing.assert_allclose(rank[name], reference[name], rtol=1e-10, err_msg=name)
