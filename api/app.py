"""The edge's HTTP routes (DESIGN.md, "Contracts")."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Lifespan

from api.clients import TrustedProxies, client_key
from api.cors import Cors
from api.encoded import EncodedOutputs
from api.errors import EXCEPTION_HANDLERS, ApiError
from api.images import ImageResolver
from api.jobs import Dispatcher
from api.metrics import Metrics
from api.prefer import parse_prefer
from api.ratelimit import BucketStore, MemoryBuckets, RateLimits, raw_quota_headers
from api.state.base import Progress
from api.timing import ReceivedAt, server_timing
from catalog.options import expand_command, option_values
from pe.settings import Settings
from wire.result import RunOutput
from wire.spec import DEFAULT_LIMITS, RunSpec, parse_spec_cpio, parse_spec_json, request_hash
from worker.runner import Job

CPIO = "application/x-cpio"
JSON = "application/json"
CPIO_MAGIC = b"070701"
# curl --data-binary sends this when no Content-Type is given; the body says what it is.
UNLABELLED = ("", "application/x-www-form-urlencoded")
ENCODED_BYTES = 32 << 20  # answers of stored runs kept encoded (api/encoded.py)
# A run id names exactly what ran (image digest, argv, files, limits…): its stored answer may be kept
# by any cache for as long as it likes (docs/edge.md, "Caching").
IMMUTABLE = "public, max-age=31536000, immutable"
# The body is JSON or cpio by Accept, so a cache keys it by Accept too.
STORED_RUN_HEADERS = [(b"cache-control", IMMUTABLE.encode()), (b"vary", b"Accept")]
# The answer lives at Content-Location; a POST is not a cache entry.
POSTED_RUN_HEADERS = [(b"cache-control", b"no-store")]
# A run in flight (202): its state changes by the second, so no cache keeps it (and it has no ETag).
PROGRESS_HEADERS = [(b"cache-control", b"no-store"), (b"content-type", JSON.encode())]
ASYNC_WAIT_MAX_S = 10.0  # POST with `Prefer: respond-async, wait=N`: N is cut to this
POLL_WAIT_MAX_S = 30.0  # GET of a run in flight with `Prefer: wait=N` (a long poll): N is cut to this
Headers = list[tuple[bytes, bytes]]


@dataclasses.dataclass
class Edge:
    """What the routes need, built once per process by `pe serve` (see api/server.py)."""

    settings: Settings
    images: ImageResolver
    dispatcher: Dispatcher
    metrics: Metrics
    buckets: BucketStore = dataclasses.field(default_factory=MemoryBuckets)
    # Read from the settings once, not per request:
    proxies: TrustedProxies = dataclasses.field(init=False)
    rate_limits: RateLimits = dataclasses.field(init=False)
    encoded: EncodedOutputs = dataclasses.field(default_factory=lambda: EncodedOutputs(ENCODED_BYTES))

    def __post_init__(self) -> None:
        self.proxies = TrustedProxies.parse(self.settings.trusted_proxies, self.settings.forwarded_header)
        self.rate_limits = RateLimits(self.buckets, self.settings)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "too_large", f"request body is over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, "too_large", f"request body is over {limit} bytes")
    return bytes(body)


def parse_run_request(content_type: str, body: bytes) -> RunSpec:
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type in UNLABELLED:
        media_type = CPIO if body.startswith(CPIO_MAGIC) else JSON
    if media_type == JSON:
        return parse_spec_json(body)
    if media_type == CPIO:
        return parse_spec_cpio(body)
    raise ApiError(415, "unsupported_media_type", f"send {JSON} or {CPIO}, not {media_type!r}")


def request_header(request: Request, name: bytes) -> str:
    """The first `name` header of `request`, or "". One pass over the raw headers: the run routes' answers
    are the edge's most frequent, and `request.headers.get` costs an exception for a missing header."""
    for key, value in request.scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return ""


class PreparedResponse(Response):
    """A response whose header block the route built as ASGI pairs (lower-case names, bytes), sparing
    the run routes Starlette's per-header encoding (a cache hit's headers are most of its work)."""

    def __init__(self, status_code: int, raw_headers: Headers, body: bytes = b"") -> None:
        self.status_code = status_code
        self.raw_headers = raw_headers
        self.body = body
        self.background = None


def output_response(
    request: Request, edge: Edge, output: RunOutput, cached: bool, headers: Headers
) -> Response:
    """`output` as JSON or cpio (by Accept), after `headers`."""
    cpio = CPIO in request_header(request, b"accept")
    body = edge.encoded.body(output, cached=cached, cpio=cpio)
    media_type = CPIO if cpio else JSON
    headers += [(b"content-length", b"%d" % len(body)), (b"content-type", media_type.encode())]
    return PreparedResponse(200, headers, body)


def make_job(edge: Edge, spec: RunSpec) -> Job:
    """The job for `spec`: its image, runner, argv (the spec's, else the image's command filled from
    the options) and limits (defaults, then the image's, then the request's)."""
    image = edge.images.resolve(spec)
    runner = spec.runner or edge.settings.runner_default
    if runner not in edge.settings.runners:
        offered = ", ".join(edge.settings.runners)
        raise ApiError(422, "bad_runner", f"runner {runner!r} is not offered here (offered: {offered})")
    values = option_values(image.entry, dict(spec.options))  # OptionError: 422 bad_option
    argv = spec.argv or expand_command(image.entry, values)
    if not argv:
        raise ApiError(422, "argv_required", f"image {image.entry.id!r} has no command template: give argv")
    limits = DEFAULT_LIMITS.merged(image.entry.limits, dict(spec.limit_overrides))
    spec = dataclasses.replace(spec, limits=limits)
    run_id = request_hash(
        dataclasses.replace(spec, argv=argv),
        image_digest=image.meta.digest,
        runner=runner,
        outputs=image.entry.outputs,
    )
    return Job(
        id=run_id,
        spec=spec,
        argv=argv,
        image_id=image.entry.id,
        image_digest=image.meta.digest,
        runner=runner,
        outputs=image.entry.outputs,
    )


async def run(request: Request) -> Response:
    """Every request takes a token from the client's "requests" bucket; one the cache cannot answer
    also takes from "runs" (unless it joins the identical run in flight, which costs no more than the
    cache hit it would be a moment later), and a fresh one first from "fresh" (docs/edge.md, "Rate
    limits")."""
    edge: Edge = request.app.state.edge
    client = client_key(request, edge.proxies)
    quota = await edge.rate_limits.charge(client, edge.rate_limits.requests)
    body = await read_body(request, edge.settings.max_body_bytes)
    spec = parse_run_request(request.headers.get("content-type", ""), body)
    job = make_job(edge, spec)
    output = await edge.dispatcher.stored(job.id) if spec.cache else None
    if output is not None:
        edge.metrics.cache_hits.inc()
        cached = True
    else:
        if not spec.cache:
            quota = await edge.rate_limits.charge(client, edge.rate_limits.fresh, quota)
        if not spec.cache or not await edge.dispatcher.in_flight(job.id):
            quota = await edge.rate_limits.charge(client, edge.rate_limits.runs, quota)
        future = await edge.dispatcher.submit(job, use_cache=spec.cache, client=client)
        prefer = parse_prefer(request.headers.getlist("prefer"))
        if prefer.respond_async:
            output = await settled(future, prefer.wait(0, ASYNC_WAIT_MAX_S))
            if output is None and (progress := await edge.dispatcher.progress(job.id)) is not None:
                location = b"/api/v1/runs/%s" % job.id.encode()
                headers = [(b"location", location), (b"preference-applied", b"respond-async")]
                return progress_response(job.id, progress, headers + raw_quota_headers(quota))
        if output is None:  # not async, or it finished just now
            output = await edge.dispatcher.outcome(future, job.runner)
        cached = False
    headers = [
        (b"etag", b'"%s"' % job.id.encode()),
        (b"content-location", b"/api/v1/runs/%s" % job.id.encode()),
        *POSTED_RUN_HEADERS,
        *raw_quota_headers(quota),
        server_timing(request, edge.dispatcher.workers.runner_times, job.id, cached),
    ]
    return output_response(request, edge, output, cached, headers)


async def get_run(request: Request) -> Response:
    """A stored run (200, 304); a run in flight is a 202, held with `Prefer: wait=N` until its state
    changes (a long poll; docs/api.md, "Asynchronous runs"). Takes from "requests" only."""
    edge: Edge = request.app.state.edge
    quota = await edge.rate_limits.charge(client_key(request, edge.proxies), edge.rate_limits.requests)
    run_id = request.path_params["run_id"]
    output = await edge.dispatcher.stored(run_id)
    if output is None:
        progress = await edge.dispatcher.progress(run_id)
        wait_s = parse_prefer(request.headers.getlist("prefer")).wait(0, POLL_WAIT_MAX_S)
        if progress is not None and wait_s > 0:
            progress = await edge.dispatcher.progress(run_id, progress, wait_s)
        if progress is not None:
            return progress_response(run_id, progress, raw_quota_headers(quota))
        output = await edge.dispatcher.stored(run_id)  # it may have finished since the first look
    if output is None:
        raise ApiError(404, "unknown_run", f"no stored run {run_id!r} (it may have been evicted)")
    etag = f'"{run_id}"'
    headers = [(b"etag", etag.encode()), *STORED_RUN_HEADERS, *raw_quota_headers(quota)]
    if etag_matches(request_header(request, b"if-none-match"), etag):
        return PreparedResponse(304, headers)
    return output_response(request, edge, output, True, headers)


async def settled(future: asyncio.Future[RunOutput], wait_s: float) -> RunOutput | None:
    """The output of `future` if it is there within `wait_s`, else None (the run goes on)."""
    with contextlib.suppress(TimeoutError):
        return await asyncio.wait_for(asyncio.shield(future), wait_s)
    return None


def progress_response(run_id: str, progress: Progress, headers: Headers) -> Response:
    """202: `run_id` is queued or running (docs/api.md, "Asynchronous runs")."""
    body = json.dumps(progress.to_json(run_id)).encode()
    headers += [*PROGRESS_HEADERS, (b"content-length", b"%d" % len(body))]
    return PreparedResponse(202, headers, body)


def etag_matches(if_none_match: str, etag: str) -> bool:
    """Whether an `If-None-Match` value (`*` or a list of entity tags) matches `etag`, weakly compared:
    `W/"x"` matches `"x"` (RFC 9110 13.1.2)."""
    if if_none_match.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in if_none_match.split(","))


async def catalog(request: Request) -> Response:
    edge: Edge = request.app.state.edge
    images = []
    for entry in edge.images.catalog.values():
        meta = edge.images.store.current(entry.id)
        image = entry.to_json()
        image["digest"] = meta.digest if meta else None
        image["size"] = meta.size if meta else None
        images.append(image)
    return JSONResponse({"images": images})


async def image_file(request: Request) -> Response:
    """An image's erofs file, with Range support (the browser reads images piecewise, wire/erofs).
    Content-addressed, so cacheable for ever. A packed image is served from its own erofs file,
    regenerated from the pack on first request (seconds, in a thread) and kept by the store."""
    import logging

    from starlette.concurrency import run_in_threadpool

    from catalog.pack import PackError

    edge: Edge = request.app.state.edge
    digest = request.path_params["digest"]
    if not digest.startswith("sha256:"):
        digest = "sha256:" + digest
    store = edge.images.store
    try:
        path = store.image_path(digest)  # the store's own digest rule
        if not path.is_file():  # packed (or absent): regenerating takes seconds, off the loop
            path = await run_in_threadpool(store.image_file, digest)
    except ValueError:
        raise ApiError(
            400, "bad_digest", "an image digest is sha256:<64 lowercase hex digits>, or the hex"
        ) from None
    except LookupError:
        raise ApiError(404, "unknown_digest", f"no image {digest} here") from None
    except PackError as error:  # the details (host paths, mkfs output) stay in the server's log
        logging.getLogger("pe.api").error("image %s: %s", digest, error)
        raise ApiError(500, "image_unavailable", f"image {digest} could not be read from its pack") from None
    headers = {"ETag": f'"{digest}"', "Cache-Control": "public, max-age=31536000, immutable"}
    return FileResponse(path, media_type="application/octet-stream", headers=headers)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def metrics(request: Request) -> Response:
    edge: Edge = request.app.state.edge
    return PlainTextResponse(edge.metrics.render(), media_type="text/plain; version=0.0.4")


Endpoint = Callable[[Request], Awaitable[Response]]


def counted(route: str, endpoint: Endpoint) -> Endpoint:
    """Count every answer of `endpoint` in pe_requests_total, errors included."""

    async def counted_endpoint(request: Request) -> Response:
        edge: Edge = request.app.state.edge
        status = 500
        try:
            response = await endpoint(request)
            status = response.status_code
            return response
        except Exception as error:
            status = getattr(error, "status", 500)  # ApiError and WireError carry theirs
            raise
        finally:
            edge.metrics.requests.inc(route=route, status=str(status))

    return counted_endpoint


def create_app(edge: Edge, lifespan: Lifespan[Starlette] | None = None) -> Starlette:
    from api.gists import gist_proxy, gist_routes  # they build on this module's helpers
    from api.work import work_routes

    routes = [
        Route("/api/v1/run", counted("run", run), methods=["POST"]),
        Route("/api/v1/runs/{run_id}", counted("runs", get_run), methods=["GET"]),
        Route("/api/v1/catalog", counted("catalog", catalog), methods=["GET"]),
        Route("/api/v1/images/{digest}.erofs", counted("images", image_file), methods=["GET"]),
        *gist_routes(),
        *work_routes(),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    cors = Middleware(Cors, origins=edge.settings.cors_origins)
    received = Middleware(ReceivedAt)  # outermost: Server-Timing's start (api/timing.py)
    app = Starlette(
        routes=routes, middleware=[received, cors], exception_handlers=EXCEPTION_HANDLERS, lifespan=lifespan
    )
    app.state.edge = edge
    app.state.gists = gist_proxy(edge)
    return app
