"""`pe bench h2`: the edge's HTTP/2 serving (docs/performance.md, "HTTP/2 connections").

- throughput: h2load on a cache hit (GET /api/v1/runs/<id> of a run made once) against `pe serve`,
  and on a trivial Starlette "hello" app served by the same accept loop, Hypercorn protocols and
  connection manager (api/listener.py) in a child of its own; rounds alternate between them. The
  cache hit is measured twice: as every client's request is answered, charged to the client's
  requests bucket (one too large to refuse h2load: a client far from its limit, so its answers carry
  no `RateLimit-*` headers, docs/edge.md), and with rate limits off. Besides h2load's rate,
  each server's CPU time per request (from /proc): on a shared machine the rate moves with other
  processes' load, the CPU a request costs much less.
- memory: the server's RSS with N idle HTTP/2 connections held open by this process (each sent its
  preface and SETTINGS and read the server's), per connection: (RSS with N - RSS before) / N.
- retire: with `max_connections` idle connections open, the time from connect to a complete
  GET /healthz answer on a new connection, which makes the edge retire the longest-idle one;
  against the same with room to spare (no retirement), in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import httpx

from pe.child import NO_RATE_LIMITS, ROOT, ServeProcess, free_port, start_serve

# Rate limits as served, with a requests bucket h2load (one client address) cannot even half empty.
REQUESTS_BUCKET_ONLY = (
    "--rate-requests-per-s", "1000000000", "--rate-requests-burst", "1000000000",
    "--rate-runs-per-s", "0", "--rate-fresh-per-s", "0",
)  # fmt: skip


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raise_nofile() -> None:
    """Up to the hard limit: 10,000 connections need as many descriptors, here and in the server."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# throughput


def start_hello(log: Path) -> ServeProcess:
    port = free_port()
    command = [sys.executable, "-m", "pe.bench_h2", "hello", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    served = ServeProcess(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(served.url + "/", timeout=1).status_code == 200:
                return served
        except httpx.HTTPError:
            time.sleep(0.1)
    served.stop()
    raise RuntimeError(f"the hello app did not start:\n{log.read_text()}")


def serve_hello(port: int) -> None:
    """The baseline: Starlette answering "hello", on the edge's own serving stack."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from api.connections import ConnectionManager
    from api.listener import Listener
    from api.metrics import Metrics
    from api.server import hypercorn_config
    from pe.settings import Settings

    async def hello(request: object) -> PlainTextResponse:
        return PlainTextResponse("hello")

    async def main() -> None:
        settings = Settings(port=port)
        manager = ConnectionManager(settings.max_connections, settings.idle_timeout_s, Metrics())
        stop = asyncio.Event()
        app = Starlette(routes=[Route("/", hello)])
        gc.collect()  # and frozen, as the edge does after its start-up (api/server.py): a fair baseline
        gc.freeze()
        await Listener(app, hypercorn_config(settings), manager, settings.grace_s).serve(stop)

    asyncio.run(main())


@dataclasses.dataclass
class Round:
    rate: float  # requests a second
    latencies: list[float]  # ms, one a request
    cpu_us: float  # the server's CPU time per request
    summary: str  # h2load's "requests: ..." line


def h2load(server: ServeProcess, url: str, requests: int, clients: int, streams: int) -> Round:
    with tempfile.NamedTemporaryFile("r", suffix=".log") as log:
        command = ["h2load", "-n", str(requests), "-c", str(clients), "-m", str(streams)]
        cpu_before = cpu_seconds(server.process.pid)
        output = subprocess.run(
            [*command, "--log-file", log.name, url], capture_output=True, text=True, check=True
        ).stdout
        cpu = cpu_seconds(server.process.pid) - cpu_before
        latencies = [int(line.split("\t")[2]) / 1000 for line in log.read().splitlines() if line.strip()]
    rate = float(re.search(r"finished in .*?, ([\d.]+) req/s", output).group(1))  # type: ignore[union-attr]
    summary = re.search(r"^requests: .*$", output, re.M).group(0)  # type: ignore[union-attr]
    return Round(rate, latencies, cpu / requests * 1e6, summary)


def cached_run(edge: ServeProcess, spec: dict) -> str:
    """The id of a run of `spec`, made once (retried while the in-process worker comes up)."""
    deadline = time.monotonic() + 30
    while True:
        response = httpx.post(edge.url + "/api/v1/run", json=spec, timeout=60)
        if response.status_code == 200 or time.monotonic() > deadline:
            response.raise_for_status()
            return response.json()["id"]
        time.sleep(0.2)


def bench_throughput(args: argparse.Namespace, folder: Path) -> None:
    servers = {
        "hello": start_hello(folder / "hello.log"),
        "cache hit": start_serve(folder / "serve.log", *REQUESTS_BUCKET_ONLY),
        "cache hit, no rate limits": start_serve(folder / "serve-unlimited.log", *NO_RATE_LIMITS),
    }
    try:
        spec = {"image": args.image, "argv": ["echo", "a cached run"]}
        urls = {name: server.url + "/" for name, server in servers.items()}
        for name in ("cache hit", "cache hit, no rate limits"):
            urls[name] = f"{servers[name].url}/api/v1/runs/{cached_run(servers[name], spec)}"
        shape = f"-n {args.requests} -c {args.clients} -m {args.streams}"
        print(f"throughput: h2load {shape}, {args.rounds} rounds alternating, median of rounds")
        results: dict[str, list[Round]] = {name: [] for name in servers}
        for name, server in servers.items():  # warm-up
            h2load(server, urls[name], 1000, args.clients, args.streams)
        for _ in range(args.rounds):
            for name, server in servers.items():
                results[name].append(h2load(server, urls[name], args.requests, args.clients, args.streams))
        rates = {name: statistics.median(r.rate for r in rounds) for name, rounds in results.items()}
        cpu = {name: statistics.median(r.cpu_us for r in rounds) for name, rounds in results.items()}
        for name, rounds in results.items():
            latencies = [value for r in rounds for value in r.latencies]
            print(
                f"  {name:25}  {rates[name]:6.0f} req/s (rounds {'/'.join(f'{r.rate:.0f}' for r in rounds)})"
                f"   p50 {percentile(latencies, 0.5):6.2f} ms   p99 {percentile(latencies, 0.99):6.2f} ms"
                f"   server CPU {cpu[name]:4.0f} µs a request"
            )
            print(f"  {'':25}  {rounds[-1].summary}")
        for name in ("cache hit", "cache hit, no rate limits"):
            print(
                f"  {name} / hello: throughput {rates[name] / rates['hello']:.2f},"
                f" CPU per request {cpu['hello'] / cpu[name]:.2f} (hello's / the cache hit's)"
            )
    finally:
        for server in servers.values():
            server.stop()


# idle connections


class IdleClient:
    """An HTTP/2 client connection that did its handshake and then only listens (GOAWAY, close)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.writer: asyncio.StreamWriter | None = None
        self.listening: asyncio.Task | None = None

    async def open(self) -> None:
        reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.conn.initiate_connection()
        self.writer.write(self.conn.data_to_send())
        while not any(isinstance(e, h2.events.RemoteSettingsChanged) for e in await self._read(reader)):
            pass
        self.writer.write(self.conn.data_to_send())  # the SETTINGS acknowledgement
        self.listening = asyncio.get_running_loop().create_task(self._listen(reader))

    async def _read(self, reader: asyncio.StreamReader) -> list[h2.events.Event]:
        data = await reader.read(65536)
        if not data:
            raise ConnectionError("closed by the server")
        return self.conn.receive_data(data)

    async def _listen(self, reader: asyncio.StreamReader) -> None:
        """Close when the server says GOAWAY or closes, as a well-behaved client does."""
        while await reader.read(65536):
            pass
        self.close()

    async def get(self, path: str) -> int:
        """One request on a fresh connection; the status."""
        reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.conn.initiate_connection()
        headers = [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "edge")]
        self.conn.send_headers(1, headers, end_stream=True)
        self.writer.write(self.conn.data_to_send())
        status = 0
        while True:
            for event in await self._read(reader):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.StreamEnded):
                    self.writer.write(self.conn.data_to_send())
                    self.listening = asyncio.get_running_loop().create_task(self._listen(reader))
                    return status
            self.writer.write(self.conn.data_to_send())

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def open_idle(port: int, count: int) -> list[IdleClient]:
    clients = [IdleClient(port) for _ in range(count)]
    for start in range(0, count, 200):
        await asyncio.gather(*(client.open() for client in clients[start : start + 200]))
    return clients


def scrape(edge: ServeProcess, name: str) -> float:
    text = httpx.get(edge.url + "/metrics", timeout=10).text
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]


async def memory_round(folder: Path, count: int) -> tuple[int, int]:
    edge = start_serve(
        folder / f"memory-{count}.log", "--max-connections", str(count + 100), "--idle-timeout-s", "3600"
    )
    try:
        await asyncio.sleep(1)
        before = rss_bytes(edge.process.pid)
        clients = await open_idle(int(edge.url.rsplit(":", 1)[1]), count)
        await asyncio.sleep(2)
        held = await asyncio.to_thread(scrape, edge, "pe_connections_open")
        after = rss_bytes(edge.process.pid)
        for client in clients:
            client.close()
        if held < count:
            raise RuntimeError(f"the edge holds {held:.0f} connections, not {count}")
        return before, after
    finally:
        edge.stop()


def bench_memory(args: argparse.Namespace, folder: Path) -> None:
    print("memory: server RSS with N idle HTTP/2 connections (handshake done, no stream)")
    for count in args.idle:
        before, after = asyncio.run(memory_round(folder, count))
        print(
            f"  {count:6d} connections: RSS {before / 2**20:6.1f} -> {after / 2**20:6.1f} MiB,"
            f" {(after - before) / count / 1024:5.1f} KiB per connection"
        )


async def retire_round(folder: Path, limit: int, full: bool, samples: int) -> list[float]:
    """Connect-to-answer times (ms) of new connections, with `limit` idle ones already open; `full`:
    the limit is `limit` (each new connection retires one), else there is room for all."""
    maximum = limit if full else limit + samples + 10
    edge = start_serve(
        folder / f"retire-{full}.log", "--max-connections", str(maximum), "--idle-timeout-s", "3600"
    )
    try:
        port = int(edge.url.rsplit(":", 1)[1])
        idle = await open_idle(port, limit)
        await asyncio.sleep(0.5)  # all idle for longer than api.connections.FRESH_S
        times = []
        newcomers = []
        for _ in range(samples):
            client = IdleClient(port)
            started = time.perf_counter()
            assert await client.get("/healthz") == 200
            times.append((time.perf_counter() - started) * 1000)
            newcomers.append(client)
        retired = sum(1 for client in idle if client.listening is not None and client.listening.done())
        if full and retired < samples:
            raise RuntimeError(f"only {retired} of {samples} new connections retired an idle one")
        for client in idle + newcomers:
            client.close()
        return times
    finally:
        edge.stop()


def bench_retire(args: argparse.Namespace, folder: Path) -> None:
    limit, samples = args.limit, args.samples
    print(f"retire: {samples} new connections, one at a time, each with {limit} idle ones open")
    sides = {
        "at the limit (retire + accept)": asyncio.run(retire_round(folder, limit, True, samples)),
        "room to spare (accept)": asyncio.run(retire_round(folder, limit, False, samples)),
    }
    for name, times in sides.items():
        print(f"  {name:31}  p50 {percentile(times, 0.5):6.2f} ms   p99 {percentile(times, 0.99):6.2f} ms")
    ratio = percentile(sides["at the limit (retire + accept)"], 0.99) / percentile(
        sides["room to spare (accept)"], 0.99
    )
    print(f"  p99 ratio at the limit / room to spare: {ratio:.2f}")


PARTS = {"throughput": bench_throughput, "memory": bench_memory, "retire": bench_retire}


def bench_h2(args: argparse.Namespace) -> int:
    unknown = [part for part in args.parts if part not in PARTS]
    if unknown:
        print(f"pe bench h2: unknown part {unknown[0]!r} (known: {', '.join(PARTS)})", file=sys.stderr)
        return 2
    raise_nofile()
    with tempfile.TemporaryDirectory(prefix="pe-bench-h2-") as folder:
        for part in args.parts or list(PARTS):
            PARTS[part](args, Path(folder))
    return 0


if __name__ == "__main__" and sys.argv[1:2] == ["hello"]:
    serve_hello(int(sys.argv[2]))
