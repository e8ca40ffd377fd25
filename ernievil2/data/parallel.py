"""Ordered, bounded parallel map over worker processes (image decoding and augmentation).

Failure rules, and why they hold:
- a worker's exception is re-raised in the parent, intact: every project
  exception pickles to an equal one (tests/test_errors_pickle.py);
- a worker that dies (a crash, the OOM killer) breaks the pool and surfaces
  as :class:`WorkerCrashError` at the next result, never as a wait without end:
  ``concurrent.futures`` notices a vanished process, ``multiprocessing.Pool``
  silently replaces it and loses its task;
- :meth:`OrderedPool.close` always returns: workers get ``SHUTDOWN_SECONDS`` to
  exit, then are killed; and a worker whose parent dies (even by SIGKILL) is
  killed by the kernel, so no decoder outlives its trainer.
"""
import collections
import concurrent.futures
import ctypes
import multiprocessing
import multiprocessing.connection
import signal
import sys
import time

SHUTDOWN_SECONDS = 5.0
PR_SET_PDEATHSIG = 1


class WorkerCrashError(RuntimeError):
    """A worker process died (killed, out of memory, or crashed) while the parent waited for it."""


def _die_with_parent():
    """Ask Linux to SIGKILL this process when its parent exits (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _start_worker(initializer, initargs):
    _die_with_parent()
    # Ctrl-C reaches the whole process group: the parent handles it and stops the
    # workers, which would otherwise each die printing a KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer(*initargs)


class OrderedPool:
    """``map`` that keeps input order and at most ``prefetch`` tasks per worker in flight.

    ``workers=0`` runs in the calling process. Workers are spawned, not forked:
    the parent holds Paddle's threads and state.
    """

    def __init__(self, workers=0, initializer=None, initargs=(), prefetch=2):
        if not isinstance(workers, int) or workers < 0:
            raise ValueError(f"workers must be a non-negative integer, got {workers!r}")
        self.workers = workers
        self.prefetch = max(1, prefetch)
        self.initializer, self.initargs = initializer, initargs
        self._executor = None
        self._local_ready = False

    def _result(self, future):
        try:
            return future.result()
        except concurrent.futures.process.BrokenProcessPool as err:
            self.close()
            raise WorkerCrashError(
                f"a data worker process died ({err}); the likeliest causes are the out-of-memory killer "
                "(lower Data.num_workers or the batch size) or a crash in an image library"
            ) from None

    def map(self, fn, items):
        """Yield ``(item, fn(payload))`` for each ``(item, payload)`` of ``items``, in order."""
        if self.workers == 0:
            if not self._local_ready and self.initializer is not None:
                self.initializer(*self.initargs)
            self._local_ready = True
            for item, payload in items:
                yield item, fn(payload)
            return
        if self._executor is None:
            self._executor = concurrent.futures.ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=(self.initializer, self.initargs),
            )
        pending = collections.deque()
        try:
            for item, payload in items:
                pending.append((item, self._executor.submit(fn, payload)))
                if len(pending) > self.prefetch * self.workers:
                    done, future = pending.popleft()
                    yield done, self._result(future)
            while pending:
                done, future = pending.popleft()
                yield done, self._result(future)
        finally:
            for _, future in pending:
                future.cancel()

    def close(self):
        """Stop the workers: a bounded wait for them to exit, then kill what is left."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        processes = list((getattr(executor, "_processes", None) or {}).values())
        manager = getattr(executor, "_executor_manager_thread", None)
        executor.shutdown(wait=False, cancel_futures=True)
        # Wait on the sentinels, not with Process.join: the executor's manager thread
        # reaps these same processes, and two threads calling waitpid on one child
        # race (the loser sees ECHILD and reports a dead process as alive).
        waiting = {process.sentinel: process for process in processes}
        deadline = time.monotonic() + SHUTDOWN_SECONDS
        while waiting and time.monotonic() < deadline:
            for sentinel in multiprocessing.connection.wait(list(waiting), deadline - time.monotonic()):
                del waiting[sentinel]
        for process in waiting.values():
            process.kill()
        if manager is not None:
            manager.join(SHUTDOWN_SECONDS)
        for process in processes:
            process.join(SHUTDOWN_SECONDS)
