"""Where the edge keeps its queue, leases, in-flight runs, result cache and rate-limit buckets."""

from __future__ import annotations

from api.ratelimit import MemoryBuckets
from api.state.base import DEFAULT_CLIENT, State, StateUnavailable
from api.state.memory import MemoryState
from pe.settings import Settings

__all__ = ["DEFAULT_CLIENT", "MemoryState", "State", "StateUnavailable", "make_state"]


def make_state(settings: Settings) -> State:
    """The state `settings.state` names: "memory", or a redis:// URL."""
    bounds = {
        "cache_bytes": settings.run_store_bytes,
        "queue_size": settings.queue_size,
        "client_queue_size": settings.client_queue_size,
        "lease_s": settings.lease_s,
    }
    if settings.state == "memory":
        return MemoryState(buckets=MemoryBuckets(), **bounds)
    from api.state.redis import RedisState  # only edges that use Redis import its client

    return RedisState(settings.state, **bounds)
