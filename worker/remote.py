"""`pe worker`: a worker on any host, pulling jobs from an edge over one HTTP/2 connection.

The protocol is in docs/workers.md. `EdgeSource` is the JobSource of worker/pull.py over HTTP: its
pulls are long polls, several at once as streams of one connection, each telling the edge what this
worker can run (runners, architecture, the images it holds); extends renew leases; the output goes
back as a streamed cpio archive. Images it lacks come from the edge into its ImageCache.

The HTTP/2 connection is worker/edgelink.py's: a draining edge's connection (no new streams, then
GOAWAY) is left for a new one while the streams the edge took are still answered on it. When the
edge goes away (connection refused or reset, a stream it did not take, 503), requests are sent again
after a backoff, exponential with full jitter (a random delay up to the bound, so that workers do not
come back in step) over a new connection. Pulls retry for ever, extends and uploads only while the
lease may still hold: after that the edge has queued the job again.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import platform
import random
import secrets
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from pe.settings import Settings
from wire.result import RunOutput, iter_pack_output
from worker.edgelink import Answer, EdgeLink, LinkError
from worker.imagecache import FetchError, ImageCache
from worker.pull import RUNNER_MS_HEADER, Lease, PullWorker, SourceRefused, lease_ids
from worker.runner import Job, Runner

log = logging.getLogger("pe.worker.remote")

WAIT_S = 20.0  # how long a pull asks the edge to wait for a job (PE_WORKER_WAIT_S; the edge caps it)
FETCHING_WAIT_S = 1.0  # … while images are downloading: the next pull then says they are here
PREFETCH_WINDOW_S = 0.5  # see worker/pull.py
BACKOFF_BASE_S = 0.1
BACKOFF_MAX_S = 5.0
CONNECT_TIMEOUT_S = 5.0
UPLOAD_TIMEOUT_S = 60.0
UPLOAD_CHUNK_BYTES = 64 * 1024  # see _chunks
CPIO = "application/x-cpio"
JSON = "application/json"


class EdgeError(Exception):
    """The edge answered a worker request with an unexpected error."""


def backoff_s(failures: int) -> float:
    """Full jitter: uniform up to an exponentially growing bound (capped)."""
    return random.uniform(0, min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2**failures))


def worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class EdgeSource:
    """A PrefetchSource (worker/pull.py) over HTTP/2 to the edge at `edge_url`, with the image cache
    (`images`) it fills from there."""

    def __init__(
        self,
        edge_url: str,
        token: str,
        *,
        runners: tuple[str, ...],
        slots: int,
        images_dir: Path,
        images_bytes: int,
        worker: str = "",
        wait_s: float = WAIT_S,
    ) -> None:
        self.worker = worker or worker_id()
        self.runners = runners
        self.slots = slots
        self.images = ImageCache(images_dir, images_bytes, self.download)
        self.wait_s = wait_s
        self.running: Callable[[], int] = lambda: 0  # set by whoever runs the jobs, for the edge's view
        self.link = EdgeLink(
            edge_url,
            {"authorization": f"Bearer {token}"},
            connect_timeout_s=CONNECT_TIMEOUT_S,
            on_connect=self._up,
        )
        self._expires: dict[str, float] = {}  # lease token → when (monotonic) the lease runs out
        self._runner_ms: dict[str, str] = {}  # lease token → the runner's time, until its upload
        self._down_since: float | None = None  # when the edge stopped answering
        self._connected = False

    async def aclose(self) -> None:
        await self.link.aclose()

    # JobSource

    async def pull(self) -> Lease:
        while True:
            lease = await self.pull_within(self.wait_s)
            if lease is not None:
                return lease

    async def pull_within(self, wait_s: float) -> Lease | None:
        fetching = self.images.fetching()
        report = {
            "worker": self.worker,
            "runners": list(self.runners),
            "arch": platform.machine(),
            "images": self.images.held(),
            "fetching": fetching,
            "slots": self.slots,
            "running": self.running(),
            "wait_s": min(wait_s, FETCHING_WAIT_S) if fetching else wait_s,
        }
        body = json.dumps(report).encode()
        timeout_s = report["wait_s"] + 10  # the long poll, then time for the answer

        def pull() -> Awaitable[Answer]:
            return self.link.request(
                "POST", "/api/v1/work/pull", body=body, headers={"content-type": JSON}, timeout_s=timeout_s
            )

        answer = _json(await self._send("pull", pull), 200)
        if answer.get("job") is None:
            self.images.want(answer.get("wanted_images", []))
            return None
        held = answer["lease"]
        lease = Lease(Job.from_json(answer["job"]), held["token"], float(held["seconds"]), held["attempt"])
        self._expires[lease.token] = time.monotonic() + lease.seconds
        digest = lease.job.image_digest
        self.images.pin(digest)  # until the lease ends (`_release`)
        log.info("leased", extra={**lease_ids(lease), "attempt": lease.attempt, "image": digest})
        if digest not in self.images.held():  # evicted while the pull was out: fetch it back
            try:
                await self.images.fetch(digest)
            except FetchError as error:
                log.error("cannot fetch the image of a leased job: %s", error, extra=lease_ids(lease))
        return lease

    async def extend(self, lease: Lease) -> bool:
        url = f"/api/v1/work/jobs/{lease.job.id}/leases/{lease.token}/extend"
        timeout_s = self.wait_s + 10

        def extend() -> Awaitable[Answer]:
            return self.link.request("POST", url, timeout_s=timeout_s)

        response = await self._send("extend", extend, until=self._expiry(lease))
        if response.status == 409:
            self._release(lease)
            return False
        seconds = float(_json(response, 200)["seconds"])
        self._expires[lease.token] = time.monotonic() + seconds
        return True

    async def complete(self, lease: Lease, output: RunOutput) -> bool:
        """Upload the output, streamed; again after a failure while the lease may hold. False when the
        edge no longer held the lease (after a retry, maybe because the first upload got through: the
        log line says how many attempts there were)."""
        url = f"/api/v1/work/jobs/{lease.job.id}/leases/{lease.token}/complete"
        headers = {"content-type": CPIO}
        runner_ms = self._runner_ms.pop(lease.token, None)
        if runner_ms is not None:
            headers[RUNNER_MS_HEADER] = runner_ms
        attempts = 0

        def upload() -> Awaitable[Answer]:
            nonlocal attempts
            attempts += 1
            return self.link.request(
                "POST", url, body=_chunks(output), headers=headers, timeout_s=UPLOAD_TIMEOUT_S
            )

        started = time.monotonic()
        try:
            response = await self._send("upload", upload, until=self._expiry(lease))
        finally:
            self._release(lease)
        accepted = bool(_json(response, 200)["accepted"])
        seconds = round(time.monotonic() - started, 3)
        status = str(output.result.status)
        log.info(
            "uploaded",
            extra={
                **lease_ids(lease),
                "accepted": accepted,
                "attempts": attempts,
                "status": status,
                "seconds": seconds,
            },
        )
        return accepted

    def ran(self, lease: Lease, runner_ms: float) -> None:
        """The PullWorker's `on_ran`: the runner's time goes to the edge with the upload (api/timing.py)."""
        self._runner_ms[lease.token] = f"{runner_ms:.3f}"

    # Images

    async def download(self, digest: str) -> AsyncIterator[bytes]:
        """The bytes of an image from the edge's store (worker/imagecache.py checks them)."""
        path = f"/api/v1/images/{digest}.erofs"
        async with self.link.stream("GET", path, timeout_s=UPLOAD_TIMEOUT_S) as (status, _, pieces):
            if status != 200:
                text = b"".join([piece async for piece in pieces])[:200].decode(errors="replace")
                raise FetchError(f"the edge answered {status}: {text}")
            async for piece in pieces:
                yield piece

    # Sending

    def _release(self, lease: Lease) -> None:
        """The lease ended (output handed back, or lost): its image may go."""
        if self._expires.pop(lease.token, None) is not None:
            self.images.unpin(lease.job.image_digest)

    def _expiry(self, lease: Lease) -> float:
        return self._expires.get(lease.token, time.monotonic())

    async def _send(
        self, what: str, request: Callable[[], Awaitable[Answer]], *, until: float | None = None
    ) -> Answer:
        """The edge's answer to `request()`, sent again after a backoff when the connection fails or
        the edge answers 503, until `until` (monotonic; None: for ever). 401 and 422 raise
        SourceRefused; other errors EdgeError, as does a failure after `until`."""
        failures = 0
        while True:
            try:
                response = await request()
            except LinkError as error:  # refused, reset, a stream not taken, timeout
                why = str(error)
            else:
                if response.status != 503:
                    self._up()
                    if response.status in (401, 422):
                        raise SourceRefused(f"the edge refuses this worker: {_error_text(response)}")
                    return response
                why = f"503 {_error_text(response)}"
            self._down(why)
            failures += 1
            delay = backoff_s(failures)
            if until is not None and time.monotonic() + delay > until:
                raise EdgeError(f"{what}: the edge did not answer while the lease held ({why})")
            log.debug("%s: retrying in %.2f s: %s", what, delay, why)
            await asyncio.sleep(delay)

    def _up(self) -> None:
        """A connection is up (its preface sent; a long poll's answer may come much later), or the
        edge answered."""
        if self._down_since is not None:
            log.info("reconnected", extra={"after_s": round(time.monotonic() - self._down_since, 3)})
            self._down_since = None
        elif not self._connected:
            log.info("connected", extra={"edge": self.link.url, "worker": self.worker})
        self._connected = True

    def _down(self, why: str) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("edge unreachable, reconnecting with backoff: %s", why)


def _chunks(output: RunOutput) -> Iterator[bytes]:
    """The result archive in pieces of UPLOAD_CHUNK_BYTES or more (the last may be smaller): a small
    output goes in one piece, since each piece costs the edge and the worker a round of HTTP/2 work."""
    pending: list[bytes] = []
    size = 0
    for chunk in iter_pack_output(output):
        pending.append(chunk)
        size += len(chunk)
        if size >= UPLOAD_CHUNK_BYTES:
            yield b"".join(pending)
            pending, size = [], 0
    if pending:
        yield b"".join(pending)


def _json(response: Answer, status: int) -> Any:
    if response.status != status:
        raise EdgeError(f"the edge answered {response.status}: {_error_text(response)}")
    return response.json()


def _error_text(response: Answer) -> str:
    with contextlib.suppress(ValueError, KeyError, TypeError):
        error = response.json()["error"]
        return f"{error['code']}: {error['message']}"
    return response.text[:200]


async def work(settings: Settings, edge_url: str) -> int:
    """`pe worker`: the runners of `settings.runners` (as in `pe serve`), the image cache under
    `<cache_dir>/worker-images`, jobs from the edge at `edge_url` until SIGTERM (see `run_worker`). 1
    when a runner cannot start on this host."""
    from worker.runners import make_runners  # the same runners as the in-process worker's

    source = EdgeSource(
        edge_url,
        settings.worker_token,
        runners=settings.runners,
        slots=settings.slots,
        images_dir=settings.worker_images_dir,
        images_bytes=settings.worker_image_cache_bytes,
        wait_s=settings.worker_wait_s,
    )
    runners = make_runners(settings, source.images)
    try:
        for runner in runners.values():
            await runner.start()
    except Exception as error:  # SetupError, CgroupError, a guest that cannot be built, …
        log.error("the %s runner cannot start on this host: %s", runner.name, error)
        for started in runners.values():
            await started.close()
        await source.aclose()
        return 1
    # What exists now (modules, settings, runners) lives as long as the worker: frozen, it is out of
    # the collector's way, and a full collection no longer stalls a job's dispatch for 5 to 16 ms.
    gc.collect()
    gc.freeze()
    return await run_worker(source, runners)


async def run_worker(source: EdgeSource, runners: dict[str, Runner]) -> int:
    """Serve jobs until SIGTERM or SIGINT, then drain: pull no more, finish the jobs held, upload their
    outputs; 0. 2 when the edge refuses this worker."""
    worker = PullWorker(source, runners, source.slots, prefetch_window_s=PREFETCH_WINDOW_S, on_ran=source.ran)
    source.running = lambda: worker.running
    serving = asyncio.create_task(worker.serve(), name="pull-worker")
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, serving.cancel)
    log.info(
        "worker started", extra={"worker": source.worker, "slots": source.slots, "runners": ",".join(runners)}
    )
    code = 0
    try:
        await serving
    except asyncio.CancelledError:
        log.info("draining: no more pulls", extra={"held": worker.held})
    except SourceRefused as error:
        log.error("%s", error)
        code = 2
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await worker.drain()
        await source.images.close()
        for runner in runners.values():
            await runner.close()
        await source.aclose()
    log.info("worker stopped", extra={"worker": source.worker})
    return code
