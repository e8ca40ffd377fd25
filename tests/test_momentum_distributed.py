"""Two CPU processes (gloo) train with the momentum queue as one process does on the global batch.

Launches ``tests/dist/dist_momentum_check.py`` with ``paddle.distributed.launch``
and compares what each rank recorded, step by step, against the worker's
``run`` on the whole global batch in this process: identical queues on both
ranks, the mean rank loss, the synced gradients and the EMA copies.
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
WORKER = REPO / "tests" / "dist" / "dist_momentum_check.py"
TIMEOUT_SECONDS = 120

pytestmark = pytest.mark.skipif(
    paddle.device.is_compiled_with_cuda(),
    reason="checks the CPU/gloo path; on a CUDA build the launcher assigns GPUs",
)


def load_worker():
    spec = importlib.util.spec_from_file_location("dist_momentum_check", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def launch(tmp_path, world_size):
    """Run the worker on ``world_size`` processes; return (exit code, output and worker logs, out dir)."""
    out_dir, log_dir = tmp_path / "out", tmp_path / "log"
    out_dir.mkdir()
    # Unset, not empty: paddle 3.3.1's launcher reads "" as one GPU (see test_losses_distributed.py).
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    command = [
        sys.executable, "-m", "paddle.distributed.launch",
        "--nproc_per_node", str(world_size), "--log_dir", str(log_dir),
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


@pytest.fixture(scope="module")
def worker():
    return load_worker()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, worker):
    code, logs, out_dir = launch(tmp_path_factory.mktemp("dist_momentum"), worker.WORLD_SIZE)
    assert code == 0, f"launcher exited with {code}\n{logs}"
    results = [dict(np.load(out_dir / f"rank{r}.npz")) for r in range(worker.WORLD_SIZE)]
    assert [int(r["world_size"]) for r in results] == [worker.WORLD_SIZE] * worker.WORLD_SIZE, logs
    return results


@pytest.fixture(scope="module")
def reference(worker):
    return worker.single_process_reference()


def keys_of(record, step, kind):
    prefix = f"step{step}/{kind}/"
    return sorted(k for k in record if k.startswith(prefix))


def relative_error(value, expected):
    return np.linalg.norm(value - expected) / np.linalg.norm(expected)


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
