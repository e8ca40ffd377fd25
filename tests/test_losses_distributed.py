"""Two CPU processes (gloo) prove the gathered loss equals the global-batch loss.

Launches ``tests/dist/dist_loss_check.py`` with ``paddle.distributed.launch``
and compares what each rank wrote against the single-process reference.
"""

import numpy as np
import pytest

from tests.dist.launcher import cpu_launcher_only, REPO, load_module, rank_results

WORKER = REPO / "tests" / "dist" / "dist_loss_check.py"
WORLD_SIZE = 2

pytestmark = cpu_launcher_only


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return rank_results(WORKER, tmp_path_factory.mktemp("dist_loss"), WORLD_SIZE)


@pytest.fixture(scope="module")
def worker():
    return load_module(WORKER)


@pytest.fixture(scope="module")
def reference(worker):
    return worker.single_process_reference(WORLD_SIZE)


def relative_error(value, reference):
    return np.linalg.norm(value - reference) / np.linalg.norm(reference)


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
            expected = WORLD_SIZE * reference[f"global/input/{view}"][rows]
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
