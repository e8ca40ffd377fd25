"""Run a script under ``paddle.distributed.launch`` on CPU (gloo), as the distributed tests do."""
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import paddle
import pytest

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_SECONDS = 240

# The launcher hands out GPUs on a CUDA build; these tests check the CPU/gloo path.
cpu_launcher_only = pytest.mark.skipif(
    paddle.device.is_compiled_with_cuda(),
    reason="checks the CPU/gloo path; on a CUDA build the launcher assigns GPUs",
)


def launcher_env():
    # Unset rather than empty: paddle 3.3.1's launcher takes CUDA_VISIBLE_DEVICES=""
    # for one GPU named "" and fails to place 2 processes; without it a CPU build
    # finds no device and starts the workers with the gloo backend.
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(script, args, log_dir, nproc, nnodes=1, master=None):
    command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(nproc), "--log_dir", str(log_dir)]
    if nnodes > 1:
        command += ["--master", master, "--nnodes", str(nnodes)]
    return command + [str(script)] + [str(a) for a in args]


def _start(command, cwd):
    # A session of its own, so a hung job can be killed with all its workers.
    return subprocess.Popen(
        command, cwd=cwd, env=launcher_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )


def _finish(process, deadline):
    try:
        output, _ = process.communicate(timeout=max(1, deadline - time.time()))
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        output += "\n[killed: timed out]"
    return process.returncode, output


def _worker_logs(log_dir):
    return "".join(
        f"\n===== {path} =====\n{path.read_text(errors='replace')}" for path in sorted(Path(log_dir).glob("workerlog.*"))
    )


# A launch whose rank segfaulted at start is tried again, up to this many launches in all.
START_ATTEMPTS = 3


def crashed_at_start(code, logs, out_dir):
    """A rank died of SIGSEGV before any rank wrote a result: inside Paddle right after the gloo
    store connects, in a few full-suite runs on a 2-core machine (twice in a row once), never when
    the test ran alone. Worth another launch; a crash on every launch fails."""
    return code != 0 and " code -11 " in logs and not any(Path(out_dir).iterdir())


def launched_ranks(script, workdir, world_size):
    """Run ``script OUT`` on ``world_size`` processes; each rank's ``OUT/rank{r}.npz`` as a dict."""
    out_dir = Path(workdir) / "out"
    out_dir.mkdir()
    code, logs = launch(script, [out_dir], workdir, nproc=world_size)
    for attempt in range(2, START_ATTEMPTS + 1):
        if not crashed_at_start(code, logs, out_dir):
            break
        earlier, again = logs, Path(workdir) / f"launch{attempt}"
        again.mkdir()
        code, logs = launch(script, [out_dir], again, nproc=world_size)
        logs = f"{logs}\n===== launch {attempt - 1}, which crashed at start =====\n{earlier}"
    assert code == 0, f"launcher exited with {code}\n{logs}"
    results = [dict(np.load(out_dir / f"rank{r}.npz")) for r in range(world_size)]
    assert [int(r["world_size"]) for r in results] == [world_size] * world_size, logs
    return results


def launch(script, args, workdir, nproc=2, timeout=TIMEOUT_SECONDS):
    """One launcher with ``nproc`` local processes; returns (exit code, everything printed and logged)."""
    log_dir = Path(workdir) / "log"
    command = _command(script, args, log_dir, nproc)
    code, output = _finish(_start(command, workdir), time.time() + timeout)
    return code, f"$ {' '.join(command)}\n{output}{_worker_logs(log_dir)}"


def launch_nodes(script, args, workdir, nnodes=2, timeout=TIMEOUT_SECONDS):
    """``nnodes`` launchers side by side on loopback, one process each, forming one job.

    Each runs in its own folder (each launcher writes ``log/`` there), as two
    machines would; returns (exit codes, everything printed and logged).
    """
    master = f"127.0.0.1:{free_port()}"
    started, report = [], ""
    for node in range(nnodes):
        folder = Path(workdir) / f"node{node}"
        folder.mkdir(parents=True, exist_ok=True)
        command = _command(script, args, folder / "log", 1, nnodes, master)
        started.append((folder, command, _start(command, folder)))
    deadline = time.time() + timeout
    codes = []
    for folder, command, process in started:
        code, output = _finish(process, deadline)
        codes.append(code)
        report += f"\n$ (in {folder}) {' '.join(command)}\n{output}{_worker_logs(folder / 'log')}"
    return codes, report


def relative_error(value, expected):
    """How the distributed tests compare a rank's array with the single-process one."""
    return np.linalg.norm(value - expected) / np.linalg.norm(expected)


def module_fixtures(script):
    """The ``worker``, ``ranks`` and ``reference`` fixtures of a test module that checks ``script``.

    ``script`` is launched once per module on its ``WORLD_SIZE`` processes;
    ``reference`` is its ``single_process_reference()`` in this process.
    Unpack the result at module level so pytest finds the three names.
    """

    @pytest.fixture(scope="module")
    def worker():
        return load_module(script)

    @pytest.fixture(scope="module")
    def ranks(tmp_path_factory, worker):
        return launched_ranks(script, tmp_path_factory.mktemp(Path(script).stem), worker.WORLD_SIZE)

    @pytest.fixture(scope="module")
    def reference(worker):
        return worker.single_process_reference()

    return worker, ranks, reference


def load_module(path):
    """Import a worker script as a module, so the test can reuse its reference code."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
