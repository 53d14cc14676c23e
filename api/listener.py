"""The edge's own accept loop, feeding each admitted socket to Hypercorn's HTTP/1.1 and HTTP/2
protocol classes (see docs/edge.md, "Connection management", for why not `hypercorn.asyncio.serve`).

Per socket: the connection manager admits it (retiring or draining others at the limit), then
Hypercorn's `ProtocolWrapper` speaks HTTP over it, with the edge's protocol subclasses installed
(api/h1.py, api/h2.py). On shutdown: stop accepting, drain every connection, wait up to the grace
period, then run the app's lifespan shutdown (the in-process worker stops there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.asyncio.lifespan import Lifespan
from hypercorn.asyncio.task_group import TaskGroup
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol import ProtocolWrapper
from hypercorn.typing import ASGIFramework, ConnectionState, LifespanState
from hypercorn.utils import parse_socket_addr

from api import connections, h2
from api.connections import Connection, ConnectionManager
from api.errors import error_response

log = logging.getLogger("pe.edge")

MAX_RECV = 2**16
LINGER_S = 1.0
"""After its GOAWAY (and a TCP FIN), how long a connection waits for the client to close first:
closing a socket with unread input makes the kernel send RST, which can destroy the GOAWAY
before the client has read it."""


async def busy_app(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def]
    """What a connection that could not get a slot is answered: 503, retry in a second."""
    if scope["type"] == "http":
        message = "the edge is at its connection limit and every connection is busy; retry shortly"
        await error_response(503, "busy", message, {"Retry-After": "1"})(scope, receive, send)


class Listener:
    def __init__(self, app: ASGIFramework, config: Config, manager: ConnectionManager, grace_s: float):
        h2.install()
        self.app = ASGIWrapper(app)
        self.busy_app = ASGIWrapper(busy_app)
        self.config = config
        self.manager = manager
        self.grace_s = grace_s
        self.context = WorkerContext(None)
        self.state: LifespanState = {}
        self.tasks: set[asyncio.Task] = set()

    async def serve(self, stop: asyncio.Event) -> None:
        """Start the app, accept until `stop` is set, then drain and shut down."""
        loop = asyncio.get_running_loop()
        lifespan = Lifespan(self.app, self.config, loop, self.state)
        lifespan_task = loop.create_task(lifespan.handle_lifespan())
        await lifespan.wait_for_startup()
        if lifespan_task.done() and lifespan_task.exception() is not None:
            raise lifespan_task.exception()  # type: ignore[misc]
        servers = await self._listen()
        self.manager.start()
        try:
            await stop.wait()
        finally:
            for server in servers:
                server.close()
            await self._drain()
            await lifespan.wait_for_shutdown()
            lifespan_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lifespan_task

    async def _listen(self) -> list[asyncio.Server]:
        sockets = self.config.create_sockets()
        tls = self.config.create_ssl_context() if self.config.ssl_enabled else None
        servers = []
        for sock in sockets.secure_sockets:
            servers.append(
                await asyncio.start_server(
                    self._accepted, sock=sock, backlog=self.config.backlog, ssl=tls,
                    ssl_handshake_timeout=self.config.ssl_handshake_timeout,
                )
            )  # fmt: skip
        for sock in sockets.insecure_sockets:
            servers.append(await asyncio.start_server(self._accepted, sock=sock, backlog=self.config.backlog))
        return servers

    async def _drain(self) -> None:
        self.manager.drain_all("shutdown")
        if not await self.manager.wait_closed(self.grace_s):
            log.warning("%d connections still open after the grace period; closing them", len(self.tasks))
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.manager.stop()

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        # Cancelled only at the end of the grace period; ending quietly here keeps asyncio's
        # start_server from logging each cancelled connection as an error.
        with contextlib.suppress(asyncio.CancelledError):
            conn = await self.manager.admit()
            connections.current.set(conn)
            await ServedSocket(self, conn, reader, writer).run()


class ServedSocket:
    """One admitted socket, spoken to by Hypercorn's protocol classes (the part of Hypercorn's
    TCPServer the edge keeps; idle timing and closing belong to the connection manager)."""

    def __init__(
        self, listener: Listener, conn: Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.listener = listener
        self.conn = conn
        self.reader = reader
        self.writer = writer
        self.send_lock = asyncio.Lock()
        self.read_done = asyncio.Event()
        self.protocol: ProtocolWrapper
        conn.close_transport = self.close

    async def run(self) -> None:
        listener = self.listener
        try:
            sock = self.writer.get_extra_info("socket")
            client = parse_socket_addr(sock.family, sock.getpeername())
            server = parse_socket_addr(sock.family, sock.getsockname())
            tls = self.writer.get_extra_info("ssl_object")
            alpn = tls.selected_alpn_protocol() if tls is not None else "http/1.1"
            async with TaskGroup(asyncio.get_running_loop()) as task_group:
                self.protocol = ProtocolWrapper(
                    listener.app if self.conn.counted else listener.busy_app,
                    listener.config, listener.context, task_group, ConnectionState(listener.state),
                    tls is not None, client, server, self.send, alpn,
                )  # fmt: skip
                await self.protocol.initiate()
                await self._read()
        except OSError:
            pass
        finally:
            await self._close_now()
            self.conn.socket_closed()

    async def _read(self) -> None:
        try:
            while not self.reader.at_eof():
                try:
                    data = await self.reader.read(MAX_RECV)
                except (ConnectionError, OSError, ssl.SSLError):
                    break
                if not self.conn.closing:  # once closing, nothing the client sends matters
                    await self.protocol.handle(RawData(data))
        finally:
            # Also when cancelled at the end of the grace period: the protocol then closes its
            # streams, so the apps still running see a disconnect instead of waiting on a dead socket.
            self.read_done.set()
            await self.protocol.handle(Closed())

    async def send(self, event: Event) -> None:
        """Hypercorn's protocols write through this. (They also send `Updated` events, the cue for
        Hypercorn's own idle timer; the connection manager times idleness itself.)"""
        if isinstance(event, RawData):
            async with self.send_lock:
                try:
                    self.writer.write(event.data)
                    await self.writer.drain()
                except (ConnectionError, RuntimeError):
                    await self.protocol.handle(Closed())
        elif isinstance(event, Closed) and not self.conn.closing:
            # The protocol is done with the socket (an error, or `Connection: close`). Close it
            # from another task: this one may be the reader, which close() waits for.
            self.conn.socket_closing()
            asyncio.get_running_loop().create_task(self.close())

    async def close(self) -> None:
        """Close after a goodbye: FIN first, then wait (up to LINGER_S) for the client's close."""
        if self.writer.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                self.writer.write_eof()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.read_done.wait(), LINGER_S)
        await self._close_now()

    async def _close_now(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, RuntimeError, ssl.SSLError, asyncio.CancelledError):
            await self.writer.wait_closed()
