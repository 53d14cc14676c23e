"""A small blocking HTTP/2 client on the h2 state machine, for tests that need frame-level control
(send part of a body, see RST_STREAM and GOAWAY) that httpx and curl do not give."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events


@dataclass
class StreamResult:
    status: int | None = None
    body: bytes = b""
    ended: bool = False
    reset: int | None = None  # the error code of a RST_STREAM from the server
    headers: dict[str, str] = field(default_factory=dict)


class H2Client:
    def __init__(self, host: str, port: int, timeout: float = 10) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.authority = f"{host}:{port}"
        self.streams: dict[int, StreamResult] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.eof = False  # the server closed the connection
        self._flush()

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        end: bool = True,
    ) -> int:
        """Open a stream; send as much of `body` as flow control allows; end it only if all was sent."""
        stream_id = self.conn.get_next_available_stream_id()
        sent_headers = [
            (":method", method),
            (":path", path),
            (":scheme", "http"),
            (":authority", self.authority),
            *(headers or {}).items(),
        ]
        self.conn.send_headers(stream_id, sent_headers, end_stream=end and not body)
        self.streams[stream_id] = StreamResult()
        if body:
            window = min(self.conn.local_flow_control_window(stream_id), len(body))
            for start in range(0, window, self.conn.max_outbound_frame_size):
                chunk = body[start : min(window, start + self.conn.max_outbound_frame_size)]
                self.conn.send_data(stream_id, chunk)
            if end and window == len(body):
                self.conn.end_stream(stream_id)
        self._flush()
        return stream_id

    def send_data(self, stream_id: int, data: bytes, end: bool = False) -> None:
        """More body on an open stream (as much as flow control allows), as an uploading client does;
        with `end`, the body ends here if all of `data` could be sent."""
        size = min(
            len(data), self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size
        )
        self.conn.send_data(stream_id, data[:size], end_stream=end and size == len(data))
        self._flush()

    def send_raw(self, data: bytes) -> None:
        """Bytes straight to the socket, past the h2 state machine (for malformed or abusive frames)."""
        self.sock.sendall(data)

    def wait(self, stream_id: int) -> StreamResult:
        """Read frames until the stream has ended or was reset (or the connection closed)."""
        result = self.streams[stream_id]
        self.read_until(lambda: result.ended or result.reset is not None)
        return result

    def read_until(self, done: Callable[[], bool], timeout: float = 10) -> bool:
        """Read frames until `done()` or the server closes the connection; whether `done()` came true."""
        deadline = time.monotonic() + timeout
        while not done() and not self.eof:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
                break
            for event in self.conn.receive_data(data):
                self._handle(event)
            if self.goaway is None:  # h2 refuses to send after a GOAWAY: acknowledgements stop there
                self._flush()
        return done()

    def wait_closed(self, timeout: float = 10) -> bool:
        """Read until the server closes the connection; whether it did within `timeout`."""
        try:
            self.read_until(lambda: False, timeout)
        except TimeoutError:
            return False
        return self.eof

    def _handle(self, event: h2.events.Event) -> None:
        stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.ResponseReceived) and stream:
            stream.headers = {k.decode(): v.decode() for k, v in event.headers}
            stream.status = int(stream.headers[":status"])
        elif isinstance(event, h2.events.DataReceived) and stream:
            stream.body += event.data
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded) and stream:
            stream.ended = True
        elif isinstance(event, h2.events.StreamReset) and stream:
            stream.reset = event.error_code
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event

    def close(self) -> None:
        self.sock.close()
