"""Two CPU processes (gloo) prove the gathered loss equals the global-batch loss.

Launches ``tests/dist/dist_loss_check.py`` with ``paddle.distributed.launch``
and compares what each rank wrote against the single-process reference.
"""

import numpy as np

from tests.dist.launcher import REPO, cpu_launcher_only, module_fixtures, relative_error

WORKER = REPO / "tests" / "dist" / "dist_loss_check.py"

pytestmark = cpu_launcher_only

worker, ranks, reference = module_fixtures(WORKER)


def param_names(reference):
    return sorted(k.split("/", 2)[2] for k in reference if k.startswith("global/param/"))


def test_mean_of_rank_losses_is_the_global_loss(ranks, reference):
    mean_loss = np.mean([r["exact/loss"] for r in ranks])
    np.testing.assert_allclose(mean_loss, reference["global/loss"], rtol=0, atol=1e-6)


def test_synced_parameter_gradients_are_the_global_gradients(ranks, reference):
    names = param_names(reference)
    assert len(names) == 5, names  # 2 towers x (weight, bias) + temperature_b
    for rank in ranks:
        for name in names:
            error = relative_error(rank[f"exact/param/{name}"], reference[f"global/param/{name}"])
            assert error < 1e-6, (name, error)


def test_each_rank_holds_world_size_times_its_slice_of_the_input_gradient(ranks, reference, worker):
    # Rank r's rows receive the gradient of every rank's loss (the all-reduce
    # sum), i.e. of R times the global mean; DataParallel's average undoes the R.
    for rank_index, rank in enumerate(ranks):
        rows = slice(rank_index * worker.LOCAL_BATCH, (rank_index + 1) * worker.LOCAL_BATCH)
        for view in worker.VIEW_TOWER:
            expected = worker.WORLD_SIZE * reference[f"global/input/{view}"][rows]
            error = relative_error(rank[f"exact/input/{view}"], expected)
            assert error < 1e-6, (rank_index, view, error)


def test_naive_all_gather_gives_the_same_loss_but_wrong_tower_gradients(ranks, reference):
    """Without the gradient-carrying gather the towers miss the other ranks' terms."""
    for rank in ranks:
        np.testing.assert_allclose(rank["naive/loss"], rank["exact/loss"], rtol=1e-12)
    for name in param_names(reference):
        error = max(
            relative_error(rank[f"naive/param/{name}"], reference[f"global/param/{name}"]) for rank in ranks
        )
        if name == "temperature_b":
            # Used directly, not through the gather: DataParallel's mean is already right.
            assert error < 1e-6, (name, error)
        else:
            assert error > 1e-2, (name, error)
