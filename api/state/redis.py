"""The shared state: a Redis server that several edges use at once (key layout in docs/state.md).

Every change that reads and writes more than one key is one Lua script (api/state/lua.py), so edges
never see each other half-way. Completions are announced on the `done` channel: each edge keeps one
subscription and answers its own waiters; the output itself waits under `out:<id>` for a while, so an
edge that joined a flight late, or missed the announcement while reconnecting, still finds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Iterator

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from api.ratelimit import Decision, take_tokens
from api.state import lua
from api.state.base import (
    POLL_S,
    SCAN_DEPTH,
    SCAN_QUEUES,
    Capabilities,
    Offer,
    Progress,
    State,
    StateUnavailable,
    client_queue_full,
    queue_full,
)
from wire.result import RunOutput, pack_output, unpack_output
from worker.pull import Lease
from worker.runner import Job

log = logging.getLogger("pe.state")

OUT_TTL_S = 30  # how long a finished run's output waits for the edges whose clients wait for it
DEPTH_REFRESH_S = 1.0
DOWN = (RedisConnectionError, RedisTimeoutError, OSError)


@contextlib.contextmanager
def reachable() -> Iterator[None]:
    """Turn "Redis is down or too slow" into a 503 JSON error instead of a 500."""
    try:
        yield
    except DOWN as error:
        raise StateUnavailable(type(error).__name__) from None


def connect(url: str) -> aioredis.Redis:
    """A client that fails fast: a request must not hang on a Redis that does not answer. One retry
    (on a fresh connection) rides over a Redis restart; more would only delay the 503."""
    return aioredis.from_url(url, socket_connect_timeout=2, socket_timeout=3, retry=Retry(NoBackoff(), 1))


class RedisBuckets:
    """Rate-limit buckets in Redis, so that every edge counts against the same bucket. The script keeps
    the same "full at" time as api.ratelimit's MemoryBuckets, in Redis's own clock (TIME), so edges
    with different clocks agree; the decision is computed from what it returns with the same function."""

    def __init__(self, client: aioredis.Redis, prefix: str = "pe:") -> None:
        self.prefix = prefix
        self._take = client.register_script(lua.TAKE_TOKENS)

    async def take(self, key: str, cost: float, rate: float, burst: float) -> Decision:
        with reachable():
            lag = await self._take(
                keys=[f"{self.prefix}bucket:{key}"], args=[repr(cost), repr(rate), repr(burst)]
            )
        # `lag` is how far ahead of now the bucket was full before this take; the script decided with
        # the same arithmetic, so this gives its decision.
        return take_tokens(float(lag), 0.0, cost, rate, burst)[1]


class RedisState(State):
    def __init__(
        self,
        url: str,
        *,
        cache_bytes: int,
        queue_size: int,
        client_queue_size: int,
        lease_s: float,
        prefix: str = "pe:",
    ) -> None:
        self._redis = connect(url)
        super().__init__(
            queue_size=queue_size,
            client_queue_size=client_queue_size,
            lease_s=lease_s,
            buckets=RedisBuckets(self._redis, prefix),
        )
        self.url = url
        self.cache_bytes = cache_bytes
        self.prefix = prefix
        self._scripts = {name: self._redis.register_script(source) for name, source in lua.STATE.items()}
        self._depth = 0
        self._depth_answers = 0  # how many script answers have set _depth (see _refresh_depth)
        self._listener: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        return self._depth

    async def _script(self, name: str, *args: str | int) -> object:
        with reachable():
            return await self._scripts[name](args=[self.prefix, *args])

    async def start(self) -> None:
        """Listen for announcements. When Redis is down the edge still starts (runs answer 503 until it
        is back) and the listener keeps trying. Completions announced before it has subscribed are
        not lost: it looks for the outputs of this edge's waiters right after subscribing."""
        self._listener = asyncio.create_task(self._listen(), name="redis-listener")

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._redis.aclose()

    async def stored(self, run_id: str) -> RunOutput | None:
        blob = await self._script("cache_get", run_id)
        return None if blob is None else unpack_output(blob)

    async def in_flight(self, job_id: str) -> bool:
        with reachable():
            return bool(await self._redis.exists(self.prefix + "job:" + job_id))

    async def progress(self, job_id: str) -> Progress | None:
        reply = await self._script("progress", job_id)
        if not reply:
            return None
        if reply[0] == b"running":
            return Progress("running", None, reply[1].decode())
        return Progress("queued", int(reply[2]), reply[1].decode())

    async def share_workers(self, mine: dict[str, str], live_s: float) -> dict[str, str]:
        """One hash, `workers`: worker id → its JSON with `last_seen_at`; entries older than `live_s`
        (their edge is gone) are dropped by whoever reads them."""
        key = self.prefix + "workers"
        with reachable():
            if mine:
                await self._redis.hset(key, mapping=mine)
            shared = {k.decode(): v.decode() for k, v in (await self._redis.hgetall(key)).items()}
            cutoff = time.time() - live_s
            stale = [k for k, v in shared.items() if json.loads(v)["last_seen_at"] < cutoff]
            if stale:
                await self._redis.hdel(key, *stale)
        return {k: v for k, v in shared.items() if k not in stale}

    async def _enqueue(self, job: Job, *, client: str, use_cache: bool) -> None:
        reply = await self._script(
            "submit",
            job.id,
            client,
            json.dumps(job.to_json()),
            self.queue_size,
            self.client_queue_size,
            int(use_cache),
            job.runner,
            job.image_digest,
        )
        status, value = reply
        if status == b"done":  # it finished just now, between the cache lookup and this
            self._deliver(job.id, unpack_output(value))
        elif status == b"full":
            raise queue_full()
        elif status == b"client_full":
            raise client_queue_full(self.client_queue_size)
        else:  # joined or queued, with the depth now
            self._set_depth(value)
            if status == b"queued":
                self._announce_work()  # the pullers here need not wait for the announcement's round trip

    async def _take(self, capabilities: Capabilities | None) -> Offer:
        token = uuid.uuid4().hex
        caps = ""
        if capabilities is not None:
            caps = json.dumps(
                {
                    "runners": sorted(capabilities.runners),
                    "images": sorted(capabilities.images),
                    "fetching": sorted(capabilities.fetching),
                }
            )
        lease_ms = round(self.lease_s * 1000)
        kind, *rest = await self._script("take", token, lease_ms, caps, SCAN_DEPTH, SCAN_QUEUES)
        if kind == b"wanted":
            return Offer(None, tuple(digest.decode() for digest in rest))
        job_json, depth, attempt = rest
        self._set_depth(depth)
        return Offer(Lease(Job.from_json(json.loads(job_json)), token, self.lease_s, int(attempt)))

    async def extend(self, job_id: str, token: str) -> bool:
        return bool(await self._script("extend", job_id, token, round(self.lease_s * 1000)))

    async def complete(self, job_id: str, token: str, output: RunOutput) -> bool:
        reply = await self._script(
            "complete", job_id, token, pack_output(output), self.cache_bytes, OUT_TTL_S * 1000
        )
        if reply:
            self._deliver(job_id, output)  # waiters here need not wait for the announcement
        return bool(reply)

    # The listener: one subscription per edge, for the whole life of the edge.

    async def _listen(self) -> None:
        done, work = self.prefix + "done", self.prefix + "work"
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(done, work)
                await self._catch_up()
                refreshed = 0.0
                while True:
                    message = await pubsub.get_message(timeout=POLL_S)
                    if message is not None and message["channel"] == done.encode():
                        await self._answer(message["data"].decode())
                    elif message is not None:
                        self._announce_work()
                    if time.monotonic() - refreshed > DEPTH_REFRESH_S:
                        await self._refresh_depth()
                        refreshed = time.monotonic()
            except DOWN as error:
                log.warning("lost Redis at %s (%s); reconnecting in 1 s", self.url, error)
                # Whatever was in flight may be lost with it: answer the waiters here rather than let
                # them hang.
                for job_id in list(self._waiting):
                    self._fail(job_id, StateUnavailable("connection lost while the run was in flight"))
                await asyncio.sleep(1)
            except Exception:
                log.exception("the Redis listener failed; restarting it in 1 s")
                await asyncio.sleep(1)
            finally:
                with contextlib.suppress(*DOWN):
                    await pubsub.aclose()

    def _set_depth(self, depth: bytes | int) -> None:
        self._depth = int(depth)
        self._depth_answers += 1

    async def _refresh_depth(self) -> None:
        """The depth as Redis counts it (other edges queue and take too), unless a script answered
        here while the GET was on its way: that answer may be the fresher one (a GET sent just before
        this edge's own submit would otherwise undo the depth the submit reported)."""
        answers = self._depth_answers
        depth = int(await self._redis.get(self.prefix + "queued") or 0)
        if answers == self._depth_answers:
            self._depth = depth

    async def _catch_up(self) -> None:
        """After (re)subscribing: answer waiters whose run finished while no one listened, and let the
        pullers look for work."""
        for job_id in list(self._waiting):
            await self._answer(job_id)
        self._announce_work()

    async def _answer(self, job_id: str) -> None:
        if job_id not in self._waiting:
            return
        blob = await self._redis.get(self.prefix + "out:" + job_id)
        if blob is not None:
            self._deliver(job_id, unpack_output(blob))
