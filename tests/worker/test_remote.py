"""EdgeSource, the worker's side of the protocol, against real `pe edge` children (no sandbox: the
outputs it hands back are made up here, so these run without root)."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from pe.child import free_port
from tests.api.test_workers_e2e import TOKEN, Process, start_edge
from wire.result import RunOutput
from worker import remote
from worker.pull import SourceRefused
from worker.remote import EdgeSource
from worker.runner import error_output


def source(edge_url: str, folder: Path, token: str = TOKEN, wait_s: float = 5) -> EdgeSource:
    return EdgeSource(
        edge_url,
        token,
        runners=("sandbox",),
        slots=1,
        images_dir=folder / "images",
        images_bytes=1 << 30,
        wait_s=wait_s,
    )


def made_up(job_output: RunOutput, text: str) -> RunOutput:
    return RunOutput(job_output.result, text.encode(), b"")


def spec() -> dict:
    return {"image": "busybox", "argv": ["echo", uuid.uuid4().hex]}


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Process:
    edge = start_edge(tmp_path_factory.mktemp("edge"), free_port(), "--worker-wait-s", "2")
    yield edge
    edge.stop()


def test_a_wrong_token_stops_the_worker(edge: Process, tmp_path: Path) -> None:
    async def main() -> None:
        wrong = source(edge.url, tmp_path, token="not-the-token")
        try:
            with pytest.raises(SourceRefused, match="unauthorized"):
                await wrong.pull_within(1)
        finally:
            await wrong.aclose()

    asyncio.run(main())


def test_pull_fetch_extend_complete(edge: Process, tmp_path: Path) -> None:
    """The worker lacks busybox: told so at once, it fetches it (digest checked), then gets the job;
    its lease extends; its output reaches the waiting client, with the runner's time it reported; the
    ended lease extends no more."""

    async def main() -> None:
        worker = source(edge.url, tmp_path)
        async with httpx.AsyncClient(base_url=edge.url, http1=False, http2=True, timeout=30) as client:
            try:
                await worker.pull_within(0)  # the edge sees the worker (a run needs one)
                asked = asyncio.create_task(client.post("/api/v1/run", json=spec()))
                lease = await asyncio.wait_for(worker.pull(), 20)
                assert worker.images.held() == [lease.job.image_digest]
                assert await worker.extend(lease)
                worker.ran(lease, 42.0)  # the PullWorker's report of the runner's time
                assert await worker.complete(lease, made_up(error_output(lease.job, ""), "made up\n"))
                response = await asyncio.wait_for(asked, 10)
                answer = response.json()
                assert answer["id"] == lease.job.id and answer["stdout"]["text"] == "made up\n"
                assert response.headers["server-timing"].endswith(", runner;dur=42.000")
                assert not await worker.extend(lease)
            finally:
                await worker.aclose()

    asyncio.run(main())


def test_the_worker_waits_for_an_edge_that_is_not_up_yet(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    caplog.set_level(logging.INFO, "pe.worker.remote")

    async def main() -> None:
        worker = source(f"http://127.0.0.1:{port}", tmp_path, wait_s=1)
        try:
            pulling = asyncio.create_task(worker.pull_within(1))
            await asyncio.sleep(1)
            assert not pulling.done()  # retrying, with backoff
            edge = await asyncio.to_thread(start_edge, tmp_path, port)
            try:
                started = time.monotonic()
                assert await asyncio.wait_for(pulling, 15) is None  # answered: no job
                assert time.monotonic() - started < 11  # the backoff's bound, plus the long poll
            finally:
                await asyncio.to_thread(edge.stop)
        finally:
            await worker.aclose()

    asyncio.run(main())
    messages = [record.getMessage() for record in caplog.records]
    assert any(
        message.startswith("edge unreachable, reconnecting with backoff: cannot connect to")
        for message in messages
    )
    assert "reconnected" in messages


def test_requests_on_a_draining_connection_go_to_a_new_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An edge at its connection limit (1 here) drains the oldest busy connection, the worker's: no new
    streams (SETTINGS_MAX_CONCURRENT_STREAMS=0), GOAWAY once its long poll is answered, and only then is
    its slot free. The worker's next requests go over a new connection at once (answered 503 busy, and
    retried, until the old one's slot is free); the long poll is still answered."""
    caplog.set_level(logging.INFO, "pe.worker.remote")
    edge = start_edge(tmp_path, free_port(), "--max-connections", "1", "--worker-wait-s", "3")

    async def main() -> float:
        worker = source(edge.url, tmp_path, wait_s=3)
        try:
            pulling = asyncio.create_task(worker.pull_within(3))
            await asyncio.sleep(0.5)
            async with httpx.AsyncClient(base_url=edge.url, http1=False, http2=True, timeout=30) as other:
                await other.get("/healthz")  # at the limit: the worker's connection drains
            started = time.monotonic()
            assert await asyncio.wait_for(worker.pull_within(0), 15) is None
            assert await pulling is None  # answered on the draining connection, or again on the new one
            return time.monotonic() - started
        finally:
            await worker.aclose()

    try:
        waited_s = asyncio.run(main())
    finally:
        edge.stop()
    assert waited_s < 2.5 + remote.BACKOFF_MAX_S  # the long poll's end, then one backoff at most
    messages = [record.getMessage() for record in caplog.records]
    unreachable = [message for message in messages if message.startswith("edge unreachable")]
    assert len(unreachable) == 1 and "503 busy" in unreachable[0], messages
    assert messages[-1] == "reconnected"


def test_pe_worker_needs_the_token(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "PE_WORKER_TOKEN"}
    command = [
        sys.executable,
        "-m",
        "pe.cli",
        "worker",
        "--edge",
        "http://127.0.0.1:9",
        "--cache-dir",
        str(tmp_path),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "--token T or PE_WORKER_TOKEN" in done.stderr


def test_pe_worker_refused_by_the_edge_exits_2(edge: Process, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the sandbox runner needs root")
    command = [sys.executable, "-m", "pe.cli", "worker", "--edge", edge.url, "--token", "wrong"]
    command += ["--cache-dir", str(tmp_path), "--slots", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "the edge refuses this worker: unauthorized" in done.stderr
