"""The worker's pull loop: take jobs while a slot is free, run them, hand the outputs back.

A pulled job comes with a lease: the source gives it to no one else until the lease runs out. The
worker extends the lease while the job runs (a heartbeat every third of its length); a worker that
dies or stalls stops extending it, and the source queues the job again for another worker.

With one pull outstanding per free slot, a slot that frees waits for the next job to travel from the
source. A remote worker hides that time by prefetching: while all its slots are busy it may hold one
job more, pulled ahead (`prefetch_window_s`). Never more than `slots` jobs run at once. Only runs
younger than the window call for a prefetch: a slot busy for longer is likely to stay busy, and a job
prefetched behind it would wait there while other workers could run it. So the prefetch pull asks
the source to wait no longer than the window has left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

from wire.result import RunOutput
from worker.runner import Job, Runner, error_output

log = logging.getLogger("pe.worker")

# With a remote worker's result upload: the job's time inside its runner's `run`, in ms (`on_ran` below;
# the edge reports it in Server-Timing: api/work.py, api/timing.py).
RUNNER_MS_HEADER = "pe-runner-ms"


@dataclass(frozen=True)
class Lease:
    job: Job
    token: str  # names this hand-out of the job; a job queued again is handed out with a new token
    seconds: float  # how long the lease lasts unless extended
    attempt: int = 1  # how many times the job has been handed out, this time included


class SourceRefused(Exception):
    """The source will never give this worker a job (the edge refuses its token or its kind): retrying
    is pointless, the worker stops."""


class JobSource(Protocol):
    """Where jobs come from: the edge's dispatcher in-process, or the edge over HTTP/2 (worker/remote.py)."""

    async def pull(self) -> Lease:
        """The next job, leased to this worker; waits until there is one."""
        ...

    async def extend(self, lease: Lease) -> bool:
        """Renew the lease for another `lease.seconds`; False when it is no longer this worker's."""
        ...

    async def complete(self, lease: Lease, output: RunOutput) -> bool:
        """Hand the output back; False when the lease had expired (the output is then dropped)."""
        ...


class PrefetchSource(JobSource, Protocol):
    """A source that can also answer a pull within a deadline (needed to prefetch)."""

    async def pull_within(self, wait_s: float) -> Lease | None:
        """A leased job if one comes within `wait_s`, else None."""
        ...


class PullWorker:
    def __init__(
        self,
        source: JobSource,
        runners: dict[str, Runner],
        slots: int,
        *,
        prefetch_window_s: float = 0.0,
        on_ran: Callable[[Lease, float], None] = lambda lease, runner_ms: None,
    ) -> None:
        """`prefetch_window_s` > 0 needs a PrefetchSource. `on_ran` is told each job's time inside its
        runner's `run`, in milliseconds, before its output is handed back (api/timing.py)."""
        self.source = source
        self.runners = runners
        self.slots = slots
        self.prefetch_window_s = prefetch_window_s
        self.on_ran = on_ran
        self._prefetcher = cast(PrefetchSource, source) if prefetch_window_s > 0 else None
        # Leased, waiting for a slot (prefetched), each with its heartbeat: the lease is held from now.
        self._waiting: deque[tuple[Lease, asyncio.Task[None]]] = deque()
        self._running: dict[asyncio.Task[None], float] = {}  # run → when it started (monotonic)
        self._pulls: set[asyncio.Task[Lease | None]] = set()
        self._changed = asyncio.Event()
        self._refused: SourceRefused | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def held(self) -> int:
        """Leases this worker holds: running and waiting for a slot."""
        return len(self._running) + len(self._waiting)

    async def serve(self) -> None:
        """Pull and run jobs until cancelled (the runs in progress go on: see `drain`); SourceRefused
        when the source refuses this worker."""
        try:
            while True:
                if self._refused is not None:
                    raise self._refused
                self._pull_more()
                self._changed.clear()
                await self._changed.wait()
        finally:
            for pull in list(self._pulls):
                pull.cancel()

    def _pull_more(self) -> None:
        """One pull outstanding per slot not running or promised a job; one more, a prefetch, when all
        slots run and the youngest run is within the window."""
        while self.held + len(self._pulls) < self.slots:
            self._start_pull(None)
        window = self._window_left()
        if window > 0 and self.running == self.slots and not self._waiting and not self._pulls:
            self._start_pull(window)

    def _window_left(self) -> float:
        if self.prefetch_window_s <= 0 or not self._running:
            return 0.0
        youngest = max(self._running.values())
        return max(0.0, youngest + self.prefetch_window_s - time.monotonic())

    def _start_pull(self, wait_s: float | None) -> None:
        pull = asyncio.create_task(self._pull(wait_s), name="pull")
        self._pulls.add(pull)
        pull.add_done_callback(self._pulled)

    async def _pull(self, wait_s: float | None) -> Lease | None:
        """The next lease (None if a prefetch pull found none in time); when the source fails (its
        store is down), wait and try again."""
        while True:
            try:
                if wait_s is None or self._prefetcher is None:
                    return await self.source.pull()
                return await self._prefetcher.pull_within(wait_s)
            except SourceRefused:
                raise
            except Exception as error:
                log.warning("cannot pull a job: %s; retrying in 1 s", error)
                await asyncio.sleep(1)

    def _pulled(self, pull: asyncio.Task[Lease | None]) -> None:
        self._pulls.discard(pull)
        self._changed.set()
        if pull.cancelled():
            return
        error = pull.exception()
        if isinstance(error, SourceRefused):
            self._refused = error
        elif error is not None:
            log.error("pull failed", exc_info=error)
        elif (lease := pull.result()) is not None:
            heartbeat = asyncio.create_task(self._heartbeat(lease), name=f"lease-{lease.job.id[:12]}")
            heartbeat.add_done_callback(lambda _: self._lost(lease, heartbeat))
            self._waiting.append((lease, heartbeat))
            self._start_runs()

    def _lost(self, lease: Lease, heartbeat: asyncio.Task[None]) -> None:
        """A heartbeat ended: cancelled when the run ended, else the lease is lost (the source
        handed the job to another worker); a job still waiting for a slot is then dropped."""
        if not heartbeat.cancelled() and (lease, heartbeat) in self._waiting:
            self._waiting.remove((lease, heartbeat))
            log.warning("dropped a job waiting for a slot: its lease is lost", extra=lease_ids(lease))
            self._changed.set()

    def _start_runs(self) -> None:
        while self._waiting and self.running < self.slots:
            lease, heartbeat = self._waiting.popleft()
            run = asyncio.create_task(self._execute(lease, heartbeat), name=f"run-{lease.job.id[:12]}")
            self._running[run] = time.monotonic()
            self._idle.clear()
            run.add_done_callback(self._ran)

    def _ran(self, run: asyncio.Task[None]) -> None:
        del self._running[run]
        self._start_runs()
        self._changed.set()
        if not self._running:
            self._idle.set()

    async def _execute(self, lease: Lease, heartbeat: asyncio.Task[None]) -> None:
        try:
            started = time.perf_counter()
            output = await self._run(lease.job)
            self.on_ran(lease, (time.perf_counter() - started) * 1000)
            heartbeat.cancel()
            if not await self.source.complete(lease, output):
                log.warning(
                    "lease expired before the run ended; its output is dropped", extra=lease_ids(lease)
                )
        except Exception:
            log.exception("cannot hand the output back; the job runs again when its lease expires")
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _heartbeat(self, lease: Lease) -> None:
        while True:
            await asyncio.sleep(lease.seconds / 3)
            try:
                if not await self.source.extend(lease):
                    log.warning("lost the lease of a running job", extra=lease_ids(lease))
                    return
            except Exception as error:
                log.warning("cannot extend a lease: %s", error, extra=lease_ids(lease))

    async def _run(self, job: Job) -> RunOutput:
        runner = self.runners.get(job.runner)
        if runner is None:
            return error_output(job, f"this worker has no {job.runner!r} runner")
        try:
            return await runner.run(job)
        except Exception as error:
            log.exception("run failed in the runner", extra={"run_id": job.id, "runner": job.runner})
            return error_output(job, f"the {job.runner} runner failed: {error}")

    async def drain(self) -> None:
        """Run the jobs held (those waiting for a slot too) to the end, outputs handed back. Call it
        once `serve` has ended."""
        while self._running:
            await self._idle.wait()


def lease_ids(lease: Lease) -> dict[str, str]:
    return {"run_id": lease.job.id, "runner": lease.job.runner}
