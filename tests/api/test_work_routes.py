"""The worker routes of `pe edge` (docs/workers.md), driven by a plain HTTP client that plays the worker:
it pulls, extends, uploads an output it made up, and the client waiting on /api/v1/run gets exactly
that output. Memory and Redis state where the state does the work (leases, the capability filter)."""

from __future__ import annotations

import asyncio
import dataclasses
import platform
import subprocess
import sys
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pe.child import NO_RATE_LIMITS, ROOT, ServeProcess, start_serve
from wire.result import RunOutput, Status, pack_output
from worker.runner import Job, error_output

TOKEN = "test-token-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CPIO = {**AUTH, "Content-Type": "application/x-cpio"}
LEASE_S = 1.5
EDGE_FLAGS = ("--worker-token", TOKEN, "--lease-s", str(LEASE_S), "--runners", "sandbox,vm", *NO_RATE_LIMITS)


def start_edge(log: Path, *flags: str) -> ServeProcess:
    return start_serve(log, *EDGE_FLAGS, *flags, command_name="edge")


@pytest.fixture(scope="module")
def memory_edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    edge = start_edge(tmp_path_factory.mktemp("edge") / "edge.log")
    yield edge
    edge.stop()


@pytest.fixture(scope="module")
def redis_edges(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[list[ServeProcess]]:
    """Two edges on one Redis, under a key prefix of their own (a database of their own)."""
    folder = tmp_path_factory.mktemp("redis-edges")
    url = redis_url.rsplit("/", 1)[0] + "/3"
    edges: list[ServeProcess] = []
    try:
        for name in ("a", "b"):
            edges.append(start_edge(folder / f"{name}.log", "--state", url))
        yield edges
    finally:
        for edge in edges:
            edge.stop()


@pytest.fixture(params=["memory", "redis"])
def edge(request: pytest.FixtureRequest) -> ServeProcess:
    if request.param == "memory":
        return request.getfixturevalue("memory_edge")
    return request.getfixturevalue("redis_edges")[0]


def run(main: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(main, 60))


def spec() -> dict:
    """A run no other test asks for (so never answered from the cache or joined)."""
    return {"image": "busybox", "argv": ["echo", uuid.uuid4().hex]}


class Worker:
    """A worker played by hand: each call is one request of the protocol."""

    def __init__(
        self, http: httpx.AsyncClient, images: tuple[str, ...] = (), runners: tuple[str, ...] = ("sandbox",)
    ):
        self.http = http
        self.id = "test-" + uuid.uuid4().hex[:8]
        self.images = list(images)
        self.runners = runners

    async def pull(self, wait_s: float = 0.2) -> dict:
        report = {
            "worker": self.id,
            "runners": list(self.runners),
            "arch": platform.machine(),
            "images": self.images,
            "slots": 2,
            "running": 0,
            "wait_s": wait_s,
        }
        response = await self.http.post("/api/v1/work/pull", json=report, headers=AUTH)
        assert response.status_code == 200, response.text
        return response.json()

    async def pull_job(self, within_s: float = 5) -> tuple[Job, str]:
        """The next job and its lease token (the worker fetches whatever image it is told it wants)."""
        deadline = asyncio.get_running_loop().time() + within_s
        while asyncio.get_running_loop().time() < deadline:
            answer = await self.pull()
            if answer["job"] is not None:
                return Job.from_json(answer["job"]), answer["lease"]["token"]
            self.images += answer["wanted_images"]
        raise AssertionError(f"no job within {within_s} s")

    async def extend(self, job: Job, token: str) -> httpx.Response:
        return await self.http.post(f"/api/v1/work/jobs/{job.id}/leases/{token}/extend", headers=AUTH)

    async def complete(self, job: Job, token: str, body: bytes) -> httpx.Response:
        return await self.http.post(
            f"/api/v1/work/jobs/{job.id}/leases/{token}/complete", content=body, headers=CPIO
        )


def made_up(job: Job, text: str) -> RunOutput:
    out = error_output(job, "")
    return dataclasses.replace(
        out, result=dataclasses.replace(out.result, status=Status.OK), stdout=text.encode()
    )


async def submitted(http: httpx.AsyncClient, body: dict) -> asyncio.Task[httpx.Response]:
    """A run request in flight, once the edge has had the time to queue it."""
    task = asyncio.create_task(http.post("/api/v1/run", json=body))
    await asyncio.sleep(0.3)
    assert not task.done(), task.result().text
    return task


def client(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=20))


def test_worker_routes_refuse_a_missing_or_wrong_token(memory_edge: ServeProcess) -> None:
    calls = [
        ("POST", "/api/v1/work/pull"),
        ("POST", "/api/v1/work/jobs/x/leases/y/extend"),
        ("POST", "/api/v1/work/jobs/x/leases/y/complete"),
        ("GET", "/api/v1/work/workers"),
    ]
    wrong = [
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
    ]
    for method, path in calls:
        for headers in wrong:
            response = httpx.request(method, memory_edge.url + path, headers=headers, json={}, timeout=10)
            assert response.status_code == 401, (path, headers, response.text)
            assert response.json()["error"]["code"] == "unauthorized"
    assert "refused POST /api/v1/work/pull from 127.0.0.1" in memory_edge.log.read_text()
    assert TOKEN not in memory_edge.log.read_text()


def test_an_edge_without_a_worker_token_does_not_start() -> None:
    command = [sys.executable, "-m", "pe.cli", "edge", "--port", "1"]
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin"}
    )
    assert done.returncode != 0
    assert "PE_WORKER_TOKEN" in done.stderr


def test_a_pulled_job_is_extended_completed_and_answered_once(edge: ServeProcess) -> None:
    async def main() -> None:
        async with client(edge.url) as http:
            worker = Worker(http)
            await worker.pull()  # connected: the edge now accepts sandbox runs
            waiting = await submitted(http, spec())
            job, token = await worker.pull_job()
            for _ in range(3):  # held past its length by extending it
                await asyncio.sleep(LEASE_S / 2)
                extended = await worker.extend(job, token)
                assert extended.status_code == 200 and extended.json() == {"seconds": LEASE_S}
            listed = (await http.get("/api/v1/work/workers", headers=AUTH)).json()["workers"]
            mine = next(item for item in listed if item["worker"] == worker.id)
            assert mine["leases"] == [job.id] and mine["runners"] == ["sandbox"]
            completed = await worker.complete(job, token, pack_output(made_up(job, "the answer")))
            assert completed.json() == {"accepted": True}
            answer = await waiting
            assert answer.status_code == 200 and answer.json()["stdout"]["text"] == "the answer"
            again = await worker.complete(job, token, pack_output(made_up(job, "a second answer")))
            assert again.status_code == 200 and again.json() == {"accepted": False}
            lost = await worker.extend(job, token)
            assert lost.status_code == 409 and lost.json()["error"]["code"] == "lease_lost"
            stored = (await http.get(f"/api/v1/runs/{job.id}")).json()
            assert stored["stdout"]["text"] == "the answer"

    run(main())


def test_the_runner_time_an_upload_reports_is_in_the_answers_server_timing(edge: ServeProcess) -> None:
    """Reported with the upload, the runner's time is the client's `runner` figure; an upload whose
    figure is not a time is still accepted, and its answer has only the edge's."""

    async def main() -> None:
        async with client(edge.url) as http:
            worker = Worker(http)
            await worker.pull()
            for reported, expected in (("12.5", ", runner;dur=12.500"), ("soon", "")):
                waiting = await submitted(http, spec())
                job, token = await worker.pull_job()
                body = pack_output(made_up(job, "timed"))
                url = f"/api/v1/work/jobs/{job.id}/leases/{token}/complete"
                headers = {**CPIO, "pe-runner-ms": reported}
                completed = await http.post(url, content=body, headers=headers)
                assert completed.json() == {"accepted": True}
                answer = await waiting
                assert answer.json()["stdout"]["text"] == "timed"
                edge_ms, _, runner = answer.headers["server-timing"].partition(",")
                assert runner == expected.removeprefix(",")
                assert float(edge_ms.removeprefix("edge;dur=")) >= 300  # it waited for the worker

    run(main())


def test_another_worker_cannot_take_extend_or_complete_a_leased_job(edge: ServeProcess) -> None:
    """A second worker holds the worker token but not the lease: it is not handed the job, and its
    extends and uploads under a guessed lease token change nothing; the client gets the first's output."""

    async def main() -> None:
        async with client(edge.url) as http:
            holder, intruder = Worker(http), Worker(http)
            await holder.pull()
            waiting = await submitted(http, spec())
            job, token = await holder.pull_job()
            intruder.images = list(holder.images)  # it could run the job
            assert (await intruder.pull(wait_s=0.3))["job"] is None
            guessed = uuid.uuid4().hex
            refused = await intruder.extend(job, guessed)
            assert refused.status_code == 409 and refused.json()["error"]["code"] == "lease_lost"
            forged = await intruder.complete(job, guessed, pack_output(made_up(job, "forged")))
            assert forged.status_code == 200 and forged.json() == {"accepted": False}
            assert not waiting.done()
            real = await holder.complete(job, token, pack_output(made_up(job, "genuine")))
            assert real.json() == {"accepted": True}
            assert (await waiting).json()["stdout"]["text"] == "genuine"

    run(main())


def test_a_pull_whose_worker_has_gone_is_handed_no_job(memory_edge: ServeProcess) -> None:
    """A worker that goes away while its long poll waits (stopped: its connection closes) must not be
    leased the next job: that job would wait out its lease before a live worker got it."""

    async def main() -> None:
        async with client(memory_edge.url) as http:
            live = Worker(http)
            await live.pull()
            first = await submitted(http, spec())
            job, token = await live.pull_job()  # learns the image it must hold
            await live.complete(job, token, pack_output(made_up(job, "first")))
            await first
            async with client(memory_edge.url) as other:
                ghost = Worker(other, tuple(live.images))
                polling = asyncio.create_task(ghost.pull(wait_s=10))
                await asyncio.sleep(0.3)
                polling.cancel()
            await asyncio.sleep(0.3)
            waiting = await submitted(http, spec())
            answer = await live.pull(wait_s=3)
            assert answer["job"] is not None and answer["lease"]["attempt"] == 1
            job, token = Job.from_json(answer["job"]), answer["lease"]["token"]
            await live.complete(job, token, pack_output(made_up(job, "second")))
            assert (await waiting).json()["stdout"]["text"] == "second"

    run(main())


def test_an_expired_lease_gives_the_job_to_another_worker_first(edge: ServeProcess) -> None:
    async def main() -> None:
        async with client(edge.url) as http:
            stalled, other = Worker(http), Worker(http)
            await stalled.pull()
            first = await submitted(http, spec())
            job, stale_token = await stalled.pull_job()
            second = await submitted(http, spec())  # queued while the first one's lease runs out
            await asyncio.sleep(LEASE_S + 0.5)
            again, token = await other.pull_job()
            assert again.id == job.id and token != stale_token  # ahead of the second run
            late = await stalled.complete(job, stale_token, pack_output(made_up(job, "late")))
            assert late.json() == {"accepted": False}
            listed = (await http.get("/api/v1/work/workers", headers=AUTH)).json()["workers"]
            leases = {item["worker"]: item["leases"] for item in listed}
            assert (leases[stalled.id], leases[other.id]) == ([], [job.id])
            assert (await other.complete(again, token, pack_output(made_up(job, "on time")))).json()[
                "accepted"
            ]
            assert (await first).json()["stdout"]["text"] == "on time"
            next_job, token = await other.pull_job()
            await other.complete(next_job, token, pack_output(made_up(next_job, "second")))
            assert (await second).json()["stdout"]["text"] == "second"

    run(main())


def test_jobs_go_only_to_workers_with_their_runner_and_image(edge: ServeProcess) -> None:
    async def main() -> None:
        async with client(edge.url) as http:
            cold, vm_only = Worker(http), Worker(http, runners=("vm",))
            assert (await cold.pull())["job"] is None
            waiting = await submitted(http, spec())
            empty = await vm_only.pull()
            assert empty == {"job": None, "wanted_images": []}  # it could not run it with any image
            wanted = await cold.pull(wait_s=10)  # answered at once: there is an image to fetch
            assert wanted["job"] is None and len(wanted["wanted_images"]) == 1
            digest = wanted["wanted_images"][0]
            assert digest.startswith("sha256:")
            cold.images.append(digest)
            job, token = await cold.pull_job()
            assert job.image_digest == digest
            await cold.complete(job, token, pack_output(made_up(job, "warm")))
            assert (await waiting).json()["stdout"]["text"] == "warm"

    run(main())


def test_a_run_no_connected_worker_can_run_is_refused_at_once(tmp_path: Path) -> None:
    """A fresh edge, no worker yet: 503 no_workers; once a sandbox worker has pulled, sandbox runs are
    queued for it but vm runs are still refused."""
    edge = start_edge(tmp_path / "edge.log")

    async def main() -> None:
        async with client(edge.url) as http:
            refused = await http.post("/api/v1/run", json=spec())
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "no_workers"
            assert refused.headers["retry-after"]
            worker = Worker(http)
            await worker.pull()
            vm = await http.post("/api/v1/run", json={**spec(), "runner": "vm"})
            assert vm.status_code == 503 and vm.json()["error"]["code"] == "no_workers"
            waiting = await submitted(http, spec())
            job, token = await worker.pull_job()
            await worker.complete(job, token, pack_output(made_up(job, "queued")))
            assert (await waiting).json()["stdout"]["text"] == "queued"

    try:
        run(main())
    finally:
        edge.stop()


def test_a_waiting_run_is_answered_no_workers_when_its_workers_are_gone(tmp_path: Path) -> None:
    """Long polls of at most 1 s and leases of 1.5 s: a worker unseen for 2 s is gone. The client
    waiting for the run it took gets 503 no_workers; the job stays queued, and when a worker comes
    back it runs, and asking again gets its answer."""
    edge = start_edge(tmp_path / "edge.log", "--worker-wait-s", "1")

    async def main() -> None:
        async with client(edge.url) as http:
            worker = Worker(http)
            await worker.pull()
            body = spec()
            waiting = await submitted(http, body)
            started = asyncio.get_running_loop().time()
            answer = await waiting
            assert answer.status_code == 503 and answer.json()["error"]["code"] == "no_workers"
            assert asyncio.get_running_loop().time() - started < 6
            job, token = await Worker(http).pull_job()
            assert (await worker.complete(job, token, pack_output(made_up(job, "later")))).json()["accepted"]
            again = await http.post("/api/v1/run", json=body)
            assert again.status_code == 200 and again.json()["stdout"]["text"] == "later"

    try:
        run(main())
    finally:
        edge.stop()


def test_a_malformed_upload_is_refused_and_the_job_stays_completable(memory_edge: ServeProcess) -> None:
    async def main() -> None:
        async with client(memory_edge.url) as http:
            worker = Worker(http)
            await worker.pull()
            waiting = await submitted(http, spec())
            job, token = await worker.pull_job()
            garbage = await worker.complete(job, token, b"070701 this is not an archive")
            assert garbage.status_code == 400 and garbage.json()["error"]["code"] == "bad_cpio"
            other_run = made_up(dataclasses.replace(job, id="0" * 64), "someone else's")
            wrong = await worker.complete(job, token, pack_output(other_run))
            assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "bad_result"
            url = f"/api/v1/work/jobs/{job.id}/leases/{token}/complete"
            as_json = await http.post(url, json={}, headers=AUTH)
            assert as_json.status_code == 415
            assert not waiting.done()
            completed = await worker.complete(job, token, pack_output(made_up(job, "fine")))
            assert completed.json() == {"accepted": True}
            assert (await waiting).json()["stdout"]["text"] == "fine"

    run(main())


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "bad_json"),
        (b"[]", 422, "bad_pull"),
        (b'{"runners": ["sandbox"], "arch": "x86_64"}', 422, "bad_pull"),
        (b'{"worker": "w", "runners": ["gpu"], "arch": "x86_64"}', 422, "bad_pull"),
        (b'{"worker": "w", "runners": ["sandbox"], "arch": "x86_64", "images": "sha256:x"}', 422, "bad_pull"),
        (b'{"worker": "w", "runners": ["sandbox"], "arch": "x86_64", "wait_s": "long"}', 422, "bad_pull"),
        (b'{"worker": "w", "runners": ["sandbox"], "arch": "sparc"}', 422, "wrong_arch"),
    ],
)
def test_a_malformed_pull_is_a_json_error(
    memory_edge: ServeProcess, body: bytes, status: int, code: str
) -> None:
    body = body.replace(b"x86_64", platform.machine().encode())
    response = httpx.post(memory_edge.url + "/api/v1/work/pull", content=body, headers=AUTH, timeout=10)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def test_edges_on_one_redis_know_each_others_workers(redis_edges: list[ServeProcess]) -> None:
    """The worker pulls from edge a; a run asked of edge b is accepted, runs there, and is answered by b."""
    a, b = redis_edges

    async def main() -> None:
        async with client(a.url) as at_a, client(b.url) as at_b:
            worker = Worker(at_a)
            await worker.pull()
            listed: list[dict] = []
            for _ in range(30):  # the edges share their lists every 2 s
                listed = (await at_b.get("/api/v1/work/workers", headers=AUTH)).json()["workers"]
                if any(item["worker"] == worker.id for item in listed):
                    break
                await asyncio.sleep(0.2)
            assert any(item["worker"] == worker.id for item in listed)
            waiting = await submitted(at_b, spec())
            job, token = await worker.pull_job()
            assert (await worker.complete(job, token, pack_output(made_up(job, "via a")))).json()["accepted"]
            assert (await waiting).json()["stdout"]["text"] == "via a"

    run(main())


def test_metrics_count_the_connected_workers(memory_edge: ServeProcess) -> None:
    async def main() -> None:
        async with client(memory_edge.url) as http:
            await Worker(http).pull()
            text = (await http.get("/metrics")).text
            connected = next(line for line in text.splitlines() if line.startswith("pe_workers_connected "))
            assert float(connected.split()[1]) >= 1

    run(main())


def test_a_stopping_edge_answers_waiting_pulls_at_once(tmp_path: Path) -> None:
    """SIGTERM while a worker waits in a 20 s long poll: the pull is answered (no job) and the edge has
    exited well before the poll would have ended."""
    edge = start_edge(tmp_path / "edge.log")

    async def main() -> None:
        async with client(edge.url) as http:
            worker = Worker(http)
            polling = asyncio.create_task(worker.pull(wait_s=20))
            await asyncio.sleep(0.5)
            started = asyncio.get_running_loop().time()
            edge.process.terminate()
            assert (await polling)["job"] is None
            await asyncio.to_thread(edge.process.wait, 10)
            assert asyncio.get_running_loop().time() - started < 5

    try:
        run(main())
    finally:
        edge.stop()
