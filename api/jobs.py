"""The edge's side of the pull interface: what the run routes and the workers ask of the state.

Workers never get pushed work: they call `pull()` for a leased job, `extend()` while it runs and
`complete()` with its output. The in-process worker of `pe serve` calls these methods directly; remote
workers (`pe worker`) call `offer()`, `extend_lease()` and `complete_lease()` through the routes of
api/work.py, and the worker registry (api/workers.py) keeps the live view of them. Queue, leases,
single-flight and cache live in the state (api/state: this process's memory, or Redis shared by edges);
the dispatcher adds this edge's metrics.
"""

from __future__ import annotations

import asyncio
import contextlib

from api.metrics import Metrics
from api.state import DEFAULT_CLIENT, State
from api.state.base import Offer, Progress
from api.workers import IN_PROCESS, WorkerRegistry, WorkerReport, no_workers
from wire.result import RunOutput
from worker.pull import Lease
from worker.runner import Job

NO_WORKERS_CHECK_S = 2.0  # how often a waiting run checks that a worker could still run it


class Dispatcher:
    def __init__(self, state: State, metrics: Metrics, workers: WorkerRegistry | None = None) -> None:
        self.state = state
        self.metrics = metrics
        self.workers = workers or WorkerRegistry(state)

    @property
    def depth(self) -> int:
        return self.state.depth

    async def stored(self, run_id: str) -> RunOutput | None:
        """The cached output of `run_id`, if the cache still holds it."""
        return await self.state.stored(run_id)

    async def submit(
        self, job: Job, *, use_cache: bool, client: str = DEFAULT_CLIENT
    ) -> asyncio.Future[RunOutput]:
        """Queue `job` (or join its flight; with `use_cache`, a run the cache holds is a future already
        done) without waiting for it. The route looks the cache up first.

        Identical requests that arrive while the job is queued or running wait for the same result.
        `client` names the sub-queue the job waits in (the queue serves clients in turn); ApiError 503
        `queue_full` or 429 `client_queue_full` when a bound is reached. 503 `no_workers` when no
        connected worker runs the job's runner (the job stays queued for when one comes back while
        it waits in `outcome`; docs/workers.md).
        """
        if not self.workers.offers(job.runner):
            raise no_workers(job.runner)
        return await self.state.submit(job, client=client, use_cache=use_cache)

    async def outcome(self, future: asyncio.Future[RunOutput], runner: str) -> RunOutput:
        """The output `future` (from `submit`) resolves to; 503 `no_workers` when no connected worker
        runs `runner` any more."""
        while True:
            # A client that goes away must not cancel the run that other clients wait for.
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(asyncio.shield(future), NO_WORKERS_CHECK_S)
            if not self.workers.offers(runner):
                raise no_workers(runner)

    async def in_flight(self, run_id: str) -> bool:
        return await self.state.in_flight(run_id)

    async def progress(self, run_id: str, seen: Progress | None = None, wait_s: float = 0) -> Progress | None:
        """Whether `run_id` is queued or running (State.progress); with `wait_s`, as soon as that
        differs from `seen` (a long poll). 503 `no_workers` for a run no connected worker could run."""
        progress = await self.state.watch(run_id, seen, wait_s)
        if progress is not None and not self.workers.offers(progress.runner):
            raise no_workers(progress.runner)
        return progress

    # The in-process worker's JobSource.

    async def pull(self) -> Lease:
        lease = await self.state.pull()
        self.workers.leased(IN_PROCESS, lease.job.id, lease.token)
        return lease

    async def extend(self, lease: Lease) -> bool:
        return await self.extend_lease(lease.job.id, lease.token)

    async def complete(self, lease: Lease, output: RunOutput) -> bool:
        return await self.complete_lease(lease.job.id, lease.token, output)

    # Remote workers, through the routes of api/work.py.

    async def offer(self, report: WorkerReport, peer: str, wait_s: float) -> Offer:
        """A job `report`'s worker can run, leased to it, within `wait_s` (see State.offer)."""
        self.workers.seen(report, peer)
        offer = await self.state.offer(report.capabilities(), wait_s)
        if offer.lease is not None:
            self.workers.leased(report.worker, offer.lease.job.id, offer.lease.token)
        return offer

    async def extend_lease(self, job_id: str, token: str) -> bool:
        held = await self.state.extend(job_id, token)
        self.workers.touched(token, released=not held)
        return held

    async def complete_lease(self, job_id: str, token: str, output: RunOutput) -> bool:
        """False, and the output dropped, when the lease is no longer held (it expired, or the job was
        completed already). Counted in pe_executions_total once accepted, so each job counts once;
        dropped ones in pe_results_discarded_total."""
        accepted = await self.state.complete(job_id, token, output)
        self.workers.touched(token, released=True)
        if accepted:
            self.metrics.executions.inc(runner=output.result.runner, status=str(output.result.status))
        else:
            self.metrics.results_discarded.inc()
        return accepted
