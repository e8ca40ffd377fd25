"""The trainer on several processes equals one process on the global batch.

- the trainer's steps (plain DataParallel, GradCache accumulation, and image views
  split into one tower call per patch keep ratio) on 2 CPU processes give the
  single-process loss and parameter gradients;
- ``tools/train.py`` under two launchers on loopback (``--nnodes 2``, the
  multi-node command) reaches the same weights as one launcher with 2 processes.
"""
import os

import numpy as np
import paddle
import pytest
import yaml

from tests.dist.launcher import REPO, cpu_launcher_only, crashed_at_start, launch, launch_nodes, load_module
from tests.helpers import write_pairs_tsv, write_train_config

WORKER = REPO / "tests" / "dist" / "dist_train_check.py"
TRAIN = REPO / "tools" / "train.py"

pytestmark = cpu_launcher_only


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("dist_train")
    out = workdir / "out"
    out.mkdir()
    code, logs = launch(WORKER, [out], workdir)
    assert code == 0, logs
    return [dict(np.load(out / f"rank{r}.npz")) for r in range(2)]


@pytest.fixture(scope="module")
def reference():
    try:
        return load_module(WORKER).single_process_reference()
    finally:
        paddle.set_default_dtype("float32")


@pytest.mark.parametrize("mode", ["plain", "accumulated", "split"])
def test_two_ranks_give_the_global_loss_and_gradients(ranks, reference, mode):
    loss, grads = reference
    assert np.mean([r[f"{mode}/loss"] for r in ranks]) == pytest.approx(loss, rel=1e-12)
    assert len(grads) > 20
    # The floor: the key bias's gradient is zero in exact arithmetic (softmax ignores a
    # shift shared by all keys), so only rounding noise is left there; it is measured
    # against the gradients' overall scale, which the initialisation sets.
    floor = 1e-6 * np.sqrt(sum(np.linalg.norm(g) ** 2 for g in grads.values()))
    for rank in ranks:
        for name, expected in grads.items():
            # (a gather without gradient is off by 1e-2 and more, see test_losses_distributed).
            error = np.linalg.norm(rank[f"{mode}/grad/{name}"] - expected) / max(np.linalg.norm(expected), floor)
            assert error < 1e-9, (mode, name, error)


def test_multi_node_launch_reaches_the_same_weights_as_one_node(tmp_path):
    data = write_pairs_tsv(tmp_path / "train.tsv", 32, seed=4)
    results = {}
    for layout in ("one_node", "two_nodes"):
        folder = tmp_path / layout
        folder.mkdir()
        config = write_train_config(folder, data, Train={"max_steps": 3, "save_every": 0, "batch_size": 4})
        if layout == "one_node":
            code, logs = launch(TRAIN, ["-c", config], folder)
            assert code == 0, logs
        else:
            codes, logs = launch_nodes(TRAIN, ["-c", config], folder)
            assert codes == [0, 0], logs
        out = yaml.safe_load(config.read_text(encoding="utf-8"))["Global"]["output_dir"]
        assert "rank 0 of 2" in open(os.path.join(out, "train.log"), encoding="utf-8").read()
        results[layout] = paddle.load(os.path.join(out, "checkpoints", "step_000003", "model.pdparams"))
    for key, value in results["one_node"].items():
        np.testing.assert_allclose(results["two_nodes"][key].numpy(), value.numpy(), rtol=1e-5, atol=1e-7, err_msg=key)


def test_a_long_evaluation_and_checkpoint_write_on_rank_0_do_not_time_out_the_others(tmp_path):
    data = write_pairs_tsv(tmp_path / "train.tsv", 16, seed=5)
    config = write_train_config(
        tmp_path, data, {"format": "official_tsv", "path": str(data)},
        Train={"max_steps": 2, "batch_size": 4, "save_every": 1, "eval_every": 1}, Eval={"batch_size": 4},
    )
    code, logs = launch(REPO / "tests" / "dist" / "slow_rank0_train.py", ["-c", config], tmp_path)
    assert code == 0, logs
    assert "TIMEOUT" not in logs
    history = (tmp_path / "out" / "eval_history.jsonl").read_text(encoding="utf-8").splitlines()
    assert [yaml.safe_load(line)["step"] for line in history] == [1, 2]
    assert sorted(os.listdir(tmp_path / "out" / "checkpoints")) == ["latest", "step_000001", "step_000002"]


def test_only_a_segfault_before_any_result_earns_a_second_launch(tmp_path):
    crash = "Container rank 0 status failed cmd [...] code -11 log /tmp/log/workerlog.0"
    assert crashed_at_start(245, crash, tmp_path)
    assert not crashed_at_start(0, crash, tmp_path)
    assert not crashed_at_start(1, "Container rank 1 status failed cmd [...] code 1 log ...", tmp_path)
    (tmp_path / "rank0.npz").write_bytes(b"")  # a rank got as far as its result: the crash is the test's
    assert not crashed_at_start(245, crash, tmp_path)
