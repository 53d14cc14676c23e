"""Run one process with a deadline, stdin from memory and capped stdout/stderr, on the event loop.

No threads and no asyncio transports: the pipes and a pidfd go straight to the loop's selector, so a
run costs one fork/exec and a few callbacks. When the deadline passes or a stream overflows its cap,
`stop` is awaited (the caller kills the container), and the output read so far is kept.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

CHUNK = 1 << 16
STOP_GRACE_S = 2.0  # after `stop`, how long the process gets to exit before it is killed
DRAIN_S = 1.0  # after the process exits, how long its pipes may stay open


class Stop(StrEnum):
    TIMEOUT = "timeout"
    OUTPUT_LIMIT = "output_limit"


@dataclass
class Captured:
    returncode: int
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    wall_ms: float
    stopped: Stop | None  # why `stop` was called, if it was
    overflow: str = ""  # "stdout" or "stderr", the stream that overflowed first


class _Stream:
    def __init__(
        self,
        name: str,
        fd: int,
        cap: int,
        loop: asyncio.AbstractEventLoop,
        on_overflow: Callable[[str], None],
    ) -> None:
        self.name, self.fd, self.cap = name, fd, cap
        self.data = bytearray()
        self.truncated = False
        self.closed: asyncio.Future[None] = loop.create_future()
        self._loop, self._on_overflow = loop, on_overflow
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        try:
            chunk = os.read(self.fd, CHUNK)
        except BlockingIOError:
            return
        if not chunk:
            self.close()
            return
        room = self.cap - len(self.data)
        if len(chunk) > room:
            if not self.truncated:
                self.truncated = True
                self._on_overflow(self.name)
            chunk = chunk[: max(room, 0)]
        self.data += chunk

    def close(self) -> None:
        if not self.closed.done():
            self._loop.remove_reader(self.fd)
            os.close(self.fd)
            self.closed.set_result(None)


def _stdin_fd(data: bytes) -> int | None:
    """A memfd holding `data`, read from its start (None for empty input): no writer to deadlock."""
    if not data:
        return None
    fd = os.memfd_create("pe-stdin", os.MFD_CLOEXEC)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


async def run_capped(
    argv: Sequence[str],
    *,
    stdin: bytes,
    stream_bytes: int,
    timeout_s: float,
    stop: Callable[[], Awaitable[None]],
) -> Captured:
    """Run `argv`; keep the first `stream_bytes` of stdout and of stderr. At `timeout_s`, or when a
    stream overflows, await `stop()` and then collect what the process wrote until it exits."""
    loop = asyncio.get_running_loop()
    stopping: asyncio.Future[Stop] = loop.create_future()
    overflow: list[str] = []

    def on_overflow(name: str) -> None:
        overflow.append(name)
        if not stopping.done():
            stopping.set_result(Stop.OUTPUT_LIMIT)

    stdin_fd = _stdin_fd(stdin)
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=stdin_fd if stdin_fd is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    finally:
        if stdin_fd is not None:
            os.close(stdin_fd)
    assert proc.stdout is not None and proc.stderr is not None
    # the file objects would close the fds again on collection; the streams own them now
    out = _Stream("stdout", os.dup(proc.stdout.fileno()), stream_bytes, loop, on_overflow)
    err = _Stream("stderr", os.dup(proc.stderr.fileno()), stream_bytes, loop, on_overflow)
    proc.stdout.close()
    proc.stderr.close()
    exited: asyncio.Future[float] = loop.create_future()
    pidfd = os.pidfd_open(proc.pid)
    loop.add_reader(pidfd, lambda: exited.done() or exited.set_result(time.monotonic()))
    timer = loop.call_at(
        loop.time() + timeout_s, lambda: stopping.done() or stopping.set_result(Stop.TIMEOUT)
    )
    stopped: Stop | None = None
    try:
        await asyncio.wait([exited, stopping], return_when=asyncio.FIRST_COMPLETED)
        timer.cancel()
        if not exited.done():
            stopped = stopping.result()
            await stop()
            done, _ = await asyncio.wait([exited], timeout=STOP_GRACE_S)
            if not done:
                proc.kill()
                await exited
        await asyncio.wait([out.closed, err.closed], timeout=DRAIN_S)
    finally:
        timer.cancel()
        loop.remove_reader(pidfd)
        os.close(pidfd)
        if not exited.done():
            proc.kill()
        proc.wait()
        out.close()
        err.close()
    return Captured(
        returncode=proc.returncode,
        stdout=bytes(out.data),
        stderr=bytes(err.data),
        stdout_truncated=out.truncated,
        stderr_truncated=err.truncated,
        wall_ms=(exited.result() - start) * 1000,
        stopped=stopped or (Stop.OUTPUT_LIMIT if overflow else None),
        overflow=overflow[0] if overflow else "",
    )
