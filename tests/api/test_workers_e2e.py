"""Issue 6 end to end: one `pe edge` and several `pe worker` processes on loopback, real sandbox runs.

The workers' structured logs say what each did (`leased run_id=…`, `uploaded run_id=… accepted=True`,
`image fetched`, …); the tests read them to check who ran what, and in which order."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig

from pe.child import NO_RATE_LIMITS, free_port

pytestmark = pytest.mark.sandbox

TOKEN = "e2e-" + uuid.uuid4().hex
LEASE_S = 3.0
EDGE_FLAGS = ("--worker-token", TOKEN, "--lease-s", str(LEASE_S), "--grace-s", "1", *NO_RATE_LIMITS)
BUSYBOX = "busybox"


@pytest.fixture(autouse=True)
def needs_root() -> None:
    import os

    if os.geteuid() != 0:
        pytest.skip("the sandbox runner needs root (crun, mounts)")


@dataclass
class Process:
    name: str
    command: list[str]
    log: Path
    url: str = ""
    process: subprocess.Popen | None = None

    def start(self) -> Process:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT)
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self) -> int:
        """SIGTERM and wait (SIGKILL after 20 s); the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def start_edge(folder: Path, port: int, *flags: str) -> Process:
    """`pe edge` on 127.0.0.1:`port` (a fixed port, so that it can be restarted where workers look)."""
    command = [sys.executable, "-m", "pe.cli", "edge", "--host", "127.0.0.1", "--port", str(port)]
    edge = Process("edge", [*command, *EDGE_FLAGS, *flags], folder / "edge.log", f"http://127.0.0.1:{port}")
    edge.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert edge.process is not None and edge.process.poll() is None, edge.text()
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(edge.url + "/healthz", timeout=1).status_code == 200:
                return edge
        time.sleep(0.05)
    edge.stop()
    raise AssertionError(f"pe edge did not answer:\n{edge.text()}")


def start_worker(folder: Path, edge_url: str, name: str, slots: int) -> Process:
    """`pe worker` with an image cache of its own (so it fetches its images from the edge)."""
    command = [sys.executable, "-m", "pe.cli", "worker", "--edge", edge_url, "--token", TOKEN]
    command += ["--slots", str(slots), "--cache-dir", str(folder / name), "--log-level", "info"]
    return Process(name, command, folder / f"{name}.log").start()


@contextlib.contextmanager
def processes(*started: Process) -> Iterator[list[Process]]:
    """Stop them all at the end; on failure, show their logs."""
    running = list(started)
    try:
        yield running
    except BaseException:
        for process in running:
            print(f"----- {process.name} -----\n{process.text()[-6000:]}")
        raise
    finally:
        for process in running:
            process.stop()


def connected_workers(edge: Process) -> list[dict]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    response = httpx.get(edge.url + "/api/v1/work/workers", headers=headers, timeout=5)
    return response.json()["workers"]


def wait_until(condition: Callable[[], object], timeout_s: float = 30, what: str = "") -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or condition}")


async def async_wait_until(condition: Callable[[], object], timeout_s: float = 30) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {condition}")


# What the workers' logs say


def events(log: str, message: str) -> list[dict[str, str]]:
    """The key=value fields of each log line with this message, in order."""
    found = []
    for line in log.splitlines():
        _, _, rest = line.partition(f" {message} ")
        if rest or line.endswith(f" {message}"):
            found.append(dict(re.findall(r"(\w+)=(\S+)", rest)))
    return found


def leased(process: Process) -> list[str]:
    return [fields["run_id"] for fields in events(process.text(), "leased")]


def accepted(process: Process) -> list[str]:
    return [f["run_id"] for f in events(process.text(), "uploaded") if f.get("accepted") == "True"]


def running_job(process: Process) -> str | None:
    """A job the worker has leased and not uploaded."""
    pending = set(leased(process)) - {f["run_id"] for f in events(process.text(), "uploaded")}
    return next(iter(pending), None)


# The client side


def spec(tag: str, n: int, sleep_s: float) -> dict:
    """A job that sleeps, then prints `<tag>-<n>`; its wall time limit leaves room for the sleep."""
    limits = {"wall_ms": int(sleep_s * 1000) + 5000}
    return {"image": BUSYBOX, "argv": ["sh", "-c", f"sleep {sleep_s}; echo {tag}-{n}"], "limits": limits}


# HTTP/1.1, a connection per request in flight: httpx's HTTP/2 client (httpcore 1.0) can keep a response
# it has already read until its connection's next frame arrives. Seen here (an strace of the edge had
# the answer sent at once): a quick run's answer reached the test only when the long run's did.
CLIENT_LIMITS = httpx.Limits(max_connections=50)


@contextlib.asynccontextmanager
async def client(url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=CLIENT_LIMITS) as http:
        yield http


async def run(http: httpx.AsyncClient, body: dict) -> dict:
    response = await http.post("/api/v1/run", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def executions(edge: Process) -> int:
    metrics = httpx.get(edge.url + "/metrics", timeout=5).text
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in metrics.splitlines()
        if line.startswith("pe_executions_total{")
    )


def test_thirty_jobs_three_workers_one_killed_mid_job(tmp_path: Path) -> None:
    """All thirty answers arrive, each right, each once; the killed worker's job runs elsewhere."""
    tag = uuid.uuid4().hex[:12]
    edge = start_edge(tmp_path, free_port())
    workers = [start_worker(tmp_path, edge.url, f"w{i}", slots=2) for i in range(3)]
    with processes(edge, *workers):
        wait_until(lambda: len(connected_workers(edge)) == 3, what="three workers")
        victim = workers[0]

        async def main() -> tuple[list[dict], str]:
            async with client(edge.url) as http:
                # Varied runtimes (0 to 0.8 s); the longer ones make sure the victim is caught mid-job.
                answers = [asyncio.create_task(run(http, spec(tag, n, (n % 5) * 0.2))) for n in range(30)]
                killed = await async_wait_until(lambda: running_job(victim))
                victim.signal(signal.SIGKILL)
                return await asyncio.gather(*answers), str(killed)

        answers, killed = asyncio.run(asyncio.wait_for(main(), 60))
        for n, answer in enumerate(answers):
            assert (answer["status"], answer["stdout"]["text"]) == ("ok", f"{tag}-{n}\n"), answer
        ids = {answer["id"] for answer in answers}
        assert len(ids) == 30 and killed in ids

        # Each output handed back and taken exactly once, whoever ran it; the killed job by a survivor.
        # (A worker logs the upload once the edge has answered it, maybe after the client had its answer.)
        def taken_outputs() -> Counter[str]:
            return Counter(run_id for worker in workers for run_id in accepted(worker))

        wait_until(lambda: taken_outputs().total() >= 30, 10, "the workers' upload log lines")
        taken = taken_outputs()
        assert taken == Counter(ids)
        assert killed not in accepted(victim)
        assert any(killed in accepted(worker) for worker in workers[1:])
        assert executions(edge) == 30
        assert all(worker.process and worker.process.poll() is None for worker in workers[1:])


def test_edge_restarted_under_load_with_redis_state_queued_jobs_finish(
    tmp_path: Path, redis_url: str
) -> None:
    """The edge stops (SIGTERM) while jobs run and wait; a new edge on the same port and Redis takes
    over. The workers reconnect by themselves and every job finishes, run once, without anyone
    submitting it again; asked again, the client gets the stored answers."""
    tag = uuid.uuid4().hex[:12]
    port = free_port()
    state = ("--state", redis_url.rsplit("/", 1)[0] + "/6")
    edge = start_edge(tmp_path, port, *state)
    workers = [start_worker(tmp_path, edge.url, f"w{i}", slots=2) for i in range(2)]
    bodies = [spec(tag, n, 0.3 + (n % 3) * 0.3) for n in range(12)]
    with processes(edge, *workers) as running:
        wait_until(lambda: len(connected_workers(edge)) == 2, what="two workers")

        async def submit_then_stop_the_edge() -> list[object]:
            async with client(edge.url) as http:
                posts = [asyncio.create_task(http.post("/api/v1/run", json=body)) for body in bodies]
                await async_wait_until(lambda: sum(len(leased(worker)) for worker in workers) >= 3)
                edge.signal(signal.SIGTERM)
                return await asyncio.gather(*posts, return_exceptions=True)

        first = asyncio.run(asyncio.wait_for(submit_then_stop_the_edge(), 30))
        assert edge.process is not None and edge.process.wait(timeout=10) == 0
        unanswered = sum(isinstance(answer, httpx.TransportError) for answer in first)
        assert unanswered > 0, "the edge stopped after every job was done: not under load"
        edge2 = start_edge(tmp_path, port, *state)
        edge2.name = "edge (restarted)"
        running.append(edge2)

        def all_done() -> bool:
            return len({run_id for worker in workers for run_id in accepted(worker)}) == len(bodies)

        wait_until(all_done, timeout_s=40, what="every job done after the restart")
        for worker in workers:
            assert events(worker.text(), "reconnected"), f"{worker.name} did not reconnect"

        async def ask_again() -> list[dict]:
            async with client(edge2.url) as http:
                return await asyncio.gather(*(run(http, body) for body in bodies))

        answers = asyncio.run(asyncio.wait_for(ask_again(), 30))
        for n, answer in enumerate(answers):
            assert answer["stdout"]["text"] == f"{tag}-{n}\n" and answer["cached"], answer
        taken = Counter(run_id for worker in workers for run_id in accepted(worker))
        assert set(taken.values()) == {1}  # none ran twice


def test_edge_stopped_with_memory_state_clients_get_an_error_not_a_hang(tmp_path: Path) -> None:
    """In memory, the queue dies with the edge: waiting clients see their connection close at the
    end of the grace period (1 s here). The worker waits for an edge and serves the next one."""
    tag = uuid.uuid4().hex[:12]
    port = free_port()
    edge = start_edge(tmp_path, port)
    worker = start_worker(tmp_path, edge.url, "w", slots=1)
    with processes(edge, worker) as running:
        wait_until(lambda: len(connected_workers(edge)) == 1, what="the worker")

        async def submit_then_stop_the_edge() -> tuple[list[object], float]:
            async with client(edge.url) as http:
                posts = [asyncio.create_task(run(http, spec(tag, n, 2))) for n in range(4)]
                await async_wait_until(lambda: leased(worker))
                edge.signal(signal.SIGTERM)
                stopped = time.monotonic()
                answers = await asyncio.gather(*posts, return_exceptions=True)
                return answers, time.monotonic() - stopped

        answers, waited_s = asyncio.run(asyncio.wait_for(submit_then_stop_the_edge(), 30))
        assert all(isinstance(answer, httpx.TransportError) for answer in answers), answers
        assert waited_s < 5
        wait_until(lambda: events(worker.text(), "edge unreachable, reconnecting with backoff:"), 10)
        edge2 = start_edge(tmp_path, port)
        edge2.name = "edge (restarted)"
        running.append(edge2)

        # Its held jobs run out first (their leases are gone with the old edge), then it pulls again.
        wait_until(lambda: events(worker.text(), "reconnected"), 30)
        wait_until(lambda: connected_workers(edge2), 30, "the worker pulling from the new edge")

        async def run_once() -> dict:
            async with client(edge2.url) as http:
                return await run(http, spec(tag, 99, 0))

        assert asyncio.run(asyncio.wait_for(run_once(), 40))["stdout"]["text"] == f"{tag}-99\n"


class CorruptingProxy:
    """An HTTP/2 reverse proxy in front of the edge (an ASGI app under Hypercorn) that flips one byte
    of the first image it passes on, as a faulty network path or disk would."""

    def __init__(self, upstream: str) -> None:
        self.upstream = httpx.AsyncClient(base_url=upstream, timeout=60, limits=CLIENT_LIMITS)  # see client()
        self.corrupted: list[str] = []  # the paths of the downloads it spoiled

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"host", b"content-length")]
        path = scope["raw_path"].decode() + (
            "?" + scope["query_string"].decode() if scope["query_string"] else ""
        )
        request = self.upstream.build_request(scope["method"], path, content=body, headers=headers)
        response = await self.upstream.send(request, stream=True)
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": response.headers.raw,
                }
            )
            spoil = path.endswith(".erofs") and not self.corrupted
            async for chunk in response.aiter_raw():
                if spoil and chunk:
                    chunk, spoil = bytes([chunk[0] ^ 0xFF]) + chunk[1:], False
                    self.corrupted.append(path)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()


@contextlib.asynccontextmanager
async def corrupting_proxy(upstream: str) -> AsyncIterator[tuple[str, CorruptingProxy]]:
    proxy = CorruptingProxy(upstream)
    config = HypercornConfig()
    port = free_port()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = config.errorlog = None
    stop = asyncio.Event()
    serving = asyncio.create_task(hypercorn_serve(proxy, config, shutdown_trigger=stop.wait))
    try:
        yield f"http://127.0.0.1:{port}", proxy
    finally:
        stop.set()
        await serving
        await proxy.upstream.aclose()


def line_index(log: str, message: str) -> int:
    """The number of the first line with this message (-1: none)."""
    return next((i for i, line in enumerate(log.splitlines()) if f" {message}" in line), -1)


def test_busy_worker_no_image_and_corrupted_download(tmp_path: Path) -> None:
    """Worker A (one slot) runs a 10 s job. Worker B, started behind a proxy that corrupts its first
    image download, detects the bad download, fetches the image again, and only then gets jobs: the
    quick jobs that arrived meanwhile all run on B, none waits behind A's long job (A prefetches no job
    once its run is older than the prefetch window)."""
    tag = uuid.uuid4().hex[:12]
    edge = start_edge(tmp_path, free_port())
    slow = start_worker(tmp_path, edge.url, "a", slots=1)
    with processes(edge, slow) as running:
        wait_until(lambda: len(connected_workers(edge)) == 1, what="worker a")

        async def main() -> tuple[list[str], str]:
            async with client(edge.url) as http, corrupting_proxy(edge.url) as (proxy_url, proxy):
                # Long enough that B's start and its two downloads end well before it, even on a
                # loaded CI machine (with 4 s, a slow start let A finish and take quick jobs).
                long = asyncio.create_task(run(http, spec(tag, 0, 10)))
                await async_wait_until(lambda: leased(slow))
                await asyncio.sleep(1)  # its run is now older than the prefetch window
                fast = start_worker(tmp_path, proxy_url, "b", slots=2)
                running.append(fast)
                try:
                    quick = [asyncio.create_task(run(http, spec(tag, n, 0.1))) for n in range(1, 7)]
                    answers = await asyncio.gather(*quick)
                    assert not long.done(), "the quick jobs waited for the long one"
                    for n, answer in enumerate(answers, start=1):
                        assert answer["stdout"]["text"] == f"{tag}-{n}\n"
                    assert (await long)["stdout"]["text"] == f"{tag}-0\n"
                    assert len(proxy.corrupted) == 1
                finally:
                    # Before its proxy goes, also on failure: a connection still open makes the
                    # proxy's shutdown fail, which would hide the real failure.
                    exit_code = await asyncio.to_thread(fast.stop)
                assert exit_code == 0
                return [answer["id"] for answer in answers], answers[0]["image"]["digest"]

        quick_ids, digest = asyncio.run(asyncio.wait_for(main(), 40))
        fast = running[-1]
        assert len(leased(slow)) == 1  # the long job only
        assert sorted(leased(fast)) == sorted(quick_ids)
        log = fast.text()
        bad, fetched, first_lease = (
            line_index(log, m) for m in ("image download failed: corrupted", "image fetched", "leased")
        )
        assert 0 <= bad < fetched < first_lease, log
        cached = tmp_path / "b" / "worker-images" / f"{digest[7:]}.erofs"
        assert "sha256:" + hashlib.sha256(cached.read_bytes()).hexdigest() == digest


def test_sigterm_drains_the_worker(tmp_path: Path) -> None:
    """SIGTERM: the worker pulls no more, finishes the job it runs, hands its output back, exits 0."""
    tag = uuid.uuid4().hex[:12]
    edge = start_edge(tmp_path, free_port())
    worker = start_worker(tmp_path, edge.url, "w", slots=1)
    with processes(edge, worker):
        wait_until(lambda: len(connected_workers(edge)) == 1, what="the worker")

        async def main() -> dict:
            async with client(edge.url) as http:
                running = asyncio.create_task(run(http, spec(tag, 1, 1.5)))
                await async_wait_until(lambda: leased(worker))
                worker.signal(signal.SIGTERM)
                await async_wait_until(lambda: events(worker.text(), "draining: no more pulls"))
                later = asyncio.create_task(http.post("/api/v1/run", json=spec(tag, 2, 0)))
                answer = await running
                assert worker.process is not None
                assert await asyncio.to_thread(worker.process.wait, 10) == 0
                assert not later.done()  # queued, for a worker still to come
                later.cancel()
                return answer

        answer = asyncio.run(asyncio.wait_for(main(), 30))
        assert answer["stdout"]["text"] == f"{tag}-1\n"
        assert leased(worker) == accepted(worker) == [answer["id"]]
        assert events(worker.text(), "worker stopped")
