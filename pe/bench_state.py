"""`pe bench state`: what the Redis state costs per request, against the in-memory state in the same run.

Two `pe serve` children with one slot each, one with `--state memory` and one with `--state redis://…`
(a redis-server this command starts), rate limits on but too high to refuse anything (so each request
still pays for its bucket), timed alternately in rounds over one keep-alive HTTP/1.1 connection each:

- cache hit: POST of a spec whose run is stored (bucket, cache lookup, answer);
- fresh run: POST `/bin/true` with `"cache": false` (buckets, queue, lease, the run itself, completion,
  the answer reaching the waiting request; with Redis through the `done` announcement).
"""

from __future__ import annotations

import argparse
import http.client
import tempfile
import urllib.parse
from pathlib import Path

from pe.bench import percentile, report, time_edge
from pe.child import free_port, start_redis, start_serve

ROUNDS = 10
HIGH_LIMITS = tuple(
    item
    for bucket in ("requests", "runs", "fresh")
    for item in (f"--rate-{bucket}-per-s", "1000000", f"--rate-{bucket}-burst", "1000000")
)


def measure(cache_dir: Path, image_id: str, runs: int) -> dict[str, dict[str, list[float]]]:
    """Latencies in ms by case ("cache hit", "fresh run") and state ("memory", "redis")."""
    cached = {"image": image_id, "argv": ["/bin/true"], "env": {"BENCH": "cached"}}
    fresh = {"image": image_id, "argv": ["/bin/true"], "cache": False}
    results: dict[str, dict[str, list[float]]] = {"cache hit": {}, "fresh run": {}}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        port = free_port()
        redis_server = start_redis(folder, port)
        states = {"memory": "memory", "redis": f"redis://127.0.0.1:{port}/0"}
        served = {}
        try:
            for name, state in states.items():
                flags = ("--state", state, "--slots", "1", *HIGH_LIMITS, "--cache-dir", str(cache_dir))
                served[name] = start_serve(folder / f"{name}.log", *flags)
            clients = {
                name: http.client.HTTPConnection(urllib.parse.urlsplit(edge.url).netloc, timeout=60)
                for name, edge in served.items()
            }
            for client in clients.values():
                time_edge(client, cached, 10)  # the first stores the run
                time_edge(client, fresh, 10)
            per_round = max(1, runs // ROUNDS)
            for _ in range(ROUNDS):
                for name, client in clients.items():
                    results["cache hit"].setdefault(name, []).extend(time_edge(client, cached, per_round))
                    results["fresh run"].setdefault(name, []).extend(time_edge(client, fresh, per_round))
            for client in clients.values():
                client.close()
        finally:
            for edge in served.values():
                edge.stop()
            redis_server.terminate()
            redis_server.wait(timeout=10)
    return results


def bench_state(args: argparse.Namespace) -> int:
    from pe.cli import settings_from

    results = measure(settings_from(args).cache_dir, args.image, args.runs)
    for case, by_state in results.items():
        print(case)
        for name, latencies in by_state.items():
            print("  " + report(name, latencies))
        memory, redis = by_state["memory"], by_state["redis"]
        added = percentile(redis, 0.5) - percentile(memory, 0.5)
        ratio = percentile(redis, 0.5) / percentile(memory, 0.5)
        print(f"  redis - memory: p50 {added:+.2f} ms; redis/memory p50 ratio {ratio:.2f}")
    return 0
