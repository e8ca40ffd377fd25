"""Dynamic batching: concurrent requests share one model call.

Each request submits its items to a :class:`DynamicBatcher`. A worker task
waits for a first item; when others are queued with it, it keeps collecting for
up to ``max_wait_ms`` or until ``max_batch_size`` items are in hand (a lone item
is not held back), then runs the whole batch in one call on
an executor thread (the event loop keeps accepting requests meanwhile) and
hands every submitter its own row of the result. While a batch runs, new items
queue up and form the next batch, so batches grow with load by themselves.
"""
import asyncio
import collections
import dataclasses


class QueueFullError(RuntimeError):
    """More items are waiting than the batcher accepts; the caller should retry later."""


@dataclasses.dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    largest: int = 0
    sizes: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def record(self, size):
        self.batches += 1
        self.items += size
        self.largest = max(self.largest, size)
        self.sizes[size] += 1

    def as_dict(self):
        return {
            "batches": self.batches,
            "items": self.items,
            "largest": self.largest,
            "sizes": {str(k): v for k, v in sorted(self.sizes.items())},
        }


class DynamicBatcher:
    """``await batcher.submit(item)`` -> ``run_batch(items)[i]`` for that item.

    ``run_batch`` takes a list of items and returns a sequence of results of
    the same length; it runs on ``executor`` (``None``: asyncio's default).
    If it raises, every item of that batch gets the exception.
    """

    def __init__(self, run_batch, max_batch_size=32, max_wait_ms=5.0, max_queue=1024, executor=None):
        if max_batch_size < 1 or max_wait_ms < 0 or max_queue < 1:
            raise ValueError("need max_batch_size >= 1, max_wait_ms >= 0 and max_queue >= 1")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.executor = executor
        self.stats = BatchStats()
        self._queue = None
        self._worker = None

    def start(self):
        """Start the worker on the running event loop."""
        if self._worker is not None:
            raise RuntimeError("batcher already started")
        self._queue = asyncio.Queue(self.max_queue)
        self._worker = asyncio.get_running_loop().create_task(self._work())

    async def stop(self):
        if self._worker is None:
            return
        self._worker.cancel()
        try:
            await self._worker
        except asyncio.CancelledError:
            pass
        self._worker = None

    async def submit(self, item):
        if self._worker is None:
            raise RuntimeError("batcher not started")
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((item, future))
        except asyncio.QueueFull:
            raise QueueFullError(f"{self.max_queue} items already waiting") from None
        return await future

    async def _collect(self):
        """The next batch: a first item, the items already queued behind it, and more up to the deadline.

        A lone item goes at once: nobody else is waiting, and the window would only add to
        its latency (5 ms by default, as much as the demo model's whole answer). Items queued
        together show concurrent clients, whose next requests are worth waiting for.
        """
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch_size and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        while 1 < len(batch) < self.max_batch_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        # Submitters that went away (client disconnected) need no answer.
        return [(item, future) for item, future in batch if not future.cancelled()]

    async def _work(self):
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            items = [item for item, _ in batch]
            self.stats.record(len(items))
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch, items)
                if len(results) != len(items):
                    raise RuntimeError(f"run_batch returned {len(results)} results for {len(items)} items")
            except Exception as err:  # every waiting request must learn that its batch failed
                for _, future in batch:
                    if not future.done():
                        future.set_exception(err)
                continue
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)
