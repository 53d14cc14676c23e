"""The edge's side of the pull interface: a bounded job queue, single-flight waiting and the result cache.

Workers never get pushed work: they call `pull()` for the next job and `complete()` with its output.
The in-process worker of `pe serve` calls these methods directly; remote workers will call them
through HTTP routes, without the run routes changing.
"""

from __future__ import annotations

import asyncio

from api.errors import ApiError
from api.metrics import Metrics
from api.runs import RunStore
from wire.result import RunOutput
from worker.runner import Job

RETRY_AFTER_S = 2


class Dispatcher:
    def __init__(self, store: RunStore, metrics: Metrics, queue_size: int) -> None:
        self.store = store
        self.metrics = metrics
        self._queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=queue_size)
        self._waiting: dict[str, asyncio.Future[RunOutput]] = {}

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    async def run(self, job: Job, *, use_cache: bool) -> tuple[RunOutput, bool]:
        """The output of `job` and whether it came from the cache.

        Identical requests that arrive while the job is queued or running wait for the same result.
        """
        if use_cache:
            cached = self.store.get(job.id)
            if cached is not None:
                self.metrics.cache_hits.inc()
                return cached, True
        future = self._waiting.get(job.id)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            try:
                self._queue.put_nowait(job)
            except asyncio.QueueFull:
                raise ApiError(
                    503,
                    "queue_full",
                    "too many runs are waiting; try again shortly",
                    {"Retry-After": str(RETRY_AFTER_S)},
                ) from None
            self._waiting[job.id] = future
        # A client that goes away must not cancel the run that other clients wait for.
        return await asyncio.shield(future), False

    async def pull(self) -> Job:
        return await self._queue.get()

    async def complete(self, job: Job, output: RunOutput) -> None:
        self.store.put(job.id, output)
        self.metrics.executions.inc(runner=output.result.runner, status=str(output.result.status))
        future = self._waiting.pop(job.id, None)
        if future is not None and not future.done():
            future.set_result(output)
