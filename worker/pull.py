"""The worker's pull loop: take a job when a slot is free, run it, hand the output back.

A pulled job comes with a lease: the source gives it to no one else until the lease runs out. The
worker extends the lease while the job runs (a heartbeat every third of its length); a worker that
dies or stalls stops extending it, and the source queues the job again for another worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Protocol

from wire.result import RunOutput
from worker.runner import Job, Runner, error_output

log = logging.getLogger("pe.worker")


@dataclass(frozen=True)
class Lease:
    job: Job
    token: str  # names this hand-out of the job; a job queued again is handed out with a new token
    seconds: float  # how long the lease lasts unless extended
    attempt: int = 1  # how many times the job has been handed out, this time included


class JobSource(Protocol):
    """Where jobs come from: the edge's dispatcher in-process, or (later) the edge over HTTP/2."""

    async def pull(self) -> Lease: ...

    async def extend(self, lease: Lease) -> bool:
        """Renew the lease for another `lease.seconds`; False when it is no longer this worker's."""
        ...

    async def complete(self, lease: Lease, output: RunOutput) -> bool:
        """Hand the output back; False when the lease had expired (the output is then dropped)."""
        ...


class PullWorker:
    def __init__(self, source: JobSource, runners: dict[str, Runner], slots: int) -> None:
        self.source = source
        self.runners = runners
        self.slots = slots
        self._free = asyncio.Semaphore(slots)
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self) -> None:
        """Pull and run jobs until cancelled; never more than `slots` at once."""
        while True:
            await self._free.acquire()
            try:
                lease = await self._pull()
            except BaseException:
                self._free.release()
                raise
            task = asyncio.create_task(self._execute(lease), name=f"run-{lease.job.id[:12]}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pull(self) -> Lease:
        """The next lease; when the source fails (its store is down), wait and try again."""
        while True:
            try:
                return await self.source.pull()
            except Exception as error:
                log.warning("cannot pull a job: %s; retrying in 1 s", error)
                await asyncio.sleep(1)

    async def _execute(self, lease: Lease) -> None:
        heartbeat = asyncio.create_task(self._heartbeat(lease), name=f"lease-{lease.job.id[:12]}")
        try:
            output = await self._run(lease.job)
            heartbeat.cancel()
            if not await self.source.complete(lease, output):
                log.warning("lease expired before the run ended; its output is dropped", extra=_ids(lease))
        except Exception:
            log.exception("cannot hand the output back; the job runs again when its lease expires")
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            self._free.release()

    async def _heartbeat(self, lease: Lease) -> None:
        while True:
            await asyncio.sleep(lease.seconds / 3)
            try:
                if not await self.source.extend(lease):
                    log.warning("lost the lease of a running job", extra=_ids(lease))
                    return
            except Exception as error:
                log.warning("cannot extend a lease: %s", error, extra=_ids(lease))

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
        """Wait for the runs in progress to finish."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _ids(lease: Lease) -> dict[str, str]:
    return {"run_id": lease.job.id, "runner": lease.job.runner}
