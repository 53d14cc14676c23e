"""Per-client token buckets, and the policies the run routes charge (docs/edge.md, "Rate limits").

A bucket holds up to `burst` tokens and refills at `rate` tokens per second. It is kept as one number,
the time at which it will be full again (the "theoretical arrival time" of GCRA, the generic cell rate
algorithm): taking `cost` tokens moves that time `cost / rate` seconds later, and is refused when it
would land more than `burst / rate` seconds ahead of now. A full bucket is the same as no bucket, so
stores forget full buckets.

`BucketStore` is what a state backend implements (memory here; Redis in api/state). `RateLimits` holds
the policies from the settings and turns a refusal into a 429 with `Retry-After` and the `RateLimit-*`
headers of draft-ietf-httpapi-ratelimit-headers. Allowed answers carry those headers only once the
client has used half of a bucket (docs/edge.md, "Rate limits": they cost a cache hit ~10 % of its time).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from api.errors import ApiError
from pe.settings import Settings

# Slack for float arithmetic, in seconds and in tokens: 3 takes of 1/3 s must fit a 1 s window.
_EPSILON = 1e-6
# Buckets MemoryBuckets keeps at most; beyond it the least recently used is forgotten (that client's
# bucket starts full again), so a flood of addresses cannot grow memory without limit.
MAX_KEYS = 100_000


# Not frozen: a frozen dataclass's __init__ costs four times as much, and every request makes one.
@dataclass(slots=True)
class Decision:
    allowed: bool
    limit: int  # the bucket's burst size
    remaining: int  # whole tokens left after this request
    reset_s: float  # seconds until the bucket is full again
    retry_after_s: float  # seconds until `cost` tokens are available (0 when allowed)


class BucketStore(Protocol):
    async def take(self, key: str, cost: float, rate: float, burst: float) -> Decision:
        """Take `cost` tokens from bucket `key` (refilled at `rate` tokens/s up to `burst`)."""
        ...


def take_tokens(full_at: float, now: float, cost: float, rate: float, burst: float) -> tuple[float, Decision]:
    """Take `cost` tokens from the bucket that is full at `full_at` (any time <= now: full now).
    Returns when the bucket is full after this decision, and the decision. (Every request calls this:
    comparisons rather than max() and math.floor() halve its cost.)"""
    if full_at < now:
        full_at = now
    after = full_at + cost / rate
    ahead = after - now - burst / rate  # how far past a full window this take would reach
    if ahead > _EPSILON:
        remaining = burst - (full_at - now) * rate
        return full_at, Decision(False, int(burst), _whole(remaining), full_at - now, ahead)
    remaining = burst - (after - now) * rate
    return after, Decision(True, int(burst), _whole(remaining), after - now, 0.0)


def _whole(tokens: float) -> int:
    """Whole tokens, never negative (int() rounds towards 0: the same as flooring, for what is kept)."""
    whole = int(tokens + _EPSILON)
    return whole if whole > 0 else 0


class MemoryBuckets:
    """Buckets in this process: a bucket's "full at" time per key, least recently used first."""

    def __init__(self, max_keys: int = MAX_KEYS, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_keys = max_keys
        self.clock = clock
        self._full_at: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._full_at)

    async def take(self, key: str, cost: float, rate: float, burst: float) -> Decision:
        now = self.clock()
        buckets = self._full_at
        full_at, decision = take_tokens(buckets.get(key, now), now, cost, rate, burst)
        buckets[key] = full_at
        buckets.move_to_end(key)
        # Forget from the least recently used end: buckets that are full by now, and any over the bound.
        while buckets:
            oldest = next(iter(buckets))
            if len(buckets) <= self.max_keys and buckets[oldest] > now:
                break
            del buckets[oldest]
        return decision


@dataclass(frozen=True)
class Policy:
    """One bucket per client: `rate` tokens per second up to `burst`; a rate of 0 turns it off."""

    name: str  # the bucket's key prefix
    what: str  # what it counts, for the 429 message
    rate: float
    burst: int


class RateLimits:
    """The policies the run routes charge, each request taking one token (docs/edge.md)."""

    def __init__(self, buckets: BucketStore, settings: Settings) -> None:
        self.buckets = buckets
        self.requests = Policy(
            "requests", "requests", settings.rate_requests_per_s, settings.rate_requests_burst
        )
        self.runs = Policy("runs", "uncached runs", settings.rate_runs_per_s, settings.rate_runs_burst)
        self.fresh = Policy(
            "fresh", 'fresh runs ("cache": false)', settings.rate_fresh_per_s, settings.rate_fresh_burst
        )

    async def charge(self, client: str, policy: Policy, quota: Decision | None = None) -> Decision | None:
        """Take a token from `client`'s `policy` bucket, or raise 429 rate_limited when it is empty.

        Returns the decision to report in the `RateLimit-*` headers: of this one and `quota` (an earlier
        decision for the same request), the one with the smaller share of its bucket left.
        """
        if policy.rate <= 0:
            return quota
        decision = await self.buckets.take(f"{policy.name}:{client}", 1.0, policy.rate, policy.burst)
        if not decision.allowed:
            retry_after = max(1, _seconds(decision.retry_after_s))
            raise ApiError(
                429,
                "rate_limited",
                f"too many {policy.what} from your address; try again in {retry_after} s",
                {"Retry-After": str(retry_after), **_quota_headers(decision)},
            )
        if quota is None or decision.remaining * quota.limit < quota.remaining * decision.limit:
            return decision
        return quota


QUOTA_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")
_RAW_QUOTA_HEADERS = tuple(name.lower().encode() for name in QUOTA_HEADERS)


def worth_reporting(decision: Decision) -> bool:
    """Whether an allowed answer carries the `RateLimit-*` headers: once less than half of the bucket
    is left. A client far from its limit has nothing to adjust, and the three headers are a good part
    of a cache hit's cost (docs/edge.md, "Rate limits")."""
    return 2 * decision.remaining < decision.limit


def quota_headers(decision: Decision | None) -> dict[str, str]:
    """`RateLimit-Limit`, `-Remaining` and `-Reset` (whole seconds) for `decision` when it is worth
    reporting; none otherwise (a 429 carries them always: `RateLimits.charge`)."""
    if decision is None or not worth_reporting(decision):
        return {}
    return _quota_headers(decision)


def raw_quota_headers(decision: Decision | None) -> list[tuple[bytes, bytes]]:
    """The same headers as ASGI pairs (lower-case names, bytes), for a route that builds its own."""
    if decision is None or not worth_reporting(decision):
        return []
    return [
        (name, b"%d" % value) for name, value in zip(_RAW_QUOTA_HEADERS, _quota_values(decision), strict=True)
    ]


def _quota_headers(decision: Decision) -> dict[str, str]:
    return dict(zip(QUOTA_HEADERS, map(str, _quota_values(decision)), strict=True))


def _quota_values(decision: Decision) -> tuple[int, int, int]:
    return decision.limit, decision.remaining, _seconds(decision.reset_s)


def _seconds(duration: float) -> int:
    """Whole seconds, rounded up (a client that waits that long finds the tokens there)."""
    return max(0, math.ceil(duration - _EPSILON))
