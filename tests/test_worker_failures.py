"""Errors cross process boundaries intact, and a failing worker never hangs its parent."""
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ernievil2.data.errors import DataError
from ernievil2.data.parallel import OrderedPool, WorkerCrashError
from ernievil2.registry import ConfigError
from tests.conftest import REPO

pytestmark = pytest.mark.timeout(120)


def project_exceptions():
    from ernievil2.checkpoint.state import CheckpointMismatchError
    from ernievil2.evaluation.retrieval import RetrievalInputError
    from ernievil2.inference.batching import QueueFullError
    from ernievil2.inference.errors import DeviceUnavailableError, ExportError, GalleryError, OptionsError
    from ernievil2.inference.service import RequestError

    return [
        DataError("data/train.tsv", 17, "bad image: cannot decode"),
        DataError("data/images", None, "missing folder"),
        ConfigError("Optimizer.lr", "must be positive", "configs/x.yaml"),
        ConfigError("Train.max_steps", "must be positive"),
        CheckpointMismatchError("missing key visual.norm_post.weight"),
        RetrievalInputError("3 texts, 2 images"),
        QueueFullError("64 waiting"),
        ExportError("export/deploy.yaml: missing"),
        GalleryError("gallery of another model"),
        OptionsError("fp16 needs TensorRT"),
        DeviceUnavailableError("no GPU"),
        RequestError(413, "too many images"),
        WorkerCrashError("a data worker process died"),
    ]


@pytest.mark.parametrize("error", project_exceptions(), ids=lambda e: type(e).__name__)
def test_every_project_exception_pickles_to_an_equal_one(error):
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error)
    assert str(back) == str(error)
    assert vars(back) == vars(error)


def _raise_data_error(payload):
    raise DataError("corpus.tsv", payload, "bad image: cannot decode")


def _die(payload):
    os.kill(os.getpid(), signal.SIGKILL)


def _square(payload):
    return payload * payload


def test_worker_exception_reaches_the_parent_intact():
    pool = OrderedPool(1)
    started = time.time()
    with pytest.raises(DataError) as info:
        list(pool.map(_raise_data_error, [("a", 3)]))
    pool.close()
    assert info.value == DataError("corpus.tsv", 3, "bad image: cannot decode")
    assert time.time() - started < 30


def test_a_killed_worker_is_an_error_not_a_hang():
    pool = OrderedPool(2)
    started = time.time()
    with pytest.raises(WorkerCrashError, match="worker process died"):
        list(pool.map(_die, [(i, i) for i in range(4)]))
    pool.close()
    assert time.time() - started < 30


def test_map_keeps_order_and_close_ends_every_worker():
    pool = OrderedPool(2)
    assert [r for _, r in pool.map(_square, [(i, i) for i in range(20)])] == [i * i for i in range(20)]
    processes = list(pool._executor._processes.values())
    assert processes
    pool.close()
    assert not any(p.is_alive() for p in processes)


def test_workers_die_with_a_killed_parent(tmp_path):
    """SIGKILL the parent mid-map: its decode workers are gone within seconds."""
    pids_file = tmp_path / "pids"
    script = textwrap.dedent(
        f"""
        import os, sys, time
        sys.path.insert(0, {str(REPO)!r})
        from ernievil2.data.parallel import OrderedPool
        from tests.test_worker_failures import _square
        pool = OrderedPool(2)
        it = pool.map(_square, ((i, i) for i in range(10**9)))
        next(it)
        open({str(pids_file)!r}, "w").write(" ".join(str(p) for p in pool._executor._processes))
        time.sleep(600)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    deadline = time.time() + 60
    while not (pids_file.exists() and pids_file.read_text()) and time.time() < deadline:
        time.sleep(0.2)
    pids = [int(p) for p in pids_file.read_text().split()]
    parent.kill()
    parent.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids), "decode workers outlived their killed parent"


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_ctrl_c_stops_training_cleanly_and_leaves_no_worker(tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it, mid-training with 2 decode workers."""
    from tests.helpers import processes_tagged, write_pairs_tsv, write_train_config

    data = write_pairs_tsv(tmp_path / "d.tsv", 40)
    config = write_train_config(tmp_path, data, Data={"num_workers": 2}, Train={"max_steps": 100000, "save_every": 0, "log_every": 1})
    tag = f"ctrl-c-{os.getpid()}-{time.time()}"
    proc = subprocess.Popen(
        [sys.executable, "tools/train.py", "-c", str(config)], cwd=REPO, start_new_session=True,
        # As a terminal starts it: a test runner started in the background (CI, nohup, `&`)
        # ignores SIGINT, the child would inherit that and Python would then never raise
        # KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, CTRL_C_TEST=tag),
    )
    log = tmp_path / "out" / "train.log"
    deadline = time.time() + 180
    while not (log.exists() and "step 3/" in log.read_text(encoding="utf-8")):
        assert proc.poll() is None, f"the trainer exited before step 3: {proc.communicate()[1][-2000:]}"
        if time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"the trainer did not reach step 3 in 180 s: {proc.communicate()[1][-2000:]}")
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"the trainer did not stop within 60 s of Ctrl-C: {proc.communicate()[1][-2000:]}")
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr, stderr
    deadline = time.time() + 10
    while time.time() < deadline and processes_tagged("CTRL_C_TEST", tag):
        time.sleep(0.2)
    assert not processes_tagged("CTRL_C_TEST", tag), "processes outlived the interrupted run"

