"""CPU processes (gloo) prove the sigmoid term's ring equals the global-batch SigLIP loss and gradients.

Launches ``tests/dist/dist_sigmoid_check.py``. With 2 ranks "next" and
"previous" are the same rank, so a gradient sent the wrong way round would go
unnoticed; 3 ranks tell the directions apart.
"""
import numpy as np
import pytest

from tests.dist.launcher import REPO, cpu_launcher_only, launched_ranks, load_module, relative_error

WORKER = REPO / "tests" / "dist" / "dist_sigmoid_check.py"

pytestmark = cpu_launcher_only


@pytest.fixture(scope="module")
def worker():
    return load_module(WORKER)


@pytest.fixture(scope="module", params=[2, 3])
def run(request, tmp_path_factory, worker):
    world_size = request.param
    ranks = launched_ranks(WORKER, tmp_path_factory.mktemp(f"dist_sigmoid{world_size}"), world_size)
    return world_size, ranks, worker.single_process_reference(world_size)


def test_mean_of_rank_losses_is_the_global_loss(run):
    _, ranks, reference = run
    np.testing.assert_allclose(np.mean([r["loss"] for r in ranks]), reference["loss"], rtol=1e-12)


def test_tower_gradients_after_data_parallel_are_the_global_gradients(run):
    _, ranks, reference = run
    names = sorted(k for k in reference if k.startswith("param/"))
    assert len(names) == 4, names  # 2 towers x (weight, bias); the temperature is unused
    for rank in ranks:
        for name in names:
            assert relative_error(rank[name], reference[name]) < 1e-9, name


def test_each_rank_holds_world_size_times_its_slice_of_the_input_gradient(run, worker):
    # The contract of gather_with_grad: the ring hands every rank's loss gradient back to the owner.
    world_size, ranks, reference = run
    views = sorted(k for k in reference if k.startswith("input/"))
    assert views == ["input/image_v1", "input/image_v2", "input/text_v1", "input/text_v2"]
    for index, rank in enumerate(ranks):
        rows = slice(index * worker.LOCAL_BATCH, (index + 1) * worker.LOCAL_BATCH)
        for view in views:
            error = relative_error(rank[view], world_size * reference[view][rows])
            assert error < 1e-9, (index, view, error)


def test_scale_and_bias_gradients_averaged_over_ranks_are_the_global_ones(run):
    _, ranks, reference = run
    for name in ("term/bias", "term/logit_scale_b"):
        for rank in ranks:
            # float32 parameters: the rank means and the global sum round differently.
            np.testing.assert_allclose(rank[name], reference[name], rtol=1e-5, err_msg=name)
