"""The routes of the workers (`pe worker`), under /api/v1/work/ (docs/workers.md): pull a job, extend
its lease, hand its output back, and the admin view of the workers. Every route needs the worker token.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import platform
import time
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api.app import CPIO, Edge, counted, read_body
from api.errors import ApiError
from api.workers import WorkerReport
from pe.settings import RUNNER_KINDS
from wire.result import unpack_output
from wire.spec import MAX_LIMITS
from worker.pull import RUNNER_MS_HEADER

log = logging.getLogger("pe.work")
T = TypeVar("T")

ARCH = platform.machine()  # the images this edge builds and serves are for its own architecture
MAX_PULL_BYTES = 1 << 20
MAX_IMAGES = 10_000  # digests listed in one pull
MAX_WORKER_ID = 200
# The largest output a run may produce (both streams and all files at their maximum), plus room for the
# archive's headers and result.json.
MAX_RESULT_BYTES = 2 * MAX_LIMITS.stream_bytes + MAX_LIMITS.output_bytes + (1 << 20)


def peer(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "unknown"


def authorized(request: Request) -> Edge:
    """The edge, if the request carries its worker token; else 401 (and a log line without the token)."""
    edge: Edge = request.app.state.edge
    expected = edge.settings.worker_token.encode()
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if not expected:
        why = "this edge has no worker token (PE_WORKER_TOKEN)"
    elif scheme.lower() != "bearer" or not given:
        why = "no bearer token"
    elif not hmac.compare_digest(given.strip().encode(), expected):
        why = "wrong token"
    else:
        return edge
    log.warning("refused %s %s from %s: %s", request.method, request.url.path, peer(request), why)
    message = "worker routes need Authorization: Bearer <PE_WORKER_TOKEN>"
    raise ApiError(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})


def bad_pull(message: str) -> ApiError:
    return ApiError(422, "bad_pull", message)


def _get(obj: dict, key: str, kind: type[T], default: T | None = None) -> T:
    value = obj.get(key, default)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise bad_pull(f"{key} must be {kind.__name__}, not {value!r:.50}")
    return value


def _strings(obj: dict, key: str) -> tuple[str, ...]:
    items = _get(obj, key, list, [])
    if len(items) > MAX_IMAGES or not all(isinstance(item, str) for item in items):
        raise bad_pull(f"{key} must be a list of at most {MAX_IMAGES} strings")
    return tuple(items)


def parse_pull(body: bytes) -> tuple[WorkerReport, float]:
    """The worker's report and how long it will wait (the edge's longest when not said), from a pull
    body; 400/422 when malformed."""
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ApiError(400, "bad_json", f"the pull body is not JSON: {error}") from None
    if not isinstance(obj, dict):
        raise bad_pull("the pull body must be a JSON object")
    worker = _get(obj, "worker", str)
    if not 0 < len(worker) <= MAX_WORKER_ID:
        raise bad_pull(f"worker must be an id of 1 to {MAX_WORKER_ID} characters")
    runners = _strings(obj, "runners")
    unknown = [runner for runner in runners if runner not in RUNNER_KINDS]
    if not runners or unknown:
        raise bad_pull(f"runners must list runner kinds ({', '.join(RUNNER_KINDS)}), not {list(runners)}")
    slots, running = _get(obj, "slots", int, 1), _get(obj, "running", int, 0)
    wait_s = obj.get("wait_s", math.inf)  # not said: as long as the edge lets it
    if not isinstance(wait_s, int | float) or isinstance(wait_s, bool):
        raise bad_pull(f"wait_s must be a number of seconds, not {wait_s!r:.50}")
    if slots < 1 or running < 0 or wait_s < 0:
        raise bad_pull("slots must be at least 1, running and wait_s at least 0")
    report = WorkerReport(
        worker=worker,
        runners=runners,
        arch=_get(obj, "arch", str),
        images=_strings(obj, "images"),
        fetching=_strings(obj, "fetching"),
        slots=slots,
        running=running,
    )
    return report, float(wait_s)


async def pull(request: Request) -> Response:
    """Long poll: a leased job as soon as there is one this worker can run; else, after wait_s (or at
    once when waiting jobs need an image it could fetch), no job and the images wanted."""
    edge = authorized(request)
    report, wait_s = parse_pull(await read_body(request, MAX_PULL_BYTES))
    wait_s = min(wait_s, edge.settings.worker_wait_s)
    if report.arch != ARCH:
        raise ApiError(422, "wrong_arch", f"this edge's images are for {ARCH}, not {report.arch}")
    offer = await _unless_gone(request, edge.dispatcher.offer(report, peer(request), wait_s))
    if offer is None:
        return Response(status_code=204)  # no one reads it: the worker has gone
    lease = offer.lease
    if lease is None:
        return JSONResponse({"job": None, "wanted_images": list(offer.wanted)})
    held = {"token": lease.token, "seconds": lease.seconds, "attempt": lease.attempt}
    return JSONResponse({"job": lease.job.to_json(), "lease": held})


async def _unless_gone(request: Request, waiting: Awaitable[T]) -> T | None:
    """`waiting`'s result; None if the worker goes away first (its stream reset, its connection
    closed, as when it stops): `waiting` is then cancelled, so that no job is leased to a worker that
    is gone and left there until its lease expires."""
    answer = asyncio.ensure_future(waiting)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((answer, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        answer.cancel()  # nothing happens when it is done
    with contextlib.suppress(asyncio.CancelledError):
        return await answer
    return None


async def _disconnected(request: Request) -> None:
    """Returns once the client has gone (the body has been read: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def extend(request: Request) -> Response:
    edge = authorized(request)
    job_id, token = request.path_params["job_id"], request.path_params["token"]
    if not await edge.dispatcher.extend_lease(job_id, token):
        raise ApiError(409, "lease_lost", "this lease is no longer held: the job is someone else's or done")
    return JSONResponse({"seconds": edge.settings.lease_s})


async def complete(request: Request) -> Response:
    """The job's output as the cpio result archive (wire/result.py). `accepted` is false, and the output
    dropped, when the lease is no longer held: a repeated or late upload changes nothing."""
    edge = authorized(request)
    job_id, token = request.path_params["job_id"], request.path_params["token"]
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != CPIO:
        raise ApiError(415, "unsupported_media_type", f"send the output as {CPIO}, not {media_type!r}")
    output = unpack_output(await read_body(request, MAX_RESULT_BYTES))  # 400 bad_result when malformed
    if output.result.id != job_id:
        raise ApiError(
            400, "bad_result", f"the archive holds the result of {output.result.id!r}, not {job_id!r}"
        )
    runner_ms = runner_time(request.headers.get(RUNNER_MS_HEADER, ""))
    if runner_ms is not None:
        edge.dispatcher.workers.runner_times.record(job_id, runner_ms)
    accepted = await edge.dispatcher.complete_lease(job_id, token, output)
    return JSONResponse({"accepted": accepted})


def runner_time(value: str) -> float | None:
    """The runner's time an upload reports, in ms; None when absent or not a time (a figure for
    Server-Timing only: the output is accepted without it)."""
    try:
        runner_ms = float(value)
    except ValueError:
        return None
    return runner_ms if 0 <= runner_ms < math.inf else None


async def workers(request: Request) -> Response:
    """Every live worker (with Redis, those of the other edges too, as of their last share)."""
    edge = authorized(request)
    now = time.time()
    listed = []
    for item in edge.dispatcher.workers.everywhere():
        listed.append(
            {key: value for key, value in item.items() if key not in ("connected_at", "last_seen_at")}
            | {
                "connected_s": round(now - item["connected_at"], 3),
                "last_seen_s": round(now - item["last_seen_at"], 3),
            }
        )
    return JSONResponse({"workers": listed})


def work_routes() -> list[Route]:
    leases = "/api/v1/work/jobs/{job_id}/leases/{token}"
    return [
        Route("/api/v1/work/pull", counted("work_pull", pull), methods=["POST"]),
        Route(leases + "/extend", counted("work_extend", extend), methods=["POST"]),
        Route(leases + "/complete", counted("work_complete", complete), methods=["POST"]),
        Route("/api/v1/work/workers", counted("work_workers", workers), methods=["GET"]),
    ]
