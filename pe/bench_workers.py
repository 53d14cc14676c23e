"""`pe bench workers`: what a remote worker (`pe edge` + `pe worker`, docs/workers.md) costs per job,
against `pe serve`'s in-process worker and against the sandbox runner called directly.

Every run is `/bin/true` in busybox with `"cache": false` (each with another argument, so that no two
runs share a request hash), rate limits off.

- dispatch overhead: sequential runs over one keep-alive HTTP/1.1 connection to `pe edge` with one
  `pe worker --slots 1`, and to `pe serve --slots 1`. Measured two ways: by the edge itself, as the
  issue defines it (each answer's `Server-Timing`, api/timing.py: the edge's time from receiving the
  request to answering it, minus the runner's time in the worker, per job); and from this client, a
  side's latency minus the runner's own time (`SandboxRunner.run` timed in this process), which
  includes the client's HTTP exchange with the edge. Also the CPU time the edge and the worker
  processes spend a job (from /proc; steadier than latencies on a shared machine). It includes the
  runner's own Python work (in the worker, or in `pe serve`), not its crun children.
- throughput: `--jobs` runs sent by 4 client threads at once, to the edge with one `pe worker --slots 1`,
  then with two (2 slots, as many as cores), against the runner called directly by one and by two
  concurrent loops.

The sides alternate in rounds, so that the shared machine's changing load falls on all alike.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import itertools
import json
import statistics
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from api.timing import parse_server_timing
from catalog.store import ImageStore
from pe.bench import percentile, report, time_edge
from pe.bench_h2 import cpu_seconds
from pe.child import NO_RATE_LIMITS, ServeProcess, start_serve, start_worker
from pe.settings import Settings
from wire.spec import parse_spec
from worker.runner import Job

ROUNDS = 5
TOKEN = "bench-workers"
CLIENTS = 4  # concurrent client threads in the throughput part: enough to keep two slots busy
JSON = {"Content-Type": "application/json"}
_serial = itertools.count()  # makes each run's argv, hence its request hash, unique


def trivial_spec() -> dict:
    return {"image": "busybox", "argv": ["/bin/true", str(next(_serial))], "cache": False}


class Direct:
    """The sandbox runner called directly, on the jobs the edge would make of `trivial_spec()`."""

    def __init__(self, store: ImageStore, digest: str, slots: int) -> None:
        from worker.sandbox import SandboxRunner

        self.runner = SandboxRunner(store, slots)
        self.digest = digest

    def job(self) -> Job:
        spec = parse_spec(trivial_spec())
        return Job(f"bench-{next(_serial)}", spec, spec.argv, "busybox", self.digest, "sandbox")

    async def latencies(self, count: int) -> list[float]:
        latencies = []
        for _ in range(count):
            started = time.perf_counter()
            output = await self.runner.run(self.job())
            latencies.append((time.perf_counter() - started) * 1000)
            if str(output.result.status) != "ok":
                raise SystemExit(f"pe bench workers: the runner failed: {output.result}")
        return latencies

    async def throughput(self, jobs: int, loops: int) -> float:
        """Runs a second with `loops` concurrent loops sharing `jobs` runs."""
        started = time.perf_counter()
        await asyncio.gather(*(self.latencies(jobs // loops) for _ in range(loops)))
        return (jobs // loops * loops) / (time.perf_counter() - started)


def connection(served: ServeProcess) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(urllib.parse.urlsplit(served.url).netloc, timeout=60)


def sequential(client: http.client.HTTPConnection, count: int) -> tuple[list[float], list[float]]:
    """The latencies of `count` runs one after the other, and each one's dispatch overhead as the edge
    measured it (Server-Timing: edge - runner), in ms."""
    latencies, overheads = [], []
    for _ in range(count):
        started = time.perf_counter()
        client.request("POST", "/api/v1/run", json.dumps(trivial_spec()).encode(), JSON)
        response = client.getresponse()
        answer = response.read()
        latencies.append((time.perf_counter() - started) * 1000)
        if response.status != 200 or json.loads(answer)["status"] != "ok":
            raise SystemExit(f"pe bench workers: run failed: {response.status} {answer[:500]!r}")
        timing = parse_server_timing(response.getheader("server-timing", ""))
        overheads.append(timing["edge"] - timing["runner"])
    return latencies, overheads


def throughput(served: ServeProcess, jobs: int) -> float:
    """Runs a second through the edge at `served`, `jobs` runs sent by CLIENTS threads at once."""
    local = threading.local()

    def one(_: int) -> None:
        if not hasattr(local, "client"):
            local.client = connection(served)
        time_edge(local.client, trivial_spec(), 1)

    with ThreadPoolExecutor(CLIENTS) as pool:
        started = time.perf_counter()
        list(pool.map(one, range(jobs)))
        return jobs / (time.perf_counter() - started)


def connected(edge: ServeProcess, workers: list[ServeProcess]) -> bool:
    """Whether the edge lists every one of `workers` (a worker's id holds its pid)."""
    answer = httpx.get(edge.url + "/api/v1/work/workers", headers={"Authorization": f"Bearer {TOKEN}"})
    pids = {int(worker["worker"].split("-")[-2]) for worker in answer.json()["workers"]}
    return all(worker.process.pid in pids for worker in workers)


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"pe bench workers: {what} within {timeout_s} s")
        time.sleep(0.05)


async def measure(settings: Settings, runs: int, jobs: int) -> dict[str, list[float]]:
    store = ImageStore(settings.images_dir)
    meta = store.current("busybox")
    if meta is None:
        raise SystemExit("pe bench workers: busybox is not built; run `pe images build busybox`")
    figures: dict[str, list[float]] = {}

    def add(name: str, values: list[float]) -> None:
        figures.setdefault(name, []).extend(values)

    per_round = max(1, runs // ROUNDS)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        common = ("--cache-dir", str(settings.cache_dir), "--slots", "1", *NO_RATE_LIMITS)
        serve = start_serve(folder / "serve.log", *common)
        edge = start_serve(folder / "edge.log", *common, "--worker-token", TOKEN, command_name="edge")
        workers = []

        def add_worker() -> None:
            name = f"worker-{len(workers)}"
            flags = ("--slots", "1", "--cache-dir", str(folder / name))
            workers.append(start_worker(folder / f"{name}.log", edge.url, TOKEN, *flags))
            wait_for(lambda: connected(edge, workers), "the worker did not connect")

        direct = Direct(store, meta.digest, 2)
        try:
            add_worker()
            clients = {"serve": connection(serve), "edge": connection(edge)}
            await direct.latencies(per_round)  # warm-up: the worker fetches the image, caches fill
            for client in clients.values():
                sequential(client, per_round)
            processes = {"serve": {"serve": serve}, "edge": {"edge": edge, "worker": workers[0]}}
            for _ in range(ROUNDS):
                add("runner", await direct.latencies(per_round))
                for name, client in clients.items():
                    before = {key: cpu_seconds(p.process.pid) for key, p in processes[name].items()}
                    latencies, overheads = sequential(client, per_round)
                    for key, process in processes[name].items():
                        add(f"{key} cpu", [cpu_seconds(process.process.pid) - before[key]])
                    add(name, latencies)
                    add(f"{name} overhead", overheads)
            for round_number in range(ROUNDS):
                add("direct x1", [await direct.throughput(jobs, 1)])
                add("direct x2", [await direct.throughput(jobs, 2)])
                if round_number:
                    workers.pop().stop()  # back to one worker
                    time.sleep(0.5)  # its pull is over before the next round starts
                add("edge 1 worker", [throughput(edge, jobs)])
                add_worker()
                add("edge 2 workers", [throughput(edge, jobs)])
        finally:
            for process in [*workers, edge, serve]:
                process.stop()
            await direct.runner.close()
    return figures


def bench_workers(args: argparse.Namespace) -> int:
    from pe.cli import settings_from

    figures = asyncio.run(measure(settings_from(args), args.runs, args.jobs))
    runner = percentile(figures["runner"], 0.5)
    runner95 = percentile(figures["runner"], 0.95)
    print(f"dispatch: sequential /bin/true runs, {ROUNDS} interleaved rounds")
    for name in ("runner", "serve", "edge"):
        print(report(name, figures[name]))
    overhead = {}
    for name in ("serve", "edge"):
        p50 = percentile(figures[name], 0.5) - runner
        p95 = percentile(figures[name], 0.95) - runner95
        overhead[name] = p50
        ratio = percentile(figures[name], 0.5) / runner
        print(f"{name} - runner: p50 {p50:+.2f} ms, p95 {p95:+.2f} ms; {name}/runner p50 ratio {ratio:.2f}")
    extra = overhead["edge"] - overhead["serve"]
    ratio = percentile(figures["edge"], 0.5) / percentile(figures["serve"], 0.5)
    print(f"remote worker vs in-process: p50 {extra:+.2f} ms a job; edge/serve p50 ratio {ratio:.2f}")
    print("dispatch overhead as the edge measured it (Server-Timing edge - runner, per job):")
    for name in ("serve", "edge"):
        overheads = figures[f"{name} overhead"]
        p50, p95 = percentile(overheads, 0.5), percentile(overheads, 0.95)
        print(f"{name:<10} n={len(overheads):<5} p50 {p50:+.2f} ms, p95 {p95:+.2f} ms")
    jobs_run = len(figures["serve"])
    cpu = {key: sum(figures[f"{key} cpu"]) / jobs_run * 1000 for key in ("serve", "edge", "worker")}
    print(
        f"CPU a job (user + system, the runner's children not counted): pe serve {cpu['serve']:.2f} ms;"
        f" pe edge {cpu['edge']:.2f} ms + pe worker {cpu['worker']:.2f} ms"
    )
    print(f"throughput: {args.jobs} runs a round from {CLIENTS} clients, runs/s (median of {ROUNDS} rounds)")
    sides = ("direct x1", "direct x2", "edge 1 worker", "edge 2 workers")
    rates = {name: statistics.median(figures[name]) for name in sides}
    for name, rate in rates.items():
        print(f"{name:<16} {rate:7.1f} runs/s")
    for workers, loops in (("edge 1 worker", "direct x1"), ("edge 2 workers", "direct x2")):
        print(f"{workers} / {loops}: {rates[workers] / rates[loops]:.2f}")
    print(f"edge 2 workers / edge 1 worker: {rates['edge 2 workers'] / rates['edge 1 worker']:.2f}")
    return 0
