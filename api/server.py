"""`pe serve`: the edge, an in-process worker pulling from it, served by Hypercorn (HTTP/1.1 and HTTP/2)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import platform
import signal
from collections.abc import AsyncIterator

from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.routing import Mount

from api.app import Edge, create_app
from api.connections import ConnectionManager
from api.images import ImageResolver
from api.jobs import Dispatcher
from api.listener import Listener
from api.metrics import Metrics
from api.sitepolicy import FramePolicy
from api.state import make_state
from api.workers import IN_PROCESS, WorkerRegistry, WorkerReport
from catalog.entry import load_catalog
from catalog.store import ImageStore
from pe.settings import Settings
from web.assets import AssetError
from web.compress import PrecompressedFiles
from web.site import cached_site
from worker.pull import PullWorker
from worker.runners import make_runners

log = logging.getLogger("pe.edge")


def make_edge(settings: Settings) -> Edge:
    metrics = Metrics()
    store = ImageStore(settings.images_dir)
    catalog = load_catalog()
    resolver = ImageResolver(catalog, store)
    for image_id in catalog:
        if store.current(image_id) is None:
            log.warning(
                "image %s is not built; runs of it answer 503 until `pe images build %s`", image_id, image_id
            )
    state = make_state(settings)
    dispatcher = Dispatcher(state, metrics, WorkerRegistry(state, settings.worker_wait_s))
    metrics.gauge("pe_queue_depth", "Jobs waiting for a worker", lambda: dispatcher.depth)
    live = dispatcher.workers.live
    metrics.gauge("pe_workers_connected", "Workers seen by this edge lately", lambda: len(live()))
    metrics.gauge(
        "pe_worker_slots", "Slots of the workers connected", lambda: sum(w.report.slots for w in live())
    )
    metrics.gauge(
        "pe_worker_leases", "Jobs leased to the workers connected", lambda: sum(len(w.leases) for w in live())
    )
    return Edge(
        settings=settings, images=resolver, dispatcher=dispatcher, metrics=metrics, buckets=state.buckets
    )


def make_app(settings: Settings, *, with_worker: bool = True) -> Starlette:
    """The edge app; with `with_worker`, its lifespan also runs an in-process worker with `settings.slots`."""
    edge = make_edge(settings)
    state = edge.dispatcher.state

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await state.start()
        await edge.dispatcher.workers.start()
        try:
            async with in_process_worker(edge) if with_worker else contextlib.nullcontext():
                # What exists now (modules, settings, catalogue, runners) lives as long as the edge:
                # frozen, it is out of the collector's way, and a full collection no longer stalls
                # requests for 14 to 115 ms (measured under `pe bench workers`; worker/remote.py too).
                gc.collect()  # the garbage of start-up is not frozen with the rest
                gc.freeze()
                yield
        finally:
            await edge.dispatcher.workers.close()
            await state.close()

    app = create_app(edge, lifespan=lifespan)
    # The static site at /, after the API routes (docs/web.md): built on start, cached by its inputs;
    # only /embed/ may be framed by other sites (api/sitepolicy.py).
    # Without npm (an API-only host) the API is served alone.
    try:
        site = cached_site(settings.cache_dir)
    except AssetError as error:
        log.error("serving the API without the web site, which could not be built: %s", error)
    else:
        pages = FramePolicy(PrecompressedFiles(directory=site, html=True), settings.frame_ancestors)
        app.router.routes.append(Mount("/", pages))
    return app


@contextlib.asynccontextmanager
async def in_process_worker(edge: Edge) -> AsyncIterator[None]:
    """A worker with `settings.slots` slots pulling from this edge, until the context ends; then the
    runs in progress finish (and complete) before the runners close."""
    runners = make_runners(edge.settings, edge.images.store)
    times = edge.dispatcher.workers.runner_times
    worker = PullWorker(
        edge.dispatcher, runners, edge.settings.slots, on_ran=lambda lease, ms: times.record(lease.job.id, ms)
    )
    report = WorkerReport(IN_PROCESS, edge.settings.runners, platform.machine(), slots=edge.settings.slots)
    edge.dispatcher.workers.seen(report, peer=IN_PROCESS)
    task = asyncio.create_task(worker.serve(), name="in-process-worker")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.drain()
        for runner in runners.values():
            await runner.close()


def hypercorn_config(settings: Settings) -> Config:
    config = Config()
    config.bind = [f"{settings.host}:{settings.port}"]
    config.h2_max_concurrent_streams = settings.max_streams
    # Hypercorn would end a connection after 1,000 requests with a GOAWAY of its own, stranding the
    # streams in flight (python-hyper/h2 #1181); the connection manager decides when connections end.
    config.keep_alive_max_requests = 2**62
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    if settings.tls_cert:
        config.certfile = settings.tls_cert
        config.keyfile = settings.tls_key
        config.alpn_protocols = ["h2", "http/1.1"]
    return config


async def serve(settings: Settings, *, with_worker: bool = True) -> None:
    """Serve until SIGINT or SIGTERM; then drain connections for up to `grace_s` (api/listener.py),
    and the lifespan stops the worker and its runners. Without `with_worker`: `pe edge`."""
    app = make_app(settings, with_worker=with_worker)
    manager = ConnectionManager(settings.max_connections, settings.idle_timeout_s, app.state.edge.metrics)
    stop = asyncio.Event()

    def stopping() -> None:
        stop.set()
        app.state.edge.dispatcher.state.stop_offers()  # workers' long polls must not hold the drain

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping)
    scheme = "https" if settings.tls_cert else "http"
    log.info("serving on %s://%s:%d (HTTP/1.1 and HTTP/2)", scheme, settings.host, settings.port)
    await Listener(app, hypercorn_config(settings), manager, settings.grace_s).serve(stop)
