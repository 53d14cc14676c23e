"""The embedded state: everything in this process, for a single `pe serve`."""

from __future__ import annotations

import itertools
import time
import uuid
from collections import deque
from dataclasses import dataclass

from api.ratelimit import BucketStore
from api.runs import RunStore
from api.state.base import (
    SCAN_DEPTH,
    SCAN_QUEUES,
    Capabilities,
    Offer,
    Progress,
    State,
    client_queue_full,
    queue_full,
)
from wire.result import RunOutput
from worker.pull import Lease
from worker.runner import Job


@dataclass
class _Held:
    token: str
    deadline: float  # time.monotonic()


class MemoryState(State):
    def __init__(
        self,
        *,
        cache_bytes: int,
        queue_size: int,
        client_queue_size: int,
        lease_s: float,
        buckets: BucketStore,
    ) -> None:
        super().__init__(
            queue_size=queue_size, client_queue_size=client_queue_size, lease_s=lease_s, buckets=buckets
        )
        self.store = RunStore(cache_bytes)
        self._jobs: dict[str, Job] = {}  # queued or leased
        self._clients: dict[str, str] = {}  # job id → the client whose sub-queue it was queued in
        self._front: deque[str] = deque()  # jobs whose lease expired: served before any sub-queue
        self._queues: dict[str, deque[str]] = {}  # client → its waiting job ids; present while not empty
        self._turns: deque[str] = deque()  # the clients with waiting jobs, in the order they are served
        self._leases: dict[str, _Held] = {}
        self._attempts: dict[str, int] = {}  # hand-outs so far, of the jobs queued or leased
        self._depth = 0

    async def start(self) -> None:
        """Nothing runs in the background."""

    async def close(self) -> None:
        """Nothing to release."""

    @property
    def depth(self) -> int:
        return self._depth

    async def stored(self, run_id: str) -> RunOutput | None:
        return self.store.get(run_id)

    async def _enqueue(self, job: Job, *, client: str, use_cache: bool) -> None:
        # Every waiter is in this process, so a job with a flight already has a future: it is new here.
        if self._depth >= self.queue_size:
            raise queue_full()
        queue = self._queues.get(client)
        if queue is None:
            queue = self._queues[client] = deque()
            self._turns.append(client)
        elif len(queue) >= self.client_queue_size:
            raise client_queue_full(self.client_queue_size)
        queue.append(job.id)
        self._jobs[job.id] = job
        self._clients[job.id] = client
        self._depth += 1
        self._announce_work()

    async def in_flight(self, job_id: str) -> bool:
        return job_id in self._jobs

    async def progress(self, job_id: str) -> Progress | None:
        job = self._jobs.get(job_id)
        if job is None:
            return None
        if job_id in self._leases:
            return Progress("running", None, job.runner)
        if job_id in self._front:
            return Progress("queued", self._front.index(job_id), job.runner)
        client = self._clients[job_id]
        mine = self._queues[client].index(job_id)
        turn = self._turns.index(client)
        others = sum(
            min(len(self._queues[other]), mine + (index < turn))
            for index, other in enumerate(self._turns)
            if other != client
        )
        return Progress("queued", len(self._front) + mine + others, job.runner)

    async def _take(self, capabilities: Capabilities | None) -> Offer:
        self._requeue_expired()
        wanted: dict[str, None] = {}  # ordered, without repeats
        job_id = self._pick(self._front, capabilities, wanted)
        if job_id is None:
            for client in list(itertools.islice(self._turns, SCAN_QUEUES)):
                queue = self._queues[client]
                job_id = self._pick(queue, capabilities, wanted)
                if job_id is not None:
                    self._turns.remove(client)  # served: to the back of the line if it has more
                    if queue:
                        self._turns.append(client)
                    else:
                        del self._queues[client]
                    break
        if job_id is None:
            return Offer(None, tuple(wanted))
        self._depth -= 1
        token = uuid.uuid4().hex
        self._leases[job_id] = _Held(token, time.monotonic() + self.lease_s)
        self._attempts[job_id] = self._attempts.get(job_id, 0) + 1
        return Offer(Lease(self._jobs[job_id], token, self.lease_s, self._attempts[job_id]))

    def _pick(
        self, ids: deque[str], capabilities: Capabilities | None, wanted: dict[str, None]
    ) -> str | None:
        """Remove and return the first of the first SCAN_DEPTH `ids` the caller can run; note the
        images of those it would fetch in `wanted`."""
        for index, job_id in enumerate(itertools.islice(ids, SCAN_DEPTH)):
            job = self._jobs[job_id]
            if capabilities is None or capabilities.can_run(job):
                del ids[index]
                return job_id
            if capabilities.would_fetch(job):
                wanted[job.image_digest] = None
        return None

    def _requeue_expired(self) -> None:
        now = time.monotonic()
        expired = [job_id for job_id, held in self._leases.items() if held.deadline <= now]
        for job_id in sorted(expired, key=lambda job_id: self._leases[job_id].deadline, reverse=True):
            del self._leases[job_id]
            self._front.appendleft(job_id)
            self._depth += 1

    def _holds(self, job_id: str, token: str) -> bool:
        held = self._leases.get(job_id)
        return held is not None and held.token == token

    async def extend(self, job_id: str, token: str) -> bool:
        if not self._holds(job_id, token):
            return False
        self._leases[job_id].deadline = time.monotonic() + self.lease_s
        return True

    async def complete(self, job_id: str, token: str, output: RunOutput) -> bool:
        if not self._holds(job_id, token):
            return False
        del self._leases[job_id]
        del self._jobs[job_id]
        del self._clients[job_id]
        del self._attempts[job_id]
        self.store.put(job_id, output)
        self._deliver(job_id, output)
        return True
