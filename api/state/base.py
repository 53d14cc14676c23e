"""The state an edge keeps, behind one interface: the run queue and its leases, single-flight, the result
cache and the rate-limit buckets. `MemoryState` keeps it in this process (the embedded default),
`RedisState` in a Redis server that several edges share (docs/state.md).

What the backends have in common lives here:

- waiting: each process keeps one future per job id it waits for. The first local request for a job
  asks the backend to join the job's flight or queue it (`_enqueue`); identical requests in this process
  then wait on the same future, and the backend resolves it when the job completes (`_deliver`).
- pulling: a worker asks for a job it can run (`_take`, filtered by its `Capabilities`); when there is
  none it sleeps until new work is announced (`_announce_work`) or for `POLL_S`, when expired leases are
  looked at again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

from api.errors import ApiError
from api.ratelimit import BucketStore
from wire.result import RunOutput
from worker.pull import Lease
from worker.runner import Job, error_output

RETRY_AFTER_S = 2
POLL_S = 0.5  # how often an idle worker looks for expired leases and missed announcements
DEFAULT_CLIENT = "anonymous"  # the sub-queue of runs whose client is not known
# Hand-outs of one job before it is given up: a job whose every worker dies or stalls (and so loses
# the lease) must not take down one worker after another for ever.
MAX_ATTEMPTS = 3
# How far a pull looks for a job its worker can run: this many jobs at the head of the front list and of
# each sub-queue, in this many sub-queues (in turn order). Bounded, so a pull costs the same however long
# the queue; a job further back is found once the jobs ahead of it have gone to workers that can run them.
SCAN_DEPTH = 16
SCAN_QUEUES = 64
# How often a long poll (`State.watch`) looks again when no change made here woke it: a job leased or
# completed by another edge (Redis) is seen this late at most.
WATCH_POLL_S = 0.2


@dataclass(frozen=True)
class Capabilities:
    """What a worker can run: runner kinds and the images (digests) it holds. `fetching` are images it
    is downloading: not asked for again while it does."""

    runners: frozenset[str]
    images: frozenset[str]
    fetching: frozenset[str] = frozenset()

    def can_run(self, job: Job) -> bool:
        return job.runner in self.runners and job.image_digest in self.images

    def would_fetch(self, job: Job) -> bool:
        """Whether this worker could run `job` once it has fetched the image (and is not fetching it)."""
        return job.runner in self.runners and job.image_digest not in self.images | self.fetching


@dataclass(frozen=True)
class Offer:
    """What a pull gets: a leased job, or none; then `wanted` lists the images of waiting jobs the
    worker could run once it holds them."""

    lease: Lease | None
    wanted: tuple[str, ...] = ()


@dataclass(frozen=True)
class Progress:
    """Where a job in flight is: "queued" with `position` (jobs that go to a worker before it, as far as
    the queue's order tells: see `State.progress`), or "running" (leased, `position` None)."""

    state: str
    position: int | None
    runner: str

    def to_json(self, job_id: str) -> dict[str, object]:
        return {"id": job_id, "state": self.state, "position": self.position}


def queue_full() -> ApiError:
    return ApiError(
        503, "queue_full", "too many runs are waiting; try again shortly", {"Retry-After": str(RETRY_AFTER_S)}
    )


def client_queue_full(limit: int) -> ApiError:
    """Per-client bound: 429, since it is this client, not the service, that has asked for too much."""
    return ApiError(
        429,
        "client_queue_full",
        f"you already have {limit} runs waiting; try again when they have run",
        {"Retry-After": str(RETRY_AFTER_S)},
    )


class StateUnavailable(ApiError):
    def __init__(self, detail: str) -> None:
        super().__init__(
            503,
            "state_unavailable",
            f"the shared state store is not reachable ({detail}); try again shortly",
            {"Retry-After": str(RETRY_AFTER_S)},
        )


class State(ABC):
    """Queue bounds: `queue_size` jobs waiting in all, at most `client_queue_size` of them from one client.
    Pulled jobs are leased for `lease_s` seconds at a time."""

    def __init__(
        self, *, queue_size: int, client_queue_size: int, lease_s: float, buckets: BucketStore
    ) -> None:
        self.queue_size = queue_size
        self.client_queue_size = client_queue_size
        self.lease_s = lease_s
        self.buckets = buckets
        self._waiting: dict[str, asyncio.Future[RunOutput]] = {}
        self._enqueues: set[asyncio.Task[None]] = set()
        self._work = asyncio.Event()
        self._moved = asyncio.Event()  # set (and replaced) when a job here is leased or completed
        self._stopping = False

    @abstractmethod
    async def start(self) -> None:
        """Begin background work (the Redis backend listens for completions)."""

    @abstractmethod
    async def close(self) -> None:
        """Stop background work and release connections."""

    @property
    @abstractmethod
    def depth(self) -> int:
        """Jobs waiting for a worker (with Redis: in the shared queue, as last seen)."""

    async def share_workers(self, mine: dict[str, str], live_s: float) -> dict[str, str]:
        """Store this edge's live workers (JSON by worker id) where the other edges see them; returns
        the workers of every edge (api/workers.py). In memory there is only this edge."""
        return mine

    @abstractmethod
    async def stored(self, run_id: str) -> RunOutput | None:
        """The cached output of `run_id`, now the most recently used; None when not (or no longer) kept."""

    @abstractmethod
    async def in_flight(self, job_id: str) -> bool:
        """Whether `job_id` is queued or running: a request for it now would join that flight."""

    @abstractmethod
    async def progress(self, job_id: str) -> Progress | None:
        """Whether `job_id` is queued (and how many jobs go first) or running; None when it is not in
        flight (done, given up, or never submitted). The position counts the requeued jobs at the front,
        the job's own client's earlier jobs, and from every other client as many jobs as the round-robin
        serves before this one (one per turn). It cannot know which workers hold which images, so a
        job may be passed by jobs that others' workers can run sooner."""

    async def watch(self, job_id: str, seen: Progress | None, wait_s: float) -> Progress | None:
        """`job_id`'s progress as soon as it differs from `seen` (position, state, or out of flight),
        or as it is after `wait_s`, or at once once the edge is stopping (`stop_offers`). Wakes on
        leases and completions made through this state, and looks again every WATCH_POLL_S for those
        of other edges."""
        deadline = time.monotonic() + wait_s
        while True:
            moved = self._moved
            now = await self.progress(job_id)
            remaining = deadline - time.monotonic()
            if now != seen or remaining <= 0 or self._stopping:
                return now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(moved.wait(), min(WATCH_POLL_S, remaining))

    def _note_move(self) -> None:
        """A job was leased or completed here: wake the watchers."""
        self._moved.set()
        self._moved = asyncio.Event()

    async def submit(self, job: Job, *, client: str, use_cache: bool) -> asyncio.Future[RunOutput]:
        """The future output of `job`, once the job is in flight: joins its flight when one is queued
        or running (here or on another edge), else queues it in `client`'s sub-queue. Raises (and fails
        the future of identical requests here with) a 503/429 ApiError when a queue bound is reached or
        the state store is down."""
        future = self._waiting.get(job.id)
        if future is None:
            future = self._waiting[job.id] = asyncio.get_running_loop().create_future()
            # A task, so that a client going away mid-way cannot leave the other waiters in doubt.
            task = asyncio.create_task(self._enqueue(job, client=client, use_cache=use_cache))
            self._enqueues.add(task)
            task.add_done_callback(self._enqueues.discard)
            task.add_done_callback(lambda done: self._enqueued(job.id, done))
            await asyncio.shield(task)
        return future

    def _enqueued(self, job_id: str, task: asyncio.Task[None]) -> None:
        error = task.exception() if not task.cancelled() else None
        if error is not None:
            self._fail(job_id, error)

    @abstractmethod
    async def _enqueue(self, job: Job, *, client: str, use_cache: bool) -> None:
        """Join the job's flight or queue it; raise `queue_full()`/`client_queue_full()` when refused."""

    def _deliver(self, job_id: str, output: RunOutput) -> None:
        self._note_move()
        future = self._waiting.pop(job_id, None)
        if future is not None and not future.done():
            future.set_result(output)

    def _fail(self, job_id: str, error: BaseException) -> None:
        future = self._waiting.pop(job_id, None)
        if future is not None and not future.done():
            future.set_exception(error)
            future.exception()  # reported to whoever waits; not worth a "never retrieved" warning

    async def pull(self) -> Lease:
        """The next job, any job (the in-process worker runs them all), leased to the caller; waits
        until there is one."""
        while True:
            offer = await self.offer(None, wait_s=60)
            if offer.lease is not None:
                return offer.lease

    async def offer(self, capabilities: Capabilities | None, wait_s: float) -> Offer:
        """A job the caller can run, leased to it, as soon as there is one; else no job after `wait_s`,
        or at once when waiting jobs want an image the caller could fetch (`Offer.wanted`). A job
        already handed out MAX_ATTEMPTS times is not handed out again: its waiters get an error output.
        Once `stop_offers` was called, a worker with `capabilities` is not kept waiting."""
        deadline = time.monotonic() + wait_s
        while True:
            self._work.clear()  # before looking, so that an announcement made meanwhile is not missed
            offer = await self._take(capabilities)
            lease = offer.lease
            if lease is not None and lease.attempt > MAX_ATTEMPTS:
                message = f"given up: {MAX_ATTEMPTS} workers took this run and none finished it in time"
                await self.complete(lease.job.id, lease.token, error_output(lease.job, message))
                continue
            if lease is not None:
                self._note_move()
            remaining = deadline - time.monotonic()
            stopping = self._stopping and capabilities is not None
            if lease is not None or offer.wanted or remaining <= 0 or stopping:
                return offer
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._work.wait(), min(POLL_S, remaining))

    def stop_offers(self) -> None:
        """The edge is stopping: remote workers' pulls (with capabilities) are answered now, and from
        now on, once they have looked for a job, so that their connections can close. The in-process
        worker goes on pulling: it runs the jobs of the requests still being answered. Long polls of
        runs in flight (`watch`) are answered too."""
        self._stopping = True
        self._work.set()
        self._note_move()

    def _announce_work(self) -> None:
        self._work.set()

    @abstractmethod
    async def _take(self, capabilities: Capabilities | None) -> Offer:
        """Queue jobs with expired leases again (at the front), then lease the first job the caller can
        run (any, for None) from the front list, else round-robin over the clients' sub-queues, looking
        at SCAN_DEPTH jobs of each of SCAN_QUEUES lists at most. Without a job, the offer lists the
        images of the jobs looked at that the caller would fetch."""

    @abstractmethod
    async def extend(self, job_id: str, token: str) -> bool:
        """Renew the lease for `lease_s` from now; False when the job is no longer leased with this token."""

    @abstractmethod
    async def complete(self, job_id: str, token: str, output: RunOutput) -> bool:
        """Cache the output and answer every waiter (on every edge); False, and nothing done, when the
        lease is no longer held (it expired and the job was queued again or has completed since)."""
