"""PullWorker's accounting: never more than `slots` runs, at most one job held ahead (the prefetch), no
prefetch behind a long run, a drain that finishes what is held. The source is an in-memory queue and
the runner sleeps for the time the job names: only the scheduling is under test here (the sandbox
runs for real in tests/api/test_workers_e2e.py)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time

from wire.result import RunOutput
from wire.spec import parse_spec
from worker.pull import Lease, PullWorker
from worker.runner import Job, error_output

WINDOW_S = 0.3
_ids = itertools.count()


def job(seconds: float) -> Job:
    spec = parse_spec({"image": "busybox", "argv": [str(seconds)]})
    return Job(f"job-{next(_ids)}", spec, spec.argv, "busybox", "sha256:" + "0" * 64, "sandbox")


class Queue:
    """A JobSource with prefetch: jobs put in, leases out, outputs back; it notes what is held when."""

    def __init__(self) -> None:
        self.jobs: asyncio.Queue[Job] = asyncio.Queue()
        self.held: set[str] = set()
        self.most_held = 0
        self.taken_at: dict[str, float] = {}
        self.completed: list[str] = []
        self.lost: set[str] = set()  # extends of these say the lease is gone

    def _lease(self, taken: Job) -> Lease:
        self.held.add(taken.id)
        self.most_held = max(self.most_held, len(self.held))
        self.taken_at[taken.id] = time.monotonic()
        return Lease(taken, f"token-{taken.id}", 0.3)

    async def pull(self) -> Lease:
        return self._lease(await self.jobs.get())

    async def pull_within(self, wait_s: float) -> Lease | None:
        try:
            return self._lease(await asyncio.wait_for(self.jobs.get(), wait_s))
        except TimeoutError:
            return None

    async def extend(self, lease: Lease) -> bool:
        return lease.job.id not in self.lost

    async def complete(self, lease: Lease, output: RunOutput) -> bool:
        self.held.discard(lease.job.id)
        self.completed.append(lease.job.id)
        return True


class Sleeper:
    name = "sandbox"

    def __init__(self) -> None:
        self.running = 0
        self.most_running = 0
        self.ended_at: dict[str, float] = {}

    async def run(self, job: Job) -> RunOutput:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(float(job.argv[0]))
        finally:
            self.running -= 1
        self.ended_at[job.id] = time.monotonic()
        return error_output(job, "slept")

    async def close(self) -> None:
        pass


@contextlib.asynccontextmanager
async def serving(worker: PullWorker):
    task = asyncio.create_task(worker.serve())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.drain()


def test_prefetch_holds_one_job_more_but_runs_no_more_than_the_slots() -> None:
    async def main() -> None:
        source, runner = Queue(), Sleeper()
        worker = PullWorker(source, {"sandbox": runner}, 2, prefetch_window_s=WINDOW_S)
        jobs = [job(0.05) for _ in range(20)]
        async with serving(worker):
            for queued in jobs:
                source.jobs.put_nowait(queued)
            while len(source.completed) < len(jobs):
                await asyncio.sleep(0.01)
        assert sorted(source.completed) == sorted(queued.id for queued in jobs)
        assert runner.most_running == 2
        assert source.most_held == 3

    asyncio.run(main())


def test_without_prefetch_it_holds_no_more_than_the_slots() -> None:
    async def main() -> None:
        source, runner = Queue(), Sleeper()
        worker = PullWorker(source, {"sandbox": runner}, 2)  # as in-process (`pe serve`)
        async with serving(worker):
            for _ in range(10):
                source.jobs.put_nowait(job(0.02))
            while len(source.completed) < 10:
                await asyncio.sleep(0.01)
        assert runner.most_running == 2 and source.most_held == 2

    asyncio.run(main())


def test_no_job_is_prefetched_behind_a_run_older_than_the_window() -> None:
    """A job queued while the only slot runs a long job stays with the source (for other workers)
    until the slot is free."""

    async def main() -> None:
        source, runner = Queue(), Sleeper()
        worker = PullWorker(source, {"sandbox": runner}, 1, prefetch_window_s=WINDOW_S)
        long, quick = job(1.0), job(0.01)
        async with serving(worker):
            source.jobs.put_nowait(long)
            await asyncio.sleep(WINDOW_S + 0.2)
            source.jobs.put_nowait(quick)
            while len(source.completed) < 2:
                await asyncio.sleep(0.01)
        assert source.taken_at[quick.id] >= runner.ended_at[long.id]

    asyncio.run(main())


def test_a_job_queued_early_in_a_run_is_prefetched() -> None:
    async def main() -> None:
        source, runner = Queue(), Sleeper()
        worker = PullWorker(source, {"sandbox": runner}, 1, prefetch_window_s=WINDOW_S)
        first, second = job(0.5), job(0.01)
        async with serving(worker):
            source.jobs.put_nowait(first)
            await asyncio.sleep(0.05)
            source.jobs.put_nowait(second)
            while len(source.completed) < 2:
                await asyncio.sleep(0.01)
        assert source.taken_at[second.id] < runner.ended_at[first.id]
        assert runner.most_running == 1

    asyncio.run(main())


def test_drain_runs_what_is_held_and_drops_a_waiting_job_whose_lease_is_lost() -> None:
    async def main() -> None:
        source, runner = Queue(), Sleeper()
        worker = PullWorker(source, {"sandbox": runner}, 1, prefetch_window_s=WINDOW_S)
        running, waiting, lost = job(0.5), job(0.01), job(0.01)
        task = asyncio.create_task(worker.serve())
        source.jobs.put_nowait(running)
        await asyncio.sleep(0.05)
        source.jobs.put_nowait(waiting)
        await asyncio.sleep(0.05)
        assert worker.held == 2
        task.cancel()  # SIGTERM: pull no more
        with contextlib.suppress(asyncio.CancelledError):
            await task
        source.jobs.put_nowait(lost)  # not pulled any more
        await worker.drain()
        assert source.completed == [running.id, waiting.id]
        assert source.jobs.qsize() == 1

        # A job waiting for the slot whose lease the source has given to someone else is dropped.
        first, dropped = job(0.5), job(0.01)
        source.lost.add(dropped.id)
        async with serving(worker):
            source.jobs.get_nowait()
            source.jobs.put_nowait(first)
            await asyncio.sleep(0.05)
            source.jobs.put_nowait(dropped)
            while first.id not in source.completed:
                await asyncio.sleep(0.01)
        assert dropped.id not in source.completed and dropped.id not in runner.ended_at

    asyncio.run(main())
