"""The state seen through real `pe serve` processes: single-flight counted at the worker, two edges on one
redis-server, the rate limit across them, the fair queue, and an edge whose Redis is down.

Each request names its client in X-Forwarded-For (the edges trust loopback as a proxy), so that a
hundred requests can be a hundred clients, and a rate-limit test a client of its own."""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pe.child import ServeProcess, free_port, start_serve

TRUST_LOOPBACK = ("--trusted-proxies", "127.0.0.1/32")
REQUESTS_BURST = 4


@pytest.fixture(scope="module", autouse=True)
def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("the sandbox runner needs root (crun, mounts)")


@pytest.fixture(scope="module")
def memory_edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """Two slots, and leases of a second: runs that take longer hold theirs by the worker's heartbeat."""
    log = tmp_path_factory.mktemp("memory") / "serve.log"
    served = start_serve(log, "--slots", "2", "--lease-s", "1", *TRUST_LOOPBACK)
    yield served
    served.stop()


@pytest.fixture(scope="module")
def redis_edges(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[list[ServeProcess]]:
    """Two edges, each with its in-process worker, on one Redis (--redis is the alias of --state)."""
    folder = tmp_path_factory.mktemp("redis-edges")
    flags = ("--redis", redis_url, *TRUST_LOOPBACK, "--rate-requests-burst", str(REQUESTS_BURST))
    edges: list[ServeProcess] = []
    try:
        for name in ("a", "b"):
            edges.append(start_serve(folder / f"{name}.log", *flags, "--rate-requests-per-s", "0.01"))
        yield edges
    finally:
        for edge in edges:
            edge.stop()


def new_client() -> dict[str, str]:
    """The header that makes a request come from a client address no other request uses."""
    b = uuid.uuid4().bytes
    return {"X-Forwarded-For": f"10.{b[0]}.{b[1]}.{b[2]}"}


def uuid_spec() -> dict:
    """A slow run whose output is new each time (a random UUID): a second execution would differ."""
    return {
        "image": "busybox",
        "argv": ["sh", "-c", "sleep 0.5; cat /proc/sys/kernel/random/uuid; echo $MARK"],
        "env": {"MARK": uuid.uuid4().hex},
    }


def counter(url: str, name: str) -> float:
    """The sum of a counter over its labels, from /metrics."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(float(value) for value in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE))


async def post_runs(urls: list[str], specs: list[dict]) -> list[httpx.Response]:
    """POST each spec at once, each from a client of its own, to the edges in turn."""
    limits = httpx.Limits(max_connections=len(specs))
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        return await asyncio.gather(
            *(
                client.post(urls[n % len(urls)] + "/api/v1/run", json=spec, headers=new_client())
                for n, spec in enumerate(specs)
            )
        )


@pytest.fixture(params=["memory", "redis"])
def edge_urls(request: pytest.FixtureRequest) -> list[str]:
    if request.param == "memory":
        return [request.getfixturevalue("memory_edge").url]
    return [edge.url for edge in request.getfixturevalue("redis_edges")]


def test_a_hundred_identical_runs_execute_once(edge_urls: list[str]) -> None:
    """With Redis the hundred requests alternate between the two edges: one execution in all."""
    before = sum(counter(url, "pe_executions_total") for url in edge_urls)
    spec = uuid_spec()
    responses = asyncio.run(post_runs(edge_urls, [spec] * 100))
    assert [r.status_code for r in responses] == [200] * 100, responses[0].text
    assert len({r.json()["stdout"]["text"] for r in responses}) == 1
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(counter(url, "pe_executions_total") for url in edge_urls) - before == 1


def test_a_run_longer_than_its_lease_runs_once(memory_edge: ServeProcess) -> None:
    before = counter(memory_edge.url, "pe_executions_total")
    spec = {**uuid_spec(), "argv": ["sh", "-c", "sleep 2.5; cat /proc/sys/kernel/random/uuid"]}
    response = httpx.post(memory_edge.url + "/api/v1/run", json=spec, headers=new_client(), timeout=30)
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert counter(memory_edge.url, "pe_executions_total") - before == 1


def test_a_run_stored_by_one_edge_is_served_cached_by_the_other(redis_edges: list[ServeProcess]) -> None:
    a, b = (edge.url for edge in redis_edges)
    spec = uuid_spec()
    first = httpx.post(a + "/api/v1/run", json=spec, headers=new_client(), timeout=30).json()
    assert first["cached"] is False
    stored = httpx.get(f"{b}/api/v1/runs/{first['id']}", headers=new_client(), timeout=10)
    assert stored.status_code == 200
    assert stored.json()["stdout"] == first["stdout"]
    assert stored.json()["cached"] is True
    hits = counter(b, "pe_cache_hits_total")
    again = httpx.post(b + "/api/v1/run", json=spec, headers=new_client(), timeout=30).json()
    assert (again["cached"], again["stdout"]) == (True, first["stdout"])
    assert counter(b, "pe_cache_hits_total") - hits == 1


def test_the_rate_limit_holds_across_both_edges(redis_edges: list[ServeProcess]) -> None:
    a, b = (edge.url for edge in redis_edges)
    run_id = httpx.post(a + "/api/v1/run", json=uuid_spec(), headers=new_client(), timeout=30).json()["id"]
    client = new_client()
    answers = [
        httpx.get(f"{(a, b)[n % 2]}/api/v1/runs/{run_id}", headers=client, timeout=10)
        for n in range(REQUESTS_BURST + 1)
    ]
    assert [r.status_code for r in answers] == [200] * REQUESTS_BURST + [429]
    assert answers[-1].json()["error"]["code"] == "rate_limited"
    assert int(answers[-1].headers["Retry-After"]) > 0
    assert httpx.get(f"{b}/api/v1/runs/{run_id}", headers=new_client(), timeout=10).status_code == 200


def test_a_single_run_is_not_queued_behind_another_clients_burst(memory_edge: ServeProcess) -> None:
    """Two slots; a client queues twelve runs, then another client one: it runs fourth."""

    async def main() -> tuple[list[float], float]:
        greedy = new_client()
        done: list[float] = []

        async def post(client: httpx.AsyncClient, spec: dict, headers: dict[str, str]) -> float:
            response = await client.post(memory_edge.url + "/api/v1/run", json=spec, headers=headers)
            assert response.status_code == 200, response.text
            return time.monotonic()

        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=20)) as client:
            burst = [
                asyncio.create_task(post(client, {**uuid_spec(), "argv": ["sleep", "0.3"]}, greedy))
                for _ in range(12)
            ]
            while counter(memory_edge.url, "pe_queue_depth") < 10:
                await asyncio.sleep(0.05)
            polite = await post(client, uuid_spec(), new_client())
            done = list(await asyncio.gather(*burst))
        return done, polite

    greedy_done, polite_done = asyncio.run(main())
    assert sum(finished > polite_done for finished in greedy_done) >= 7


def test_an_edge_whose_redis_is_down_answers_503_and_stays_up(tmp_path: Path) -> None:
    served = start_serve(tmp_path / "serve.log", "--state", f"redis://127.0.0.1:{free_port()}/0")
    try:
        began = time.monotonic()
        response = httpx.post(served.url + "/api/v1/run", json=uuid_spec(), timeout=30)
        assert time.monotonic() - began < 5
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "state_unavailable"
        assert response.headers["Retry-After"]
        assert httpx.get(served.url + "/healthz", timeout=10).status_code == 200
    finally:
        served.stop()
