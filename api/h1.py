"""The edge's HTTP/1.1 protocol: Hypercorn's, counted by the connection manager (api/connections.py).

HTTP/1.1 has no GOAWAY: a connection that drains answers its request in progress with
`Connection: close` and is then closed; an idle one is simply closed between requests, which
every HTTP/1.1 client expects of a keep-alive connection.
"""

from __future__ import annotations

import h11
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.events import Response, StreamClosed
from hypercorn.protocol.h11 import H11Protocol

from api import connections


class EdgeH11Protocol(H11Protocol):
    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.conn = connections.current.get()
        self.conn.protocol = self

    def stop_new_streams(self) -> None:
        """Nothing to send: the response in progress will say `Connection: close`."""

    async def goodbye(self, error_code: int) -> bool:
        return False  # no GOAWAY in HTTP/1.1; the connection is closed after this

    async def _create_stream(self, request: h11.Request) -> None:
        # Only a connection already closing takes no request: it gets no answer, just the close,
        # which tells an HTTP/1.1 client the request was not processed.
        if self.conn.take_stream():
            await super()._create_stream(request)

    async def stream_send(self, event: StreamEvent) -> None:
        if isinstance(event, Response) and event.status_code >= 200 and self._last_response():
            self.keep_alive_requests = self.config.keep_alive_max_requests  # Hypercorn then adds close
        await super().stream_send(event)
        if isinstance(event, StreamClosed):
            self.conn.stream_answered()

    def _last_response(self) -> bool:
        """Whether the connection closes after this response: it drains, or the answer comes before
        the request's body was all read (a 413), whose rest is not worth reading. Saying so with
        `Connection: close` keeps the client from sending its next request into a closing socket."""
        return self.conn.draining or self.connection.their_state is not h11.DONE
