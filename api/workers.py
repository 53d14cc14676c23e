"""The live view of the workers: who pulls jobs from this edge, what they can run, what they hold.

Workers do not register: every pull reports the worker (`WorkerReport`), and a worker counts as
connected while it has been seen (pull, extend or complete) within `live_s`: two long polls, or a
lease (a worker whose slots are all busy does not pull, but extends its leases every third of one).
The in-process worker of `pe serve` is an entry like the others, live as long as its edge. Every
`SHARE_S` the edge stores its entries in the state (`State.share_workers`) and reads everyone's back,
so with Redis every edge knows the workers of all edges: a run is refused with `no_workers` only when
no worker anywhere offers its runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field

from api.errors import ApiError
from api.state import State
from api.state.base import RETRY_AFTER_S, Capabilities
from api.timing import RunnerTimes

log = logging.getLogger("pe.workers")

SHARE_S = 2.0
IN_PROCESS = "in-process"


def no_workers(runner: str) -> ApiError:
    return ApiError(
        503,
        "no_workers",
        f"no worker that runs {runner!r} jobs is connected; try again shortly",
        {"Retry-After": str(RETRY_AFTER_S)},
    )


@dataclass(frozen=True)
class WorkerReport:
    """What a worker says about itself with each pull."""

    worker: str  # a stable id the worker chose
    runners: tuple[str, ...]
    arch: str
    images: tuple[str, ...] = ()  # digests it holds
    fetching: tuple[str, ...] = ()  # digests it is downloading
    slots: int = 1
    running: int = 0

    def capabilities(self) -> Capabilities:
        return Capabilities(frozenset(self.runners), frozenset(self.images), frozenset(self.fetching))


@dataclass
class WorkerEntry:
    report: WorkerReport
    peer: str
    connected: float  # time.time() when first seen
    last_seen: float
    leases: dict[str, str] = field(default_factory=dict)  # lease token → job id, leased through this edge

    def to_json(self) -> dict:
        report = self.report
        return {
            "worker": report.worker,
            "runners": list(report.runners),
            "arch": report.arch,
            "images": list(report.images),
            "slots": report.slots,
            "running": len(self.leases) if report.worker == IN_PROCESS else report.running,
            "leases": sorted(self.leases.values()),
            "connected_at": self.connected,
            "last_seen_at": self.last_seen,
            "peer": self.peer,
        }


class WorkerRegistry:
    def __init__(self, state: State, wait_s: float = 20.0) -> None:
        """`wait_s`: the longest long poll (PE_WORKER_WAIT_S)."""
        self.state = state
        self.wait_s = wait_s
        self.live_s = max(2 * wait_s, state.lease_s)
        self._entries: dict[str, WorkerEntry] = {}
        self._owners: dict[str, str] = {}  # lease token → the worker holding it (leased through this edge)
        self._everywhere: list[dict] = []  # every edge's live entries, as last shared
        self._sharing: asyncio.Task[None] | None = None
        self.runner_times = RunnerTimes()  # what the workers reported of their runs (Server-Timing)

    def seen(self, report: WorkerReport, peer: str) -> None:
        now = time.time()
        entry = self._entries.get(report.worker)
        if entry is None:
            self._entries[report.worker] = WorkerEntry(report, peer, now, now)
        else:
            entry.report, entry.peer, entry.last_seen = report, peer, now

    def leased(self, worker: str, job_id: str, token: str) -> None:
        entry = self._entries.get(worker)
        if entry is not None:
            entry.leases[token] = job_id
            self._owners[token] = worker

    def touched(self, token: str, *, released: bool = False) -> None:
        """The lease `token` was extended (or, `released`, completed, discarded or lost): its worker
        is alive."""
        worker = self._owners.pop(token, None) if released else self._owners.get(token)
        entry = self._entries.get(worker) if worker is not None else None
        if entry is not None:
            entry.last_seen = time.time()
            if released:
                entry.leases.pop(token, None)

    def live(self) -> list[WorkerEntry]:
        """The workers of this edge seen within `live_s` (the others are forgotten, with their leases)."""
        now = time.time()
        in_process = self._entries.get(IN_PROCESS)
        if in_process is not None:  # lives as long as this edge
            in_process.last_seen = now
        for worker in [w for w, entry in self._entries.items() if entry.last_seen < now - self.live_s]:
            for token in self._entries.pop(worker).leases:
                self._owners.pop(token, None)
        return list(self._entries.values())

    def everywhere(self) -> list[dict]:
        """The live workers of every edge sharing this state (as of the last share), this edge's now."""
        mine = {entry.report.worker: entry.to_json() for entry in self.live()}
        others = [item for item in self._everywhere if item["worker"] not in mine]
        cutoff = time.time() - self.live_s
        return [*mine.values(), *(item for item in others if item["last_seen_at"] >= cutoff)]

    def offers(self, runner: str) -> bool:
        """Whether a live worker (on any edge) runs `runner` jobs."""
        return any(runner in item["runners"] for item in self.everywhere())

    async def start(self) -> None:
        self._sharing = asyncio.create_task(self._share(), name="share-workers")

    async def close(self) -> None:
        if self._sharing is not None:
            self._sharing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sharing

    async def _share(self) -> None:
        while True:
            mine = {entry.report.worker: json.dumps(entry.to_json()) for entry in self.live()}
            try:
                shared = await self.state.share_workers(mine, self.live_s)
                self._everywhere = [json.loads(item) for item in shared.values()]
            except Exception as error:  # the state store is down: keep the last view
                log.warning("cannot share the worker list: %s", error)
            await asyncio.sleep(SHARE_S)
