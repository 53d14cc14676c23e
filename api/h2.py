"""The edge's HTTP/2 protocol: Hypercorn's, with the fixes and the connection management the edge needs.

- Hypercorn 0.18 drops the whole connection when DATA arrives for a stream it has already answered
  and forgotten (a KeyError in `_handle_events`): every client that sends a body the edge refuses
  early (a 413 before the body is read) lost its connection and all its other streams. Here such
  DATA is acknowledged for flow control and the stream is reset with NO_ERROR, which RFC 9113 §8.1
  allows after a complete response: "stop sending, the answer is already there".
- h2 treats a stream over SETTINGS_MAX_CONCURRENT_STREAMS as a connection error, which would kill
  every other stream of the connection; RFC 9113 §5.1.2 allows a stream error instead. The limit
  is still advertised, but enforced here with RST_STREAM(REFUSED_STREAM), which clients retry.
- Streams are counted for the connection manager (api/connections.py) from the request to the
  last frame of the response actually handed to the socket, not to the app's end, so that GOAWAY
  and close never cut a response short.
- GOAWAY is sent only once every accepted stream is answered: after its own GOAWAY, h2 refuses all
  further frames (python-hyper/h2 #1181), so a GOAWAY sent earlier would strand in-flight streams.
- A small response is one write: Hypercorn writes the headers at once, then the body's frame and the
  end of the stream apart; here the headers wait for the body's first frame (or the stream's end) and
  a body's frames go with their end. Each write wakes the client up: on a loaded machine a worker's
  pull answer took three wake-ups (docs/performance.md, "Remote workers").
- A client that resets streams, changes settings, pings or opens streams to be refused faster than
  `ControlBudget` allows (rapid reset, CVE-2023-44487) gets GOAWAY(ENHANCE_YOUR_CALM) and is closed.

Hypercorn picks its HTTP/2 class from `hypercorn.protocol.H2Protocol`; `install()` points that name
at this class for the edge's own connections (and the HTTP/1.1 name at api/h1.py's; hpack's Huffman
decoder at api/huffman.py's). Other Hypercorn servers in the same process keep Hypercorn's classes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hypercorn.protocol
from hypercorn.events import Closed, RawData
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.events import Response, StreamClosed
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.protocol.h11 import H11Protocol

from api import connections, huffman
from api.h1 import EdgeH11Protocol

ErrorCodes = h2.errors.ErrorCodes


class ControlBudget:
    """A token bucket for frames that cost the server work but answer nothing a client needs in
    bulk: RST_STREAM from the client, SETTINGS, PING, and streams the edge had to refuse.
    `burst` at once, `rate` a second after."""

    def __init__(self, burst: float = 200, rate: float = 100) -> None:
        self.burst = burst
        self.rate = rate
        self.tokens = burst
        self.at = time.monotonic()

    def spend(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        self.tokens -= 1
        return self.tokens >= 0


class _AdvertisedStreamLimit(h2.settings.Settings):
    """Local settings whose MAX_CONCURRENT_STREAMS is sent to the client but not enforced by h2."""

    @property
    def max_concurrent_streams(self) -> int:
        return 2**31


class EdgeH2Protocol(H2Protocol):
    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        settings = self.connection.local_settings
        self.connection.local_settings = _AdvertisedStreamLimit(
            client=False, initial_values={code: settings[code] for code in settings}
        )
        self.conn = connections.current.get()
        self.conn.protocol = self
        self.answering: set[int] = set()  # accepted streams whose response is not fully sent
        self.last_accepted = 0
        self.goaway_sent = False
        self.budget = ControlBudget()
        self._corked = False  # while set, frames wait in h2's buffer for one write (`_send_data`)

    # The manager's two actions.

    def stop_new_streams(self) -> None:
        if not self.goaway_sent:
            self.connection.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 0})
            # RuntimeError: the connection's task group has ended, so it is closing anyway.
            with contextlib.suppress(RuntimeError):
                self.task_group.spawn(self._flush)

    async def goodbye(self, error_code: int) -> bool:
        if self.goaway_sent:
            return True
        self.goaway_sent = True
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.connection.close_connection(error_code, last_stream_id=self.last_accepted)
        await self._flush()
        return True

    # Hypercorn's hooks.

    async def handle(self, event: hypercorn.events.Event) -> None:
        if isinstance(event, RawData):
            try:
                events = self.connection.receive_data(event.data)
            except h2.exceptions.ProtocolError as error:
                # h2 has queued GOAWAY with the error's code; send it, then close.
                self.goaway_sent = True
                await self._flush()
                self.conn.abort(ErrorCodes(error.error_code).name.lower(), error.error_code)
            else:
                await self._handle_events(events)
        else:
            await super().handle(event)
            if isinstance(event, Closed):
                # The sending task stops with the connection: release apps still writing a
                # response, which would otherwise wait forever for their buffer to drain.
                for buffer in self.stream_buffers.values():
                    await buffer.close()

    async def _handle_events(self, events: list[h2.events.Event]) -> None:
        # One at a time: a stream is created by its RequestReceived, earlier in the same list.
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                if not self._accept(event.stream_id):
                    if not self.budget.spend():  # streams opened only to be refused cost too
                        await self._calm_down()
                        return
                    continue
            elif isinstance(event, h2.events.DataReceived) and event.stream_id not in self.streams:
                self._refuse_rest_of_body(event)
                continue
            elif self._costs_budget(event) and not self.budget.spend():
                await self._calm_down()
                return
            await super()._handle_events([event])
        await self._flush()

    @staticmethod
    def _costs_budget(event: h2.events.Event) -> bool:
        if isinstance(event, h2.events.StreamReset):
            return event.remote_reset
        return isinstance(event, h2.events.RemoteSettingsChanged | h2.events.PingReceived)

    def _accept(self, stream_id: int) -> bool:
        """Whether a new stream is served; if not, it is reset with REFUSED_STREAM (safe to retry)."""
        if len(self.answering) < self.config.h2_max_concurrent_streams and self.conn.take_stream():
            self.answering.add(stream_id)
            self.last_accepted = max(self.last_accepted, stream_id)
            return True
        with contextlib.suppress(h2.exceptions.StreamClosedError):
            self.connection.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
        self.conn.manager.metrics.streams_refused.inc()
        return False

    async def _create_stream(self, request: h2.events.RequestReceived) -> None:
        if request.stream_id not in self.answering:  # stream 1 of an h2c upgrade skips _accept
            self._accept(request.stream_id)
        await super()._create_stream(request)

    async def stream_send(self, event: StreamEvent) -> None:
        if isinstance(event, Response):
            # Not written yet: the headers leave with the body's first frame (or the end of the
            # stream), so that a small response is one write, not three, for the client to read.
            headers = [(b":status", b"%d" % event.status_code), *event.headers]
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.connection.send_headers(event.stream_id, headers + self.config.response_headers("h2"))
            return
        await super().stream_send(event)
        if isinstance(event, StreamClosed):
            self._settle()

    async def _send_data(self, stream_id: int) -> None:
        self._corked = True  # the body's frame and the end of the stream in one write
        try:
            await super()._send_data(stream_id)
        finally:
            self._corked = False
        await self._flush()
        self._settle()

    async def _flush(self) -> None:
        if not self._corked:
            await super()._flush()

    def _settle(self) -> None:
        """Report the streams whose response has left: the app is done and the last frame was sent."""
        for stream_id in [
            s for s in self.answering if s not in self.streams and s not in self.stream_buffers
        ]:
            self.answering.discard(stream_id)
            self.conn.stream_answered()

    async def _calm_down(self) -> None:
        await self.goodbye(ErrorCodes.ENHANCE_YOUR_CALM)
        self.conn.abort("enhance_your_calm", ErrorCodes.ENHANCE_YOUR_CALM)

    def _refuse_rest_of_body(self, event: h2.events.DataReceived) -> None:
        self.connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        # An earlier DATA frame of the same body may have reset it already.
        with contextlib.suppress(h2.exceptions.StreamClosedError):
            self.connection.reset_stream(event.stream_id, ErrorCodes.NO_ERROR)


def install() -> None:
    hypercorn.protocol.H2Protocol = _for_edge_connections(EdgeH2Protocol, H2Protocol)  # type: ignore[misc]
    hypercorn.protocol.H11Protocol = _for_edge_connections(EdgeH11Protocol, H11Protocol)  # type: ignore[misc]
    huffman.install()  # request headers decoded a byte at a time, not a nibble


def _for_edge_connections(edge_class: type, plain_class: type) -> Callable[..., object]:
    """A constructor for Hypercorn that builds `edge_class` for the edge's own connections (those the
    Listener accepted, which set `connections.current`) and `plain_class` for any other Hypercorn
    server in the same process (a test's proxy, say): the names are process-wide."""

    def protocol(*args: object, **kwargs: object) -> object:
        cls = edge_class if connections.current.get(None) is not None else plain_class
        return cls(*args, **kwargs)

    return protocol
