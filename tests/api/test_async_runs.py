"""Runs answered before they are done (docs/api.md, "Asynchronous runs"): the state's view of a job in
flight (queued with its place, running) and the long poll on it, in memory and in a real redis-server;
then the 202s, `Location` and long-polling GETs of real `pe serve` edges with one slot."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from api.state.base import Progress
from pe.child import NO_RATE_LIMITS, ServeProcess, start_serve
from tests.api import test_state
from tests.api.test_state import MakeState, closed, job, output, run, started

# The state tests' fixtures: states in memory and in Redis, and Redis states sharing keys as edges do.
make_state = test_state.make_state
make_edges = test_state.make_edges


def queued(position: int) -> Progress:
    return Progress("queued", position, "sandbox")


RUNNING = Progress("running", None, "sandbox")


def test_progress_gives_each_jobs_place_in_the_fair_queue_then_running(make_state: MakeState) -> None:
    async def main() -> None:
        state = make_state()
        await started(state)
        a1, a2, b1 = job("a1"), job("a2"), job("b1")
        for each, client in ((a1, "a"), (a2, "a"), (b1, "b")):
            await state.submit(each, client=client, use_cache=True)
        # Served in turn: a1, then b's first, then a2.
        assert [await state.progress(j.id) for j in (a1, b1, a2)] == [queued(0), queued(1), queued(2)]
        lease = await state.pull()
        assert lease.job == a1
        assert [await state.progress(j.id) for j in (a1, b1, a2)] == [RUNNING, queued(0), queued(1)]
        assert await state.complete(a1.id, lease.token, output(a1, "done"))
        assert await state.progress(a1.id) is None  # done: the cache has it
        assert not await state.in_flight(a1.id) and await state.in_flight(b1.id)
        assert await state.progress("never-submitted") is None
        await closed(state)

    run(main())


def test_watch_answers_when_the_job_is_leased_and_when_it_completes(make_state: MakeState) -> None:
    async def main() -> None:
        state = make_state()
        await started(state)
        watched = job("watched")
        await state.submit(watched, client="c", use_cache=True)
        start = time.monotonic()
        assert await state.watch(watched.id, queued(0), 0.3) == queued(0)  # nothing changed: after 0.3 s
        assert 0.25 < time.monotonic() - start < 5
        waking = asyncio.create_task(state.watch(watched.id, queued(0), 20))
        await asyncio.sleep(0.1)
        lease = await state.pull()
        start = time.monotonic()
        assert await waking == RUNNING
        assert time.monotonic() - start < 5  # woken by the change, not after the 20 s wait
        waking = asyncio.create_task(state.watch(watched.id, RUNNING, 20))
        await asyncio.sleep(0.1)
        assert await state.complete(watched.id, lease.token, output(watched, "done"))
        start = time.monotonic()
        assert await waking is None
        assert time.monotonic() - start < 5  # woken by the change, not after the 20 s wait
        await closed(state)

    run(main())


def test_a_stopping_edge_answers_its_long_polls_at_once(make_state: MakeState) -> None:
    """Else a long poll would hold the edge's shutdown drain for up to 30 s."""

    async def main() -> None:
        state = make_state()
        await started(state)
        waiting = job(f"waiting-{uuid.uuid4().hex}")
        await state.submit(waiting, client="c", use_cache=True)
        polling = asyncio.create_task(state.watch(waiting.id, queued(0), 20))
        await asyncio.sleep(0.1)
        state.stop_offers()
        start = time.monotonic()
        assert await polling == queued(0)
        assert time.monotonic() - start < 5  # woken by the change, not after the 20 s wait
        await closed(state)

    run(main())


def test_a_watch_on_one_edge_sees_another_edge_lease_and_complete(make_edges: MakeState) -> None:
    async def main() -> None:
        here, there = make_edges(), make_edges()
        await started(here, there)
        watched = job(f"watched-{uuid.uuid4().hex}")
        await here.submit(watched, client="c", use_cache=True)
        seen = await here.progress(watched.id)
        assert seen == queued(0)
        waking = asyncio.create_task(here.watch(watched.id, seen, 20))
        lease = await there.pull()
        start = time.monotonic()
        assert await waking == RUNNING
        assert time.monotonic() - start < 5  # woken by the change, not after the 20 s wait
        waking = asyncio.create_task(here.watch(watched.id, RUNNING, 20))
        assert await there.complete(watched.id, lease.token, output(watched, "done"))
        assert await waking is None
        stored = await here.stored(watched.id)
        assert stored is not None and stored.stdout == b"done"
        await closed(here, there)

    run(main())


# Through real edges with one slot each: a `sleep` run holds it, so the next run waits in the queue.

ASYNC = {"Prefer": "respond-async"}


@pytest.fixture(scope="module", params=["memory", "redis"])
def one_slot(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a `pe serve --slots 1`, its state in memory or in Redis (a database of its own, so
    that no other test's jobs are in its queue)."""
    if os.geteuid() != 0:
        pytest.skip("the sandbox runner needs root (crun, mounts)")
    flags = ["--slots", "1", *NO_RATE_LIMITS]
    if request.param == "redis":
        flags += ["--state", request.getfixturevalue("redis_url").rsplit("/", 1)[0] + "/5"]
    served: ServeProcess = start_serve(tmp_path_factory.mktemp(request.param) / "serve.log", *flags)
    yield served.url
    served.stop()


def shell(script: str) -> dict:
    """A busybox run of `script`, new to the cache (the marker in its env makes its id new)."""
    return {"image": "busybox", "argv": ["sh", "-c", script], "env": {"MARK": uuid.uuid4().hex}}


def assert_in_flight(response: httpx.Response, state: str, position: int | None) -> dict:
    assert response.status_code == 202, response.text
    assert response.headers["cache-control"] == "no-store"
    assert "etag" not in response.headers
    body = response.json()
    assert (body["state"], body["position"]) == (state, position)
    return body


def wait_until_running(client: httpx.Client, posted: httpx.Response) -> None:
    """Long-poll the run `posted` (a 202) until it is running."""
    body = posted.json()
    while body["state"] == "queued":
        body = client.get(posted.headers["location"], headers={"Prefer": "wait=5"}).json()
    assert body["state"] == "running", body


def test_a_run_behind_a_busy_slot_is_queued_then_running_then_done(one_slot: str) -> None:
    with httpx.Client(base_url=one_slot, timeout=60) as client:
        busy = client.post("/api/v1/run", json=shell("sleep 3"), headers=ASYNC)
        assert busy.status_code == 202, busy.text
        assert busy.headers["preference-applied"] == "respond-async"
        wait_until_running(client, busy)

        spec = shell("echo $MARK")
        posted = client.post("/api/v1/run", json=spec, headers=ASYNC)
        body = assert_in_flight(posted, "queued", 0)
        location = posted.headers["location"]
        assert location == f"/api/v1/runs/{body['id']}"
        assert_in_flight(client.get(location), "queued", 0)  # without a wait: answered at once

        start = time.monotonic()
        polled = client.get(location, headers={"Prefer": "wait=20"})
        assert 0.5 < time.monotonic() - start < 10  # woken when the sleep ended, not after 20 s
        if polled.status_code == 202:  # with Redis, a quick run may be over before the next look
            assert_in_flight(polled, "running", None)
            polled = client.get(location, headers={"Prefer": "wait=20"})
        assert polled.status_code == 200, polled.text
        assert polled.json()["stdout"]["text"] == spec["env"]["MARK"] + "\n"
        assert polled.headers["etag"] == f'"{body["id"]}"'
        assert "immutable" in polled.headers["cache-control"]
        assert client.get(location, headers={"If-None-Match": polled.headers["etag"]}).status_code == 304


def test_a_run_ready_within_the_wait_or_cached_is_a_plain_200(one_slot: str) -> None:
    with httpx.Client(base_url=one_slot, timeout=60) as client:
        spec = shell("echo $MARK")
        quick = client.post("/api/v1/run", json=spec, headers={"Prefer": "respond-async, wait=10"})
        assert quick.status_code == 200, quick.text
        assert "preference-applied" not in quick.headers
        assert quick.json()["cached"] is False
        again = client.post("/api/v1/run", json=spec, headers=ASYNC)
        assert again.status_code == 200 and again.json()["cached"] is True


@pytest.mark.parametrize(
    ("prefer", "status"),
    [
        ("wait=soon", 200),  # no respond-async: the synchronous answer, whatever the wait says
        ("respond-async; foo=bar, wait=-3", 202),  # a parameter and an unreadable wait: no wait
        ("RESPOND-ASYNC, wait=1e999", 202),  # names are case-insensitive; an infinite wait is none
        ("handling=lenient, , =x", 200),
    ],
)
def test_prefer_values_it_cannot_use_are_ignored(one_slot: str, prefer: str, status: int) -> None:
    with httpx.Client(base_url=one_slot, timeout=60) as client:
        busy = client.post("/api/v1/run", json=shell("sleep 2"), headers=ASYNC)
        posted = client.post("/api/v1/run", json=shell("echo $MARK"), headers={"Prefer": prefer})
        assert posted.status_code == status, posted.text
        assert client.get(busy.headers["location"], headers={"Prefer": "wait=x"}).status_code in (200, 202)
        unknown = client.get("/api/v1/runs/" + "0" * 64, headers={"Prefer": "wait=1"})
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_run"


def test_polling_takes_no_run_tokens_and_an_edge_without_workers_says_so(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    if os.geteuid() != 0:
        pytest.skip("the sandbox runner needs root (crun, mounts)")
    folder = tmp_path_factory.mktemp("tokens")
    flags = ("--slots", "1", "--rate-runs-per-s", "0.01", "--rate-runs-burst", "1")
    served = start_serve(folder / "serve.log", *flags)
    try:
        with httpx.Client(base_url=served.url, timeout=60) as client:
            posted = client.post("/api/v1/run", json=shell("sleep 1"), headers=ASYNC)
            assert posted.status_code == 202, posted.text
            for _ in range(3):  # GETs take from "requests" only
                polled = client.get(posted.headers["location"], headers={"Prefer": "wait=5"})
                assert polled.status_code in (200, 202), polled.text
            assert client.post("/api/v1/run", json=shell("true"), headers=ASYNC).status_code == 429
    finally:
        served.stop()
    flags = (*NO_RATE_LIMITS, "--worker-token", "unused")
    edge = start_serve(folder / "edge.log", *flags, command_name="edge")
    try:
        refused = httpx.post(edge.url + "/api/v1/run", json=shell("true"), headers=ASYNC, timeout=30)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "no_workers"
    finally:
        edge.stop()


def test_a_page_on_another_origin_may_send_prefer_and_read_location(one_slot: str) -> None:
    origin = {"Origin": "https://elsewhere.example"}
    asks = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "prefer"}
    preflight = httpx.options(one_slot + "/api/v1/run", headers={**origin, **asks})
    assert preflight.status_code == 204
    assert "prefer" in preflight.headers["access-control-allow-headers"].lower()
    posted = httpx.post(
        one_slot + "/api/v1/run", json=shell("sleep 1"), headers={**origin, **ASYNC}, timeout=30
    )
    assert posted.status_code == 202, posted.text
    exposed = posted.headers["access-control-expose-headers"].lower()
    assert "location" in exposed.split(", ") and "preference-applied" in exposed
