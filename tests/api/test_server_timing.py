"""`Server-Timing` on POST /api/v1/run (api/timing.py): the edge's time for the request and the
runner's part of it, against `pe serve` with its in-process worker and a real sandbox."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from api.timing import RunnerTimes, parse_server_timing


def timings(response: httpx.Response) -> dict[str, float]:
    return parse_server_timing(response.headers["server-timing"])


@pytest.fixture
def client(edge) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=edge.url, timeout=30) as client:
        yield client


def test_a_run_reports_the_edge_time_and_the_runner_part_of_it(client: httpx.Client) -> None:
    spec = {"image": "busybox", "argv": ["sh", "-c", f"sleep 0.3 # {uuid.uuid4().hex}"]}
    started = time.perf_counter()
    response = client.post("/api/v1/run", json=spec)
    client_ms = (time.perf_counter() - started) * 1000
    assert response.status_code == 200 and response.json()["status"] == "ok", response.text
    figures = timings(response)
    assert set(figures) == {"edge", "runner"}
    assert 300 <= figures["runner"] <= figures["edge"] <= client_ms


def test_a_cache_hit_reports_only_the_edge_time(client: httpx.Client) -> None:
    spec = {"image": "busybox", "argv": ["sh", "-c", f"sleep 0.2 # {uuid.uuid4().hex}"]}
    ran = timings(client.post("/api/v1/run", json=spec))
    hit = client.post("/api/v1/run", json=spec)
    assert hit.json()["cached"] is True
    figures = timings(hit)
    assert set(figures) == {"edge"}
    assert 0 < figures["edge"] < ran["runner"]


def test_a_runner_time_reported_before_the_request_came_is_not_its_own() -> None:
    """The same job run again without the cache: the earlier run's report must not pass for this one."""
    times = RunnerTimes(size=2)
    times.record("job-a", 5.0)
    received = time.perf_counter()
    assert times.since("job-a", received) is None
    times.record("job-a", 7.0)
    assert times.since("job-a", received) == 7.0
    times.record("job-b", 1.0)
    times.record("job-c", 1.0)  # over the size: the oldest report goes
    assert times.since("job-a", received) is None and times.since("job-c", received) == 1.0
