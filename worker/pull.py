"""The worker's pull loop: take a job when a slot is free, run it, hand the output back."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from wire.result import RunOutput
from worker.runner import Job, Runner, error_output

log = logging.getLogger("pe.worker")


class JobSource(Protocol):
    """Where jobs come from: the edge's dispatcher in-process, or (later) the edge over HTTP/2."""

    async def pull(self) -> Job: ...

    async def complete(self, job: Job, output: RunOutput) -> None: ...


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
                job = await self.source.pull()
            except BaseException:
                self._free.release()
                raise
            task = asyncio.create_task(self._execute(job), name=f"run-{job.id[:12]}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _execute(self, job: Job) -> None:
        try:
            output = await self._run(job)
            await self.source.complete(job, output)
        finally:
            self._free.release()

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
