"""The `Server-Timing` header of `POST /api/v1/run` (docs/api.md): how long the edge had the request,
and how much of that the runner took, so that the dispatch overhead (issue 6: edge receive to answer,
minus the runner's own time) is measured where it happens rather than guessed from a client.

- `edge;dur=` milliseconds from the request's first moment in the app (`ReceivedAt` stamps the ASGI
  scope) to its answer's header block being built (the body's encoding is not in it).
- `runner;dur=` milliseconds inside the runner's `run` for this job, as the worker that ran it
  reported (worker/pull.py times it; a remote worker sends it with its upload). Absent for an answer
  from the cache, and when this edge has no report newer than the request (with Redis, the worker may
  have handed the output to another edge).
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

RECEIVED = "pe.received"  # the scope key: time.perf_counter() when the request entered the app
RUNNER_TIMES = 4096  # reports kept: far more than the runs answered at any moment


class ReceivedAt:
    """Stamps each request's scope with the time it entered the app (the outermost middleware)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[RECEIVED] = time.perf_counter()
        await self.app(scope, receive, send)


class RunnerTimes:
    """The runner's time of the latest runs, by job id, as the workers reported them."""

    def __init__(self, size: int = RUNNER_TIMES) -> None:
        self.size = size
        self._times: dict[str, tuple[float, float]] = {}  # job id → (runner ms, perf_counter when told)

    def record(self, job_id: str, runner_ms: float) -> None:
        """Call it before the output is handed to the state, so that it is there when the run's
        clients wake up."""
        self._times.pop(job_id, None)  # to the end: the oldest go first
        self._times[job_id] = (runner_ms, time.perf_counter())
        if len(self._times) > self.size:
            del self._times[next(iter(self._times))]

    def since(self, job_id: str, received: float) -> float | None:
        """The runner's time of `job_id`'s run, if reported after `received` (a report from before
        the request came is an earlier run's: the same job run again without the cache)."""
        reported = self._times.get(job_id)
        return reported[0] if reported is not None and reported[1] >= received else None


def server_timing(request: Request, times: RunnerTimes, job_id: str, cached: bool) -> tuple[bytes, bytes]:
    """The `Server-Timing` header of the answer to `request`, which ran `job_id` unless `cached`."""
    received = request.scope[RECEIVED]
    value = b"edge;dur=%.3f" % ((time.perf_counter() - received) * 1000)
    runner_ms = None if cached else times.since(job_id, received)
    if runner_ms is not None:
        value += b", runner;dur=%.3f" % runner_ms
    return (b"server-timing", value)


def parse_server_timing(value: str) -> dict[str, float]:
    """The figures of a `Server-Timing` value this module made, for its clients (the bench, tests):
    `edge;dur=1.5, runner;dur=0.5` as {"edge": 1.5, "runner": 0.5}."""
    figures = {}
    for metric in value.split(","):
        name, _, duration = metric.strip().partition(";dur=")
        figures[name] = float(duration)
    return figures
