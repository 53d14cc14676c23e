"""`pe serve` (or `pe edge`, `pe worker`) as a child process, for benchmarks and tests: start it, wait
until it answers, stop it."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
# Flags that turn the per-client rate limits off, for a benchmark or a test suite that is one client.
NO_RATE_LIMITS = ("--rate-requests-per-s", "0", "--rate-runs-per-s", "0", "--rate-fresh-per-s", "0")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServeProcess:
    url: str
    process: subprocess.Popen
    log: Path
    cert: Path | None = None  # the certificate to trust, when serving HTTPS

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 15 s."""
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def trust(cert: Path | None) -> ssl.SSLContext | bool:
    """What httpx should verify the server with: `cert` itself, or the system's roots."""
    return True if cert is None else ssl.create_default_context(cafile=str(cert))


def start_serve(
    log: Path,
    *flags: str,
    timeout_s: float = 30,
    tls: tuple[Path, Path] | None = None,
    command_name: str = "serve",
) -> ServeProcess:
    """Start `pe serve` (or `pe edge`, by `command_name`) on a free loopback port, its output going to
    `log`; wait for /healthz. With `tls` (certificate, key), it serves HTTPS and is checked against
    that certificate."""
    port = free_port()
    address = ("--host", "127.0.0.1", "--port", str(port))
    command = [sys.executable, "-m", "pe.cli", command_name, *address, *flags]
    if tls is not None:
        command += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    served = ServeProcess(f"{'https' if tls else 'http'}://127.0.0.1:{port}", process, log, tls and tls[0])
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"pe {command_name} exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(served.url + "/healthz", timeout=1, verify=trust(served.cert)).status_code == 200:
                return served
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"pe {command_name} did not answer within {timeout_s} s:\n{log.read_text()}")


def start_worker(log: Path, edge_url: str, token: str, *flags: str) -> ServeProcess:
    """Start `pe worker` pulling from `edge_url`, its output going to `log`. It is connected once the
    edge lists it (`GET /api/v1/work/workers`); the caller waits for that."""
    command = [sys.executable, "-m", "pe.cli", "worker", "--edge", edge_url, "--token", token, *flags]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    return ServeProcess(edge_url, process, log)


def start_redis(folder: Path, port: int, timeout_s: float = 10) -> subprocess.Popen:
    """A redis-server on 127.0.0.1:`port` that saves nothing, its log in `folder`; returns once it
    answers PING. The caller stops it (terminate, wait)."""
    import redis

    command = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder)]
    command += ["--save", "", "--appendonly", "no"]
    log = folder / "redis.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    client = redis.Redis(port=port, socket_connect_timeout=1)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {process.returncode}:\n{log.read_text()}")
        try:
            client.ping()
            return process
        except redis.ConnectionError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"redis-server did not answer within {timeout_s} s:\n{log.read_text()}")
