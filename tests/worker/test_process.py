"""run_capped with ordinary host processes: caps, deadline, stdin, stop (no root needed)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from worker.process import Captured, Stop, run_capped


def run(
    argv: list[str],
    *,
    stdin: bytes = b"",
    cap: int = 1 << 20,
    timeout: float = 5.0,
    pid_file: Path | None = None,
) -> tuple[Captured, list[float]]:
    """run_capped; its `stop` kills the process whose pid the program wrote to `pid_file` (as the
    runner ends the container with `crun kill`), or does nothing."""
    stops: list[float] = []

    async def stop() -> None:
        stops.append(time.monotonic())
        if pid_file is not None:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)

    async def main() -> Captured:
        return await run_capped(argv, stdin=stdin, stream_bytes=cap, timeout_s=timeout, stop=stop)

    return asyncio.run(main()), stops


def test_exit_code_and_streams() -> None:
    captured, stops = run(["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert (captured.returncode, captured.stdout, captured.stderr) == (7, b"out\n", b"err\n")
    assert (captured.stdout_truncated, captured.stderr_truncated, captured.stopped) == (False, False, None)
    assert stops == [] and 0 < captured.wall_ms < 5000


def test_stdin_larger_than_a_pipe_does_not_deadlock() -> None:
    data = bytes(range(256)) * (16 << 10)  # 4 MiB
    captured, _ = run(["sh", "-c", "sleep 0.2; wc -c"], stdin=data)
    assert captured.stdout.split() == [str(len(data)).encode()]


def test_empty_stdin_is_end_of_file() -> None:
    captured, _ = run(["cat"])
    assert (captured.returncode, captured.stdout) == (0, b"")


def test_timeout_stops_and_keeps_output(tmp_path: Path) -> None:
    started = time.monotonic()
    pid = tmp_path / "pid"
    captured, stops = run(
        ["sh", "-c", f"echo $$ > {pid}; echo before; exec sleep 30"], timeout=0.5, pid_file=pid
    )
    assert captured.stopped is Stop.TIMEOUT and len(stops) == 1
    assert captured.stdout == b"before\n"
    assert 500 <= captured.wall_ms < 3000 and time.monotonic() - started < 3


def test_overflow_stops_and_keeps_the_cap(tmp_path: Path) -> None:
    pid = tmp_path / "pid"
    captured, stops = run(["sh", "-c", f"echo $$ > {pid}; exec yes pe-test-marker"], cap=10_000, pid_file=pid)
    assert captured.stopped is Stop.OUTPUT_LIMIT and captured.overflow == "stdout" and len(stops) == 1
    assert captured.stdout == (b"pe-test-marker\n" * 1000)[:10_000]
    assert captured.stdout_truncated and not captured.stderr_truncated


def test_a_process_that_outlives_stop_is_killed() -> None:
    started = time.monotonic()
    captured, stops = run(["sleep", "30"], timeout=0.2)
    assert len(stops) == 1
    assert captured.stopped is Stop.TIMEOUT and captured.returncode == -9
    assert time.monotonic() - started < 5, "killed after the grace period"
