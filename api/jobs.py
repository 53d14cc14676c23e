"""The edge's side of the pull interface: what the run routes and the workers ask of the state.

Workers never get pushed work: they call `pull()` for a leased job, `extend()` while it runs and
`complete()` with its output. The in-process worker of `pe serve` calls these methods directly; remote
workers will call them through HTTP routes, without the run routes changing. Queue, leases,
single-flight and cache live in the state (api/state: this process's memory, or Redis shared by edges);
the dispatcher adds this edge's metrics.
"""

from __future__ import annotations

import asyncio

from api.metrics import Metrics
from api.state import DEFAULT_CLIENT, State
from wire.result import RunOutput
from worker.pull import Lease
from worker.runner import Job


class Dispatcher:
    def __init__(self, state: State, metrics: Metrics) -> None:
        self.state = state
        self.metrics = metrics

    @property
    def depth(self) -> int:
        return self.state.depth

    async def stored(self, run_id: str) -> RunOutput | None:
        """The cached output of `run_id`, if the cache still holds it."""
        return await self.state.stored(run_id)

    async def run(self, job: Job, *, use_cache: bool, client: str = DEFAULT_CLIENT) -> tuple[RunOutput, bool]:
        """The output of `job` and whether it came from the cache.

        Identical requests that arrive while the job is queued or running wait for the same result.
        `client` names the sub-queue the job waits in (the queue serves clients in turn); ApiError 503
        `queue_full` or 429 `client_queue_full` when a bound is reached.
        """
        if use_cache:
            cached = await self.state.stored(job.id)
            if cached is not None:
                self.metrics.cache_hits.inc()
                return cached, True
        future = await self.state.submit(job, client=client, use_cache=use_cache)
        # A client that goes away must not cancel the run that other clients wait for.
        return await asyncio.shield(future), False

    async def pull(self) -> Lease:
        return await self.state.pull()

    async def extend(self, lease: Lease) -> bool:
        return await self.state.extend(lease)

    async def complete(self, lease: Lease, output: RunOutput) -> bool:
        self.metrics.executions.inc(runner=output.result.runner, status=str(output.result.status))
        return await self.state.complete(lease, output)
