"""Two CPU processes (gloo) prove the distill term's similarity mode equals the global-batch loss and gradients.

Launches ``tests/dist/dist_distill_check.py``: the student's rows are gathered with gradient, the
teacher's without, and the similarity matrices are over the global batch.
"""
import numpy as np

from tests.dist.dist_loss_check import LOCAL_BATCH
from tests.dist.launcher import REPO, cpu_launcher_only, module_fixtures, relative_error

WORKER = REPO / "tests" / "dist" / "dist_distill_check.py"

pytestmark = cpu_launcher_only

worker, ranks, reference = module_fixtures(WORKER)


def test_mean_of_rank_losses_is_the_global_loss(ranks, reference):
    assert reference["distill"] > 1e-3  # the teacher differs from the student: a loss to get right
    for key in ("loss", "distill"):
        np.testing.assert_allclose(np.mean([r[key] for r in ranks]), reference[key], rtol=1e-12, err_msg=key)


def test_tower_gradients_after_data_parallel_are_the_global_gradients(ranks, reference):
    names = sorted(k for k in reference if k.startswith("param/"))
    assert len(names) == 5, names  # 2 towers x (weight, bias) + the student's temperature
    for rank in ranks:
        for name in names:
            assert relative_error(rank[name], reference[name]) < 1e-9, name


def test_each_rank_holds_world_size_times_its_slice_of_the_input_gradient(ranks, reference, worker):
    for index, rank in enumerate(ranks):
        rows = slice(index * LOCAL_BATCH, (index + 1) * LOCAL_BATCH)
        for view in worker.VIEWS:
            expected = worker.WORLD_SIZE * reference[f"input/{view}"][rows]
            assert relative_error(rank[f"input/{view}"], expected) < 1e-9, view
