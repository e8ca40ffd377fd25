"""Ordered, bounded parallel map over worker processes (image decoding and augmentation)."""
import collections
import multiprocessing


class OrderedPool:
    """``map`` that keeps input order and at most ``prefetch`` tasks per worker in flight.

    ``multiprocessing.Pool.imap`` would read an infinite input ahead without
    bound; this submits lazily. ``workers=0`` runs in the calling process.
    Workers are spawned, not forked: the parent holds Paddle's threads and state.
    """

    def __init__(self, workers=0, initializer=None, initargs=(), prefetch=2):
        self.workers = workers
        self.prefetch = max(1, prefetch)
        self.initializer, self.initargs = initializer, initargs
        self._pool = None
        self._local_ready = False

    def map(self, fn, items):
        """Yield ``(item, fn(payload))`` for each ``(item, payload)`` of ``items``, in order."""
        if self.workers == 0:
            if not self._local_ready and self.initializer is not None:
                self.initializer(*self.initargs)
            self._local_ready = True
            for item, payload in items:
                yield item, fn(payload)
            return
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._pool = context.Pool(self.workers, initializer=self.initializer, initargs=self.initargs)
        pending = collections.deque()
        for item, payload in items:
            pending.append((item, self._pool.apply_async(fn, (payload,))))
            if len(pending) > self.prefetch * self.workers:
                done, result = pending.popleft()
                yield done, result.get()
        while pending:
            done, result = pending.popleft()
            yield done, result.get()

    def close(self):
        # close + join rather than terminate: a SIGTERM makes Paddle (imported
        # by the spawned workers through the main module) print a crash report.
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None
