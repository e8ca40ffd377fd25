"""Two CPU processes (gloo) prove the gathered loss equals the global-batch loss.

Launches ``tests/dist/dist_loss_check.py`` with ``paddle.distributed.launch``
and compares what each rank wrote against the single-process reference.
"""
import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "dist" / "dist_loss_check.py"
WORLD_SIZE = 2
TIMEOUT_SECONDS = 120

pytestmark = pytest.mark.skipif(
    paddle.device.is_compiled_with_cuda(),
    reason="checks the CPU/gloo path; on a CUDA build the launcher assigns GPUs",
)


def load_worker():
    spec = importlib.util.spec_from_file_location("dist_loss_check", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def launch(tmp_path):
    """Run the worker on 2 processes; return (exit code, launcher output + worker logs)."""
    out_dir, log_dir = tmp_path / "out", tmp_path / "log"
    out_dir.mkdir()
    # Unset rather than empty: paddle 3.3.1's launcher takes CUDA_VISIBLE_DEVICES=""
    # for one GPU named "" and fails to place 2 processes; without it a CPU build
    # finds no device and starts the workers with the gloo backend.
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    command = [
        sys.executable, "-m", "paddle.distributed.launch",
        "--nproc_per_node", str(WORLD_SIZE), "--log_dir", str(log_dir),
        str(WORKER), str(out_dir),
    ]
    # A session of its own, so a hung job can be killed with all its workers.
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        output += f"\n[killed after {TIMEOUT_SECONDS} s]"
    logs = "".join(
        f"\n===== {path.name} =====\n{path.read_text(errors='replace')}"
        for path in sorted(log_dir.glob("workerlog.*"))
    )
    return process.returncode, f"$ {' '.join(command)}\n{output}{logs}", out_dir


def relative_error(value, reference):
    return np.linalg.norm(value - reference) / np.linalg.norm(reference)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    code, logs, out_dir = launch(tmp_path_factory.mktemp("dist_loss"))
    assert code == 0, f"launcher exited with {code}\n{logs}"
    results = [dict(np.load(out_dir / f"rank{r}.npz")) for r in range(WORLD_SIZE)]
    assert [int(r["world_size"]) for r in results] == [WORLD_SIZE] * WORLD_SIZE, logs
    return results


@pytest.fixture(scope="module")
def worker():
    return load_worker()


@pytest.fixture(scope="module")
def reference(worker):
    return worker.single_process_reference(WORLD_SIZE)


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
