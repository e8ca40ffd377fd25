"""Rank 0 working alone (evaluation, checkpoint writes) while the other ranks wait, with no time limit.

The waiting ranks do not enter a collective: gloo gives up on one after a fixed
30 s (``PADDLE_PG_TIMEOUT`` does not reach it), which a real validation set or a
slow file system outlasts. They poll a counter on the job's TCP store instead;
a read that returns at once cannot time out. If rank 0 dies meanwhile, the
launcher ends the job as it does for any failed rank.
"""
import time

POLL_SECONDS = 0.2


class RankZeroGate:
    """``gate.alone(work)``: ``work()`` on rank 0, the others waiting for it; every rank calls it in the same order."""

    def __init__(self, rank, world_size, store=None, poll_seconds=POLL_SECONDS):
        self.rank, self.world_size, self.poll_seconds = rank, world_size, poll_seconds
        self._store = store
        self._count = 0

    @property
    def store(self):
        if self._store is None:
            from paddle.base import core

            # The store the launcher's ranks met through (paddle.distributed.init_parallel_env made it).
            self._store = core.create_or_get_global_tcp_store()
        return self._store

    def alone(self, work):
        """``work()``'s result on rank 0, None on the others (after rank 0 has finished)."""
        self._count += 1
        key = f"ernievil2/rank0_done/{self._count}"
        if self.rank == 0:
            result = work()
            if self.world_size > 1:
                self.store.add(key, 1)
            return result
        while self.store.add(key, 0) < 1:
            time.sleep(self.poll_seconds)
        return None
