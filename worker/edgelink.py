"""The worker's HTTP/2 link to the edge: a small client on asyncio streams and h2 (sans-IO).

Why not httpx: on this path every millisecond is dispatch overhead, and httpx/httpcore spent about
1 ms of the worker's time per request and sent each request as three writes (HEADERS, DATA,
END_STREAM), each one a wake-up of the edge (docs/performance.md, "Remote workers"). Here a request
whose body fits the flow-control window goes out in one write, and an answer is handed over once
its last frame is in.

One connection at a time, opened by the first request that needs it (TLS with ALPN h2 for https://,
prior knowledge for http://); requests are its streams. A connection that takes no new streams (the
edge's SETTINGS_MAX_CONCURRENT_STREAMS of 0 while it drains, or its GOAWAY) is left to finish the
streams it has: the next request opens a new one. A stream the edge took (up to GOAWAY's last stream
id) is still answered on the old connection; one it did not take, a refused stream, a connection
that fails or a timeout raise LinkError, and the request may be sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

READ_BYTES = 1 << 16
WINDOW_BYTES = 1 << 24  # how much of an answer (an image) may be in flight before the worker reads it
WRITE_BYTES = 1 << 16  # a large body is written in pieces of this size, each after the last drained


class LinkError(Exception):
    """The request got no answer: the connection could not be opened, failed or was closed before the
    answer, the edge did not take the stream, or it timed out. Sending it again is safe."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


class _Stream:
    """One request's answer as it arrives: the headers, then the body's pieces, then the end (None)."""

    def __init__(self, stream_id: int) -> None:
        self.id = stream_id
        self.headers: asyncio.Future[list[tuple[str, str]]] = asyncio.get_running_loop().create_future()
        self.pieces: asyncio.Queue[bytes | LinkError | None] = asyncio.Queue()
        self.ended = False  # the answer's last frame is in (or the stream failed)
        self.window = asyncio.Event()  # set when the edge lets more of the request body go

    def fail(self, error: LinkError) -> None:
        if not self.headers.done():
            self.headers.set_exception(error)
            self.headers.exception()  # retrieved here: whoever waits raises it
        if not self.ended:
            self.ended = True
            self.pieces.put_nowait(error)
        self.window.set()


class Connection:
    """One HTTP/2 connection: streams out, frames in (a task reads and dispatches them)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        # The requests' headers are this module's own, names lower-case: h2's checking and normalizing
        # of every outgoing header block would cost a third of sending it, on the dispatch path.
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding="utf-8",
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.h2 = h2.connection.H2Connection(config)
        self.h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW_BYTES,
            },
        )
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(WINDOW_BYTES)
        self.streams: dict[int, _Stream] = {}
        self.failed: LinkError | None = None  # why it is closed
        self.goaway = False
        self._flush()
        self._reading = asyncio.create_task(self._read(), name="edge-link-read")

    def takes_streams(self) -> bool:
        """Whether a new request may go on this connection."""
        limit = self.h2.remote_settings.max_concurrent_streams
        return self.failed is None and not self.goaway and self.h2.open_outbound_streams < limit

    def idle(self) -> bool:
        return not self.streams

    async def send(self, headers: list[tuple[str, str]], body: Iterable[bytes] | None) -> _Stream:
        """Open a stream with the request (`headers`, pseudo-headers first; None: no body); returns
        once its body is written (the answer comes later)."""
        if self.failed is not None:  # failed since it was chosen (while connecting)
            raise self.failed
        stream = _Stream(self.h2.get_next_available_stream_id())
        self.streams[stream.id] = stream
        try:
            self.h2.send_headers(stream.id, headers, end_stream=body is None)
            if body is not None:
                for piece in body:
                    await self._send_data(stream, memoryview(piece))
                self.h2.end_stream(stream.id)
            self._flush()
        except (h2.exceptions.ProtocolError, OSError, RuntimeError) as error:
            self.forget(stream, reset=True)
            raise self.failed or LinkError(f"cannot send the request: {error!r}") from None
        except BaseException:
            self.forget(stream, reset=True)
            raise
        return stream

    async def _send_data(self, stream: _Stream, data: memoryview) -> None:
        """Frames of `data` as the flow-control windows allow; written with the request's end unless
        there is more than WRITE_BYTES of it."""
        unwritten = 0
        while data:
            if self.failed is not None:
                raise self.failed
            window = self.h2.local_flow_control_window(stream.id)
            size = min(len(data), window, self.h2.max_outbound_frame_size)
            if size <= 0:  # wait for the edge's WINDOW_UPDATE
                self._flush()
                stream.window.clear()
                await stream.window.wait()
                continue
            self.h2.send_data(stream.id, data[:size].tobytes())
            data = data[size:]
            unwritten += size
            if unwritten >= WRITE_BYTES:
                self._flush()
                await self.writer.drain()
                unwritten = 0

    def received(self, stream: _Stream, size: int) -> None:
        """`size` bytes of the answer were read by the caller: the edge may send that much more."""
        with contextlib.suppress(h2.exceptions.ProtocolError, KeyError):
            self.h2.acknowledge_received_data(size, stream.id)
            self._flush()

    def forget(self, stream: _Stream, *, reset: bool) -> None:
        """The caller is done with `stream`; `reset` cancels it at the edge if it is still open."""
        self.streams.pop(stream.id, None)
        if reset and not stream.ended and self.failed is None:
            with contextlib.suppress(h2.exceptions.ProtocolError, KeyError):
                self.h2.reset_stream(stream.id, h2.errors.ErrorCodes.CANCEL)
                self._flush()
        if self.goaway and self.idle():
            self.close()

    def close(self) -> None:
        if self.failed is None:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.close_connection()
                self._flush()
            self._fail(LinkError("the connection was closed"))
        self._reading.cancel()
        self.writer.close()

    async def aclose(self) -> None:
        self.close()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reading
        with contextlib.suppress(OSError, ssl.SSLError):
            await self.writer.wait_closed()

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    def _fail(self, error: LinkError) -> None:
        if self.failed is None:
            self.failed = error
        for stream in self.streams.values():
            stream.fail(error)

    async def _read(self) -> None:
        why = "the edge closed the connection"
        try:
            while data := await self.reader.read(READ_BYTES):
                events = self.h2.receive_data(data)
                for event in events:
                    self._handle(event)
                self._flush()
        except (OSError, ssl.SSLError) as error:
            why = f"the connection failed: {error!r}"
        except h2.exceptions.ProtocolError as error:
            why = f"HTTP/2 protocol error: {error!r}"
            self._flush()  # h2's GOAWAY
        self._fail(LinkError(why))
        self.writer.close()

    def _handle(self, event: h2.events.Event) -> None:
        stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.ResponseReceived) and stream is not None:
            stream.headers.set_result(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            if stream is None:  # a stream the caller gave up: let the window open again
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            else:
                stream.pieces.put_nowait(event.data)
                if event.flow_controlled_length > len(event.data):  # padding is the link's to give back
                    self.received(stream, event.flow_controlled_length - len(event.data))
        elif isinstance(event, h2.events.StreamEnded) and stream is not None:
            stream.ended = True
            stream.pieces.put_nowait(None)
        elif isinstance(event, h2.events.StreamReset) and stream is not None:
            code = getattr(event.error_code, "name", event.error_code)
            stream.fail(LinkError(f"the edge reset the stream: {code}"))
        elif isinstance(event, h2.events.WindowUpdated):
            for waiting in self.streams.values() if not event.stream_id else [stream] if stream else []:
                waiting.window.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = True
            last = event.last_stream_id if event.last_stream_id is not None else 0
            for other in list(self.streams.values()):
                if other.id > last:  # not taken: safe to send again
                    other.fail(LinkError("the edge is going away (GOAWAY) and did not take the request"))
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            for waiting in self.streams.values():  # INITIAL_WINDOW_SIZE may have grown
                waiting.window.set()


class EdgeLink:
    """HTTP/2 requests to the edge at `url`, each with `headers` (authorization), over one connection
    at a time. `on_connect` is called when a new connection is up."""

    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        *,
        connect_timeout_s: float,
        on_connect: Callable[[], None] = lambda: None,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the edge's URL must be http:// or https://, not {url!r}")
        self.url = url.rstrip("/")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base_path = parts.path.rstrip("/")
        self.tls: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self.tls = ssl.create_default_context()  # honours SSL_CERT_FILE
            self.tls.set_alpn_protocols(["h2"])
        self.scheme_authority = [(":scheme", parts.scheme), (":authority", parts.netloc)]
        self.headers = [(name.lower(), value) for name, value in headers.items()]
        self.connect_timeout_s = connect_timeout_s
        self.on_connect = on_connect
        self._connection: Connection | None = None
        self._connecting: asyncio.Future[Connection] | None = None
        self._old: set[Connection] = set()  # left for a new one, finishing their streams

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | Iterable[bytes] = b"",
        headers: dict[str, str] | None = None,
        timeout_s: float,
    ) -> Answer:
        """The whole answer; LinkError when there is none within `timeout_s`."""
        async with self.stream(method, path, body=body, headers=headers, timeout_s=timeout_s) as (
            status,
            head,
            pieces,
        ):
            return Answer(status, head, b"".join([piece async for piece in pieces]))

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str,
        path: str,
        *,
        body: bytes | Iterable[bytes] = b"",
        headers: dict[str, str] | None = None,
        timeout_s: float,
    ) -> AsyncIterator[tuple[int, dict[str, str], AsyncIterator[bytes]]]:
        """The status, headers and body pieces of the answer, read as they come (each within
        `timeout_s`). Leaving early cancels the stream at the edge."""
        pieces = ([body] if body else None) if isinstance(body, bytes) else body
        request = [(":method", method), *self.scheme_authority, (":path", self.base_path + path)]
        request += self.headers + [(name.lower(), value) for name, value in (headers or {}).items()]
        if isinstance(body, bytes):
            request.append(("content-length", str(len(body))))
        try:
            async with asyncio.timeout(timeout_s):
                connection = await self._usable()
                stream = await connection.send(request, pieces)
        except TimeoutError:
            raise LinkError(f"no answer within {timeout_s} s") from None
        try:
            try:
                async with asyncio.timeout(timeout_s):
                    head = await stream.headers
            except TimeoutError:
                raise LinkError(f"no answer within {timeout_s} s") from None
            status = int(dict(head).pop(":status"))
            yield (
                status,
                {name: value for name, value in head if not name.startswith(":")},
                self._pieces(connection, stream, timeout_s),
            )
        finally:
            connection.forget(stream, reset=True)
            if connection is not self._connection and connection.idle():
                connection.close()
                self._old.discard(connection)

    async def _pieces(
        self, connection: Connection, stream: _Stream, timeout_s: float
    ) -> AsyncIterator[bytes]:
        while True:
            try:
                async with asyncio.timeout(timeout_s):
                    piece = await stream.pieces.get()
            except TimeoutError:
                raise LinkError(f"the answer stalled for {timeout_s} s") from None
            if piece is None:
                return
            if isinstance(piece, LinkError):
                raise piece
            connection.received(stream, len(piece))
            yield piece

    async def _usable(self) -> Connection:
        """The current connection if it takes streams; else a new one (one connect for all callers)."""
        current = self._connection
        if current is not None and current.takes_streams():
            return current
        if current is not None:
            self._connection = None
            if current.idle() or current.failed is not None:
                current.close()
            else:
                self._old.add(current)
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _connect(self) -> Connection:
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                reader, writer = await asyncio.open_connection(
                    self.host, self.port, ssl=self.tls, limit=READ_BYTES
                )
        except (OSError, ssl.SSLError, TimeoutError) as error:
            raise LinkError(f"cannot connect to {self.url}: {error!r}") from None
        if self.tls is not None and writer.get_extra_info("ssl_object").selected_alpn_protocol() != "h2":
            writer.close()
            raise LinkError(f"{self.url} does not speak HTTP/2 (ALPN h2)")
        self._connection = Connection(reader, writer)
        self.on_connect()
        return self._connection

    async def aclose(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        connections = [*self._old, *([self._connection] if self._connection else [])]
        self._old.clear()
        self._connection = None
        for connection in connections:
            await connection.aclose()
