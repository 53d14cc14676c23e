"""The state behind the dispatcher, in memory and in a real redis-server: single-flight, the fair and
bounded queue, leases, the result cache; with Redis, several states sharing it as several edges would."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from api.errors import ApiError
from api.ratelimit import MemoryBuckets
from api.state import MemoryState, State
from api.state.base import MAX_ATTEMPTS, Capabilities, Offer
from api.state.redis import RedisBuckets, RedisState, connect
from pe.child import free_port, start_redis
from wire.result import RunOutput, Status
from wire.spec import parse_spec
from worker.runner import Job, error_output

BOUNDS = {"cache_bytes": 1 << 20, "queue_size": 100, "client_queue_size": 100, "lease_s": 30.0}
MakeState = Callable[..., State]


_open: list[State] = []  # started and not closed yet: `run` closes them if the test fails


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run a test's `main`, bounded; the states it started are closed even if it fails (left to the
    event loop's shutdown, Redis listeners cancelled there could hang it: seen with redis-py 8.1)."""

    async def bounded() -> None:
        try:
            await asyncio.wait_for(main, 30)
        finally:
            while _open:
                await asyncio.wait_for(_open.pop().close(), 10)

    asyncio.run(bounded())


@pytest.fixture(params=["memory", "redis"])
def make_state(request: pytest.FixtureRequest) -> MakeState:
    """Makes states with BOUNDS, overridden by keyword; with Redis, all of one test share the server
    and a key prefix of their own, like the edges of one deployment."""
    if request.param == "memory":
        return lambda **bounds: MemoryState(buckets=MemoryBuckets(), **{**BOUNDS, **bounds})
    url = request.getfixturevalue("redis_url")
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    return lambda **bounds: RedisState(url, prefix=prefix, **{**BOUNDS, **bounds})


@pytest.fixture
def make_edges(redis_url: str) -> MakeState:
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    return lambda **bounds: RedisState(redis_url, prefix=prefix, **{**BOUNDS, **bounds})


def job(name: str) -> Job:
    spec = parse_spec({"image": "busybox", "argv": ["echo", name]})
    return Job(
        id=name,
        spec=spec,
        argv=spec.argv,
        image_id="busybox",
        image_digest="sha256:" + "0" * 64,
        runner="sandbox",
    )


def output(of: Job, stdout: str) -> RunOutput:
    out = error_output(of, "")
    return dataclasses.replace(
        out, result=dataclasses.replace(out.result, status=Status.OK), stdout=stdout.encode()
    )


async def started(*states: State) -> None:
    for state in states:
        await state.start()
        _open.append(state)


async def closed(*states: State) -> None:
    for state in states:
        _open.remove(state)
        await state.close()


async def nothing_to_pull(state: State, within_s: float = 0.3) -> bool:
    try:
        lease = await asyncio.wait_for(state.pull(), within_s)
    except TimeoutError:
        return True
    raise AssertionError(f"pulled {lease.job.id}")


async def finish(state: State, of: Job, stdout: str) -> RunOutput:
    """Submit `of`, pull it, complete it with `stdout`: the output its waiter gets."""
    future = await state.submit(of, client="c", use_cache=True)
    lease = await state.pull()
    assert lease.job == of
    assert await state.complete(lease.job.id, lease.token, output(of, stdout))
    return await future


def test_identical_submissions_run_once_and_every_waiter_gets_the_output(make_state: MakeState) -> None:
    async def main() -> None:
        state = make_state()
        await started(state)
        same = job("same")
        futures = await asyncio.gather(
            *(state.submit(same, client=f"c{i}", use_cache=True) for i in range(100))
        )
        lease = await state.pull()
        assert lease.job == same
        assert await nothing_to_pull(state)
        assert await state.complete(lease.job.id, lease.token, output(same, "once"))
        outputs = await asyncio.gather(*futures)
        assert {out.stdout for out in outputs} == {b"once"}
        stored = await state.stored(same.id)
        assert stored is not None and stored.stdout == b"once"
        await closed(state)

    run(main())


def test_one_clients_burst_does_not_starve_another(make_state: MakeState) -> None:
    async def main() -> None:
        state = make_state()
        await started(state)
        for n in range(50):
            await state.submit(job(f"greedy-{n}"), client="greedy", use_cache=True)
        await state.submit(job("polite"), client="polite", use_cache=True)
        assert state.depth == 51
        pulled = [(await state.pull()).job.id for _ in range(4)]
        assert pulled == ["greedy-0", "polite", "greedy-1", "greedy-2"]
        assert state.depth == 47
        await closed(state)

    run(main())


def test_a_worker_gets_only_jobs_it_can_run_and_clients_keep_their_turn(make_state: MakeState) -> None:
    """Clients a, b, c queue jobs of images X, Y, X. A worker holding only Y gets b's job; one holding
    nothing is told it wants X (not Y: none is left); then holders of X get a's job before c's (a
    kept its turn while passed over), then a's second."""
    x, y = "sha256:" + "1" * 64, "sha256:" + "2" * 64

    def of_image(name: str, digest: str) -> Job:
        return dataclasses.replace(job(name), image_digest=digest)

    def able(
        *images: str, runners: tuple[str, ...] = ("sandbox",), fetching: tuple[str, ...] = ()
    ) -> Capabilities:
        return Capabilities(frozenset(runners), frozenset(images), frozenset(fetching))

    async def main() -> None:
        state = make_state()
        await started(state)
        for name, client, digest in [("a1", "a", x), ("a2", "a", x), ("b1", "b", y), ("c1", "c", x)]:
            await state.submit(of_image(name, digest), client=client, use_cache=True)
        offer = await state.offer(able(y), wait_s=0)
        assert offer.lease is not None and offer.lease.job.id == "b1"
        assert await state.offer(able(), wait_s=5) == Offer(None, (x,))  # at once, not after 5 s
        assert await state.offer(able(fetching=(x,)), wait_s=0) == Offer(None, ())
        assert await state.offer(able(x, runners=("vm",)), wait_s=0) == Offer(None, ())
        taken = []
        for _ in range(3):
            offer = await state.offer(able(x), wait_s=0)
            assert offer.lease is not None
            taken.append(offer.lease.job.id)
        assert taken == ["a1", "c1", "a2"]
        assert state.depth == 0
        await closed(state)

    run(main())


def test_the_queue_is_bounded_in_all_and_per_client(make_state: MakeState) -> None:
    async def main() -> None:
        state = make_state(queue_size=3, client_queue_size=2)
        await started(state)
        await state.submit(job("a1"), client="a", use_cache=True)
        await state.submit(job("a2"), client="a", use_cache=True)
        with pytest.raises(ApiError) as per_client:
            await state.submit(job("a3"), client="a", use_cache=True)
        assert (per_client.value.status, per_client.value.code) == (429, "client_queue_full")
        assert per_client.value.headers["Retry-After"] == "2"
        await state.submit(job("b1"), client="b", use_cache=True)
        with pytest.raises(ApiError) as full:
            await state.submit(job("c1"), client="c", use_cache=True)
        assert (full.value.status, full.value.code) == (503, "queue_full")
        assert full.value.headers["Retry-After"] == "2"
        # A refused job leaves nothing behind: once there is room, it is queued.
        await state.pull()
        await state.submit(job("a3"), client="a", use_cache=True)
        assert state.depth == 3
        await closed(state)

    run(main())


def test_an_expired_lease_goes_back_to_the_front_and_its_late_completion_is_dropped(
    make_state: MakeState,
) -> None:
    async def main() -> None:
        state = make_state(lease_s=0.4)
        await started(state)
        first, second = job("first"), job("second")
        waiting = await state.submit(first, client="x", use_cache=True)
        stalled = await state.pull()
        await state.submit(second, client="y", use_cache=True)
        await asyncio.sleep(0.6)
        again = await state.pull()
        assert again.job == first  # ahead of "second", which waited in the queue all along
        assert again.token != stalled.token
        assert not await state.extend(stalled.job.id, stalled.token)
        assert not await state.complete(stalled.job.id, stalled.token, output(first, "late"))
        assert not waiting.done()
        assert await state.complete(again.job.id, again.token, output(first, "good"))
        assert (await waiting).stdout == b"good"
        assert not await state.complete(again.job.id, again.token, output(first, "twice"))  # idempotent
        stored = await state.stored(first.id)
        assert stored is not None and stored.stdout == b"good"
        assert (await state.pull()).job == second
        await closed(state)

    run(main())


def test_a_job_whose_workers_all_lose_the_lease_is_given_up(make_state: MakeState) -> None:
    async def main() -> None:
        state = make_state(lease_s=0.2)
        await started(state)
        waiting = await state.submit(job("poison"), client="x", use_cache=True)
        attempts = []
        for _ in range(MAX_ATTEMPTS):
            attempts.append((await state.pull()).attempt)
            await asyncio.sleep(0.3)  # the worker died: no extension, no completion
        assert attempts == [1, 2, 3]
        assert await nothing_to_pull(state, within_s=0.5)  # the fourth hand-out answers instead
        given_up = await waiting
        assert given_up.result.status == Status.ERROR
        assert "given up" in given_up.result.message
        await closed(state)

    run(main())


def test_an_extended_lease_is_kept(make_state: MakeState) -> None:
    async def main() -> None:
        state = make_state(lease_s=0.4)
        await started(state)
        waiting = await state.submit(job("long"), client="x", use_cache=True)
        lease = await state.pull()
        for _ in range(4):
            await asyncio.sleep(0.2)
            assert await state.extend(lease.job.id, lease.token)
        assert await nothing_to_pull(state)
        assert await state.complete(lease.job.id, lease.token, output(lease.job, "done"))
        assert (await waiting).stdout == b"done"
        await closed(state)

    run(main())


def test_the_cache_drops_the_least_recently_used_run_when_over_its_bytes(make_state: MakeState) -> None:
    async def main() -> None:
        state = make_state(cache_bytes=25_000)  # room for two runs of 10,000 bytes (and overheads)
        await started(state)
        a, b, c = job("a"), job("b"), job("c")
        await finish(state, a, "a" * 10_000)
        await finish(state, b, "b" * 10_000)
        assert await state.stored(a.id) is not None  # now more recently used than b
        await finish(state, c, "c" * 10_000)
        assert await state.stored(b.id) is None
        assert await state.stored(a.id) is not None
        assert await state.stored(c.id) is not None
        await finish(state, job("huge"), "h" * 30_000)  # larger than the cache: not kept, nothing dropped
        assert await state.stored("huge") is None
        assert await state.stored(a.id) is not None
        await closed(state)

    run(main())


def test_a_job_survives_the_round_trip_through_json() -> None:
    spec = parse_spec(
        {
            "image": "busybox",
            "argv": ["sh", "-c", "cat data.bin"],
            "env": {"K": "V"},
            "files": {"data.bin": {"base64": "AAEC/w=="}, "dir/a.txt": {"text": "é"}},
            "stdin": {"text": "in"},
            "options": {"level": "-2", "fast": True},
            "limits": {"wall_ms": 2000},
            "runner": "sandbox",
        }
    )
    spec = dataclasses.replace(spec, limits=dataclasses.replace(spec.limits, memory_mib=512))
    original = Job(
        id="x" * 64,
        spec=spec,
        argv=("sh", "-c", "cat data.bin"),
        image_id="busybox",
        image_digest="sha256:" + "1" * 64,
        runner="sandbox",
        outputs=("*.svg",),
    )
    assert Job.from_json(json.loads(json.dumps(original.to_json()))) == original


# Several edges on one Redis.


def test_edges_on_one_redis_share_a_flight_and_the_cache(make_edges: MakeState) -> None:
    async def main() -> None:
        a, b = make_edges(), make_edges()
        await started(a, b)
        same = job("shared")
        on_a = await a.submit(same, client="x", use_cache=True)
        on_b = await b.submit(same, client="y", use_cache=True)
        assert b.depth == 1
        lease = await b.pull()
        assert await nothing_to_pull(a)
        assert await b.complete(lease.job.id, lease.token, output(same, "from b"))
        assert (await on_a).stdout == b"from b"  # the client waiting on edge a gets edge b's run
        assert (await on_b).stdout == b"from b"
        stored = await a.stored(same.id)
        assert stored is not None and stored.stdout == b"from b"
        await closed(a, b)

    run(main())


def test_a_run_that_finished_just_before_a_join_is_answered(make_edges: MakeState) -> None:
    async def main() -> None:
        a, b = make_edges(cache_bytes=1), make_edges(cache_bytes=1)  # too small to cache anything
        await started(a, b)
        same = job("just-finished")
        await finish(a, same, "fresh")
        future = await b.submit(same, client="x", use_cache=True)
        assert (await future).stdout == b"fresh"
        assert await nothing_to_pull(b)
        await closed(a, b)

    run(main())


def test_an_edge_whose_redis_is_down_answers_503_at_once() -> None:
    async def main() -> None:
        state = RedisState(f"redis://127.0.0.1:{free_port()}/0", **BOUNDS)
        await started(state)
        began = time.monotonic()
        for attempt in (
            state.submit(job("x"), client="x", use_cache=True),
            state.stored("x"),
            state.buckets.take("k", 1, 1, 1),
        ):
            with pytest.raises(ApiError) as caught:
                await attempt
            assert (caught.value.status, caught.value.code) == (503, "state_unavailable")
        assert time.monotonic() - began < 5
        await closed(state)

    run(main())


def test_waiters_get_a_503_when_redis_goes_away_and_the_edge_recovers_with_it(tmp_path: Path) -> None:
    port = free_port()
    server = start_redis(tmp_path, port)

    async def main() -> None:
        nonlocal server
        state = RedisState(f"redis://127.0.0.1:{port}/0", **BOUNDS)
        await started(state)
        waiting = await state.submit(job("in flight"), client="x", use_cache=True)
        server.terminate()
        server.wait()
        with pytest.raises(ApiError) as caught:
            await asyncio.wait_for(waiting, 10)
        assert (caught.value.status, caught.value.code) == (503, "state_unavailable")
        server = start_redis(tmp_path, port)  # empty: what was queued is gone, as after any restart
        deadline = time.monotonic() + 10
        while True:
            try:
                waiting = await state.submit(job("after"), client="x", use_cache=True)
                break
            except ApiError:
                assert time.monotonic() < deadline, "the edge did not recover"
                await asyncio.sleep(0.2)
        lease = await state.pull()
        assert await state.complete(lease.job.id, lease.token, output(lease.job, "back"))
        assert (await waiting).stdout == b"back"
        await closed(state)

    try:
        run(main())
    finally:
        server.terminate()
        server.wait()


def test_redis_buckets_count_for_every_edge_as_memory_buckets_do_for_one(redis_url: str) -> None:
    async def main() -> None:
        clients = [connect(redis_url), connect(redis_url)]
        prefix = f"test-{uuid.uuid4().hex[:8]}:"
        edges = [RedisBuckets(client, prefix) for client in clients]
        memory = MemoryBuckets()
        for n in range(5):
            shared = await edges[n % 2].take("client", 1, 0.01, 3)
            alone = await memory.take("client", 1, 0.01, 3)
            assert (shared.allowed, shared.limit, shared.remaining) == (
                alone.allowed,
                alone.limit,
                alone.remaining,
            )
        assert not shared.allowed
        assert shared.retry_after_s == pytest.approx(100, abs=1)
        assert shared.reset_s == pytest.approx(300, abs=1)
        assert (await edges[0].take("another client", 1, 0.01, 3)).allowed
        for client in clients:
            await client.aclose()

    run(main())


def test_redis_buckets_refill_at_their_rate(redis_url: str) -> None:
    async def main() -> None:
        client = connect(redis_url)
        buckets = RedisBuckets(client, f"test-{uuid.uuid4().hex[:8]}:")
        assert (await buckets.take("k", 1, 20, 1)).allowed
        refused = await buckets.take("k", 1, 20, 1)
        assert not refused.allowed
        assert 0 < refused.retry_after_s <= 0.05
        await asyncio.sleep(refused.retry_after_s + 0.01)
        assert (await buckets.take("k", 1, 20, 1)).allowed
        await client.aclose()

    run(main())
