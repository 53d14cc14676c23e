"""Per-client rate limits: the bucket maths on a fake clock, then a real `pe serve` with small budgets
behind a trusted proxy (this test process, 127.0.0.1, naming clients in X-Forwarded-For)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import httpx
import pytest

from api.errors import ApiError
from api.ratelimit import Decision, MemoryBuckets, RateLimits, quota_headers, raw_quota_headers, take_tokens
from pe.child import ServeProcess, start_serve
from pe.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.mark.anyio
async def test_a_bucket_gives_its_burst_then_refills_at_its_rate(clock: Clock) -> None:
    buckets = MemoryBuckets(clock=clock)
    taken = [await buckets.take("k", 1, 1.0, 3) for _ in range(3)]
    assert [d.remaining for d in taken] == [2, 1, 0]
    assert [d.reset_s for d in taken] == [1.0, 2.0, 3.0]
    assert all(d.allowed and d.limit == 3 and d.retry_after_s == 0 for d in taken)
    refused = await buckets.take("k", 1, 1.0, 3)
    assert refused == Decision(allowed=False, limit=3, remaining=0, reset_s=3.0, retry_after_s=1.0)
    clock.now += 0.5
    assert (await buckets.take("k", 1, 1.0, 3)).retry_after_s == pytest.approx(0.5)
    clock.now += 0.5
    assert (await buckets.take("k", 1, 1.0, 3)).allowed  # the refused takes cost nothing


@pytest.mark.anyio
async def test_refill_stops_at_the_burst(clock: Clock) -> None:
    buckets = MemoryBuckets(clock=clock)
    await buckets.take("k", 3, 1.0, 3)
    clock.now += 3600
    assert (await buckets.take("k", 1, 1.0, 3)).remaining == 2


@pytest.mark.anyio
async def test_costs_and_slow_rates(clock: Clock) -> None:
    buckets = MemoryBuckets(clock=clock)
    assert (await buckets.take("k", 2, 0.1, 5)).remaining == 3
    assert (await buckets.take("k", 2, 0.1, 5)).remaining == 1
    refused = await buckets.take("k", 2, 0.1, 5)
    assert not refused.allowed and refused.remaining == 1
    assert refused.retry_after_s == pytest.approx(10.0)
    assert refused.reset_s == pytest.approx(40.0)


def test_rates_that_are_not_exact_in_binary_still_give_the_whole_burst() -> None:
    full_at = now = 12345.678
    for left in (2, 1, 0):
        full_at, decision = take_tokens(full_at, now, 1, 1 / 3, 3)
        assert decision.allowed and decision.remaining == left


@pytest.mark.anyio
async def test_buckets_are_per_key(clock: Clock) -> None:
    buckets = MemoryBuckets(clock=clock)
    await buckets.take("runs:a", 1, 1.0, 1)
    assert not (await buckets.take("runs:a", 1, 1.0, 1)).allowed
    assert (await buckets.take("runs:b", 1, 1.0, 1)).allowed


@pytest.mark.anyio
async def test_full_buckets_are_forgotten(clock: Clock) -> None:
    buckets = MemoryBuckets(clock=clock)
    for key in ("a", "b", "c"):
        await buckets.take(key, 1, 1.0, 10)
    assert len(buckets) == 3
    clock.now += 1.0  # all three are full again: one take forgets them
    await buckets.take("d", 1, 1.0, 10)
    assert len(buckets) == 1


@pytest.mark.anyio
async def test_a_flood_of_keys_is_bounded(clock: Clock) -> None:
    buckets = MemoryBuckets(max_keys=100, clock=clock)
    for n in range(1000):
        await buckets.take(f"runs:{n}", 1, 0.001, 5)
    assert len(buckets) == 100
    # The most recently used are the ones kept.
    assert (await buckets.take("runs:999", 1, 0.001, 5)).remaining == 3


@pytest.mark.anyio
async def test_charge_raises_429_with_headers_and_reports_the_tightest_bucket(clock: Clock) -> None:
    settings = Settings(
        rate_requests_per_s=10, rate_requests_burst=50, rate_runs_per_s=0.5, rate_runs_burst=2
    )
    limits = RateLimits(MemoryBuckets(clock=clock), settings)
    quota = await limits.charge("c", limits.requests)
    assert quota is not None and quota.limit == 50
    quota = await limits.charge("c", limits.runs, quota)
    assert quota is not None and (quota.limit, quota.remaining) == (2, 1)
    await limits.charge("c", limits.runs)
    with pytest.raises(ApiError) as refused:
        await limits.charge("c", limits.runs)
    assert refused.value.status == 429 and refused.value.code == "rate_limited"
    assert refused.value.headers == {
        "Retry-After": "2",
        "RateLimit-Limit": "2",
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": "4",
    }


@pytest.mark.anyio
async def test_the_bucket_reported_is_the_one_with_the_smallest_share_left(clock: Clock) -> None:
    settings = Settings(rate_requests_per_s=1, rate_requests_burst=100, rate_runs_per_s=1, rate_runs_burst=20)
    limits = RateLimits(MemoryBuckets(clock=clock), settings)
    for _ in range(69):
        await limits.charge("c", limits.requests)
    quota = await limits.charge("c", limits.requests)  # 30 of 100 left: fewer than half
    quota = await limits.charge("c", limits.runs, quota)  # 19 of 20 left: more tokens, but nearly full
    assert quota is not None and (quota.limit, quota.remaining) == (100, 30)
    assert quota_headers(quota) == {
        "RateLimit-Limit": "100",
        "RateLimit-Remaining": "30",
        "RateLimit-Reset": "70",
    }


def test_quota_headers_are_sent_once_less_than_half_the_bucket_is_left() -> None:
    def decision(remaining: int, limit: int) -> Decision:
        return Decision(True, limit, remaining, reset_s=2.5, retry_after_s=0.0)

    for remaining, limit in ((100, 100), (50, 100), (2, 3), (1, 1)):
        assert quota_headers(decision(remaining, limit)) == {}
        assert raw_quota_headers(decision(remaining, limit)) == []
    assert quota_headers(decision(49, 100)) == {
        "RateLimit-Limit": "100", "RateLimit-Remaining": "49", "RateLimit-Reset": "3",
    }  # fmt: skip
    assert raw_quota_headers(decision(1, 3)) == [
        (b"ratelimit-limit", b"3"), (b"ratelimit-remaining", b"1"), (b"ratelimit-reset", b"3"),
    ]  # fmt: skip
    assert raw_quota_headers(decision(0, 1)) != []
    assert quota_headers(None) == {} and raw_quota_headers(None) == []


@pytest.mark.anyio
async def test_a_rate_of_zero_turns_a_policy_off(clock: Clock) -> None:
    limits = RateLimits(MemoryBuckets(clock=clock), Settings(rate_runs_per_s=0, rate_runs_burst=1))
    for _ in range(10):
        assert await limits.charge("c", limits.runs) is None


# Over HTTP: runs cost 1 of 3 (one back per 100 s), fresh runs 1 of 1, every request 1 of 12.
LIMITS = {
    "--trusted-proxies": "127.0.0.1/32",
    "--rate-runs-burst": "3",
    "--rate-runs-per-s": "0.01",
    "--rate-fresh-burst": "1",
    "--rate-fresh-per-s": "0.001",
    "--rate-requests-burst": "12",
    "--rate-requests-per-s": "0.01",
}


@pytest.fixture(scope="module")
def limited_edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    if os.geteuid() != 0:
        pytest.skip("the sandbox runner needs root (crun, mounts)")
    flags = [part for pair in LIMITS.items() for part in pair]
    served = start_serve(tmp_path_factory.mktemp("limited") / "serve.log", *flags)
    yield served
    served.stop()


@pytest.fixture
def http(limited_edge: ServeProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=limited_edge.url, timeout=30) as client:
        yield client


def new_client() -> dict[str, str]:
    """The header a trusted proxy adds for a client of its own (a new address each time)."""
    return {"X-Forwarded-For": f"198.51.100.7, 2001:db8:{uuid.uuid4().hex[:4]}::1"}


def spec(cache: bool = True) -> dict:
    """A spec never run before (its hash is new), so it misses the cache."""
    return {"image": "busybox", "argv": ["echo", uuid.uuid4().hex], "cache": cache}


def assert_rate_limited(response: httpx.Response, limit: int) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == "rate_limited"
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= 1000
    assert response.headers["ratelimit-limit"] == str(limit)
    assert response.headers["ratelimit-remaining"] == "0"
    assert int(response.headers["ratelimit-reset"]) >= retry_after


def test_a_client_over_its_run_budget_gets_429_while_another_is_served(http: httpx.Client) -> None:
    greedy, other = new_client(), new_client()
    first = http.post("/api/v1/run", json=spec(), headers=greedy)
    assert first.status_code == 200, first.text
    assert "ratelimit-limit" not in first.headers  # 2 of 3 runs left: far from the limit
    for left in (1, 0):
        response = http.post("/api/v1/run", json=spec(), headers=greedy)
        assert response.status_code == 200, response.text
        assert response.headers["ratelimit-limit"] == "3"  # the runs bucket, the tightest one
        assert response.headers["ratelimit-remaining"] == str(left)
    assert_rate_limited(http.post("/api/v1/run", json=spec(), headers=greedy), limit=3)
    response = http.post("/api/v1/run", json=spec(), headers=other)
    assert response.status_code == 200, response.text


def test_cache_hits_are_served_when_the_run_bucket_is_empty(http: httpx.Client) -> None:
    client = new_client()
    known = spec()
    first = http.post("/api/v1/run", json=known, headers=client)
    assert first.status_code == 200 and first.json()["cached"] is False
    for _ in range(2):
        assert http.post("/api/v1/run", json=spec(), headers=client).status_code == 200
    assert_rate_limited(http.post("/api/v1/run", json=spec(), headers=client), limit=3)
    hit = http.post("/api/v1/run", json=known, headers=client)
    assert hit.status_code == 200, hit.text
    assert hit.json()["cached"] is True
    assert "ratelimit-limit" not in hit.headers  # only the requests bucket was charged: 7 of 12 left
    assert http.get(hit.headers["content-location"], headers=client).status_code == 200


def test_answers_carry_the_quota_once_half_the_requests_bucket_is_used(http: httpx.Client) -> None:
    client = new_client()
    posted = http.post("/api/v1/run", json=spec(), headers=client)  # 11 of 12 requests left
    assert posted.status_code == 200, posted.text
    for _ in range(5):  # 10, 9, 8, 7, 6 left: half or more
        response = http.get(posted.headers["content-location"], headers=client)
        assert response.status_code == 200 and "ratelimit-remaining" not in response.headers
    response = http.get(posted.headers["content-location"], headers=client)
    assert response.status_code == 200
    assert (response.headers["ratelimit-limit"], response.headers["ratelimit-remaining"]) == ("12", "5")
    assert 690 <= int(response.headers["ratelimit-reset"]) <= 700  # 7 tokens at 0.01/s


def test_joining_the_identical_run_in_flight_costs_no_run(http: httpx.Client) -> None:
    client = new_client()
    tag = uuid.uuid4().hex
    slow = {"image": "busybox", "argv": ["sh", "-c", f"sleep 2; echo {tag}"]}
    started = http.post("/api/v1/run", json=slow, headers={**client, "Prefer": "respond-async"})
    assert started.status_code == 202, started.text
    for _ in range(2):
        assert http.post("/api/v1/run", json=spec(), headers=client).status_code == 200
    assert_rate_limited(http.post("/api/v1/run", json=spec(), headers=client), limit=3)
    # The run budget is spent, but the same request again joins the run in flight: no 429.
    joined = http.post("/api/v1/run", json=slow, headers=client)
    assert joined.status_code == 200, joined.text
    assert joined.json()["id"] == started.json()["id"] and joined.json()["stdout"]["text"] == f"{tag}\n"


def test_fresh_runs_are_limited_more_strictly(http: httpx.Client) -> None:
    client = new_client()
    known = spec(cache=False)
    response = http.post("/api/v1/run", json=known, headers=client)
    assert response.status_code == 200, response.text
    refused = http.post("/api/v1/run", json=known, headers=client)
    assert_rate_limited(refused, limit=1)
    assert "fresh" in refused.json()["error"]["message"]
    # Runs that may come from the cache are still allowed, and the refused fresh run cost none of them.
    response = http.post("/api/v1/run", json=spec(), headers=client)
    assert response.status_code == 200, response.text
    assert (response.headers["ratelimit-limit"], response.headers["ratelimit-remaining"]) == ("3", "1")


def test_every_request_takes_from_the_requests_bucket(http: httpx.Client) -> None:
    client = new_client()
    for _ in range(12):
        assert http.get(f"/api/v1/runs/{uuid.uuid4().hex}", headers=client).status_code == 404
    assert_rate_limited(http.get(f"/api/v1/runs/{uuid.uuid4().hex}", headers=client), limit=12)
    assert_rate_limited(http.post("/api/v1/run", json=spec(), headers=client), limit=12)


def test_a_spoofed_header_from_an_untrusted_peer_does_not_change_the_key(limited_edge: ServeProcess) -> None:
    """127.0.0.2 reaches the edge on loopback too, but is not a trusted proxy: its header is ignored."""
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(base_url=limited_edge.url, transport=transport, timeout=30) as untrusted:
        for _ in range(3):
            response = untrusted.post("/api/v1/run", json=spec(), headers=new_client())
            assert response.status_code == 200, response.text
        assert_rate_limited(untrusted.post("/api/v1/run", json=spec(), headers=new_client()), limit=3)
