"""The edge's connection manager: how many client connections are open, which are idle, and which
one gives way when the limit is reached. See docs/edge.md, "Connection management".

A `Connection` is one accepted socket. Its protocol (HTTP/2 in api/h2.py, HTTP/1.1 in api/h1.py)
reports streams opening and being answered, and offers two actions: stop taking new streams, and
say goodbye (GOAWAY on HTTP/2, nothing on HTTP/1.1) once every accepted stream is answered. The
manager decides when: after `idle_timeout_s` without a stream, when a new connection needs the slot
of the longest-idle one, when every connection is busy (the oldest drains), and on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Protocol

from api.metrics import Metrics

log = logging.getLogger("pe.edge.connections")

ADMIT_WAIT_S = 1.0
"""How long a new connection at the limit waits for a slot before it is answered 503."""
FRESH_S = 0.05
"""A connection idle for less than this (e.g. just accepted, first request not yet read) is not
retired to make room: retiring it would only make its client reconnect and take someone else's slot."""
NO_ERROR = 0


class StreamProtocol(Protocol):
    """What a connection's protocol (api/h2.py, api/h1.py) does when the manager asks."""

    def stop_new_streams(self) -> None:
        """Tell the client no new streams are accepted (HTTP/2: SETTINGS_MAX_CONCURRENT_STREAMS=0)."""

    async def goodbye(self, error_code: int) -> bool:
        """Say the connection ends (HTTP/2: GOAWAY with the last accepted stream); whether a GOAWAY
        was sent (HTTP/1.1 has none). Idempotent."""


current: contextvars.ContextVar[Connection] = contextvars.ContextVar("pe_connection")
"""The connection served by the running task; the protocol classes find theirs here."""


class Connection:
    """One accepted client connection, as the manager sees it."""

    def __init__(self, manager: ConnectionManager, number: int, counted: bool) -> None:
        self.manager = manager
        self.number = number
        self.counted = counted  # False for an overflow connection that is only answered 503
        self.holds_slot = counted  # counted and not yet closing
        self.opened_at = time.monotonic()
        self.idle_since = self.opened_at
        self.streams = 0
        self.allowance: int | None = None if counted else 1  # new streams it may still take
        self.reason: str | None = None if counted else "overflow"  # why it goes (the GOAWAY label)
        self.closing = False
        self.closed = asyncio.Event()
        self.protocol: StreamProtocol | None = None
        self.close_transport: Callable[[], Awaitable[None]] | None = None
        self._finishing: asyncio.Task | None = None

    @property
    def idle(self) -> bool:
        return self.streams == 0

    @property
    def draining(self) -> bool:
        return self.allowance == 0

    def take_stream(self) -> bool:
        """Whether a new stream may be accepted; counts it when it is."""
        if self.closing or self.allowance == 0:
            return False
        if self.allowance is not None:
            self.allowance -= 1
        self.streams += 1
        self.manager._became_busy(self)
        return True

    def stream_answered(self) -> None:
        self.streams -= 1
        if self.streams == 0:
            self.idle_since = time.monotonic()
            if self.allowance == 0:
                self._finish()
            else:
                self.manager._became_idle(self)

    def drain(self, reason: str) -> None:
        """Take no new streams; once every accepted one is answered, say goodbye and close."""
        if self.closing or self.draining:
            return
        self.allowance = 0
        self.reason = reason
        self.manager._left_idle(self)
        if self.protocol is not None:
            self.protocol.stop_new_streams()
        if self.streams == 0:
            self._finish()
        else:
            self.manager._changed()

    def abort(self, reason: str, error_code: int) -> None:
        """Close now, answered or not: for a client that breaks the protocol or abuses it."""
        if self.closing:
            return
        self.reason = reason
        self.allowance = 0
        self._finish(error_code)

    def _finish(self, error_code: int = NO_ERROR) -> None:
        if self.closing:
            return
        self.closing = True
        self.manager._closing(self)
        self._finishing = asyncio.get_running_loop().create_task(self._goodbye(error_code))

    async def _goodbye(self, error_code: int) -> None:
        if self.protocol is not None and await self.protocol.goodbye(error_code):
            self.manager.metrics.goaways.inc(reason=self.reason or "closed")
        if self.close_transport is not None:
            await self.close_transport()

    def socket_closing(self) -> None:
        """The protocol gave the socket up (an error, or HTTP/1.1 `Connection: close`)."""
        self.closing = True
        self.manager._closing(self)

    def socket_closed(self) -> None:
        """The socket is gone (closed by the client, by the protocol, or by the edge's goodbye)."""
        self.socket_closing()
        self.manager._forget(self)
        self.closed.set()


class ConnectionManager:
    """Counts connections against `max_connections`, retires idle ones and drains busy ones."""

    def __init__(self, max_connections: int, idle_timeout_s: float, metrics: Metrics) -> None:
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.metrics = metrics
        self.connections: dict[Connection, None] = {}  # every socket, oldest first
        self.open = 0  # counted connections that are not closing: what the limit bounds
        self.open_max = 0  # the most `open` has been since start
        self.idle: OrderedDict[Connection, None] = OrderedDict()  # counted and idle, longest idle first
        self.waiting = 0
        self._numbers = itertools.count(1)
        self._change = asyncio.Event()  # set, then replaced, whenever a slot may have come free
        self._sweeper: asyncio.Task | None = None
        metrics.gauge("pe_connections_open", "Client connections held open", lambda: self.open)
        metrics.gauge("pe_connections_open_max", "Most connections held open at once", lambda: self.open_max)
        metrics.gauge("pe_connections_idle", "Open connections with no stream", lambda: len(self.idle))
        metrics.gauge(
            "pe_connections_busy", "Open connections with streams", lambda: self.open - len(self.idle)
        )

    async def admit(self) -> Connection:
        """A record for a just-accepted socket. At the limit, the longest-idle connection is retired
        for it; if every connection is busy, the oldest ones drain and it waits up to ADMIT_WAIT_S for
        a slot; otherwise it comes back uncounted, to be answered 503 and closed."""
        deadline = time.monotonic() + ADMIT_WAIT_S
        while self.open >= self.max_connections:
            victim = self._longest_idle()
            if victim is not None:
                victim.drain("limit")
                break
            if self.waiting >= self.max_connections or time.monotonic() >= deadline:
                return self._register(counted=False)
            self._drain_oldest_busy()
            self.waiting += 1
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._change.wait(), min(FRESH_S, deadline - time.monotonic()))
            finally:
                self.waiting -= 1
        return self._register(counted=True)

    def _register(self, counted: bool) -> Connection:
        conn = Connection(self, next(self._numbers), counted)
        self.connections[conn] = None
        if counted:
            self.open += 1
            self.open_max = max(self.open_max, self.open)
            self.idle[conn] = None
        return conn

    def _longest_idle(self) -> Connection | None:
        now = time.monotonic()
        for conn in self.idle:
            if now - conn.idle_since >= FRESH_S:
                return conn
            break  # the rest have been idle for less time still
        return None

    def _drain_oldest_busy(self) -> None:
        draining = sum(1 for conn in self.connections if conn.counted and conn.draining and not conn.closing)
        if draining > self.waiting:
            return
        for conn in self.connections:
            if conn.counted and not conn.closing and not conn.draining and not conn.idle:
                conn.drain("busy")
                return

    def drain_all(self, reason: str) -> None:
        for conn in list(self.connections):
            conn.drain(reason)

    async def wait_closed(self, timeout_s: float) -> bool:
        """Whether every connection closed within `timeout_s`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_closed(), timeout_s)
        return not self.connections

    async def _all_closed(self) -> None:
        while self.connections:
            await next(iter(self.connections)).closed.wait()

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_idle(), name="idle-sweeper")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    async def _sweep_idle(self) -> None:
        """One task for all connections (not one timer each): retire those idle too long."""
        period = min(1.0, self.idle_timeout_s / 4)
        while True:
            await asyncio.sleep(period)
            cutoff = time.monotonic() - self.idle_timeout_s
            for conn in list(self.connections):
                if conn.idle and not conn.closing and conn.idle_since <= cutoff:
                    conn.drain("idle")

    # Bookkeeping, called by Connection.

    def _became_busy(self, conn: Connection) -> None:
        self.idle.pop(conn, None)

    def _became_idle(self, conn: Connection) -> None:
        if conn.counted and not conn.closing:
            self.idle[conn] = None
            self.idle.move_to_end(conn)
        self._changed()

    def _left_idle(self, conn: Connection) -> None:
        self.idle.pop(conn, None)

    def _closing(self, conn: Connection) -> None:
        if conn.holds_slot:
            conn.holds_slot = False
            self.open -= 1
        self.idle.pop(conn, None)
        self._changed()

    def _forget(self, conn: Connection) -> None:
        self.connections.pop(conn, None)
        self._changed()

    def _changed(self) -> None:
        self._change.set()
        self._change = asyncio.Event()
