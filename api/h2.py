"""The edge's HTTP/2 protocol: Hypercorn's, with the fixes the edge needs.

Hypercorn 0.18 drops the whole connection when DATA arrives for a stream it has already answered
and forgotten (a KeyError in `_handle_events`): every client that sends a body the edge refuses
early (a 413 before the body is read) lost its connection and all its other streams. Here such
DATA is acknowledged for flow control and the stream is reset with NO_ERROR, which RFC 9113 §8.1
allows after a complete response: "stop sending, the answer is already there".

Hypercorn picks its HTTP/2 class from `hypercorn.protocol.H2Protocol`; `install()` points that name
at this class. Connection management (GOAWAY, limits, idle timeout) will grow here too.
"""

from __future__ import annotations

import contextlib

import h2.errors
import h2.events
import h2.exceptions
import hypercorn.protocol
from hypercorn.protocol.h2 import H2Protocol


class EdgeH2Protocol(H2Protocol):
    async def _handle_events(self, events: list[h2.events.Event]) -> None:
        # One at a time: a stream is created by its RequestReceived, earlier in the same list.
        for event in events:
            if isinstance(event, h2.events.DataReceived) and event.stream_id not in self.streams:
                self._refuse_rest_of_body(event)
                await self._flush()
            else:
                await super()._handle_events([event])

    def _refuse_rest_of_body(self, event: h2.events.DataReceived) -> None:
        self.connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        # An earlier DATA frame of the same body may have reset it already.
        with contextlib.suppress(h2.exceptions.StreamClosedError):
            self.connection.reset_stream(event.stream_id, h2.errors.ErrorCodes.NO_ERROR)


def install() -> None:
    hypercorn.protocol.H2Protocol = EdgeH2Protocol  # type: ignore[misc]
