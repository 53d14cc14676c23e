"""`pe bench run`: the latency of a trivial run through the edge, against the bare sandbox primitive.

Both sides run `/bin/true` in the same image:

- primitive: the exact `crun run` command line the sandbox runner spawns for such a run (same kind of
  bundle, config, cgroup and mount namespace), timed per iteration from a bash loop with `$EPOCHREALTIME`;
- edge: `POST /api/v1/run` with `"cache": false` to a `pe serve` child process (one slot) over one
  keep-alive HTTP/1.1 connection (the standard library's client, the lightest), timed around each
  request, so it includes HTTP, parsing, hashing, the queue, the worker, per-run filesystem setup,
  the same crun invocation, output collection and packing.

The two alternate in rounds, so that the shared machine's changing load falls on both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import shlex
import statistics
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path

from catalog.store import ImageStore
from pe.child import NO_RATE_LIMITS, start_serve
from pe.settings import Settings

ROUNDS = 10
SHELL_LOOP = """
for i in $(seq {count}); do
  start=$EPOCHREALTIME
  {command} >/dev/null 2>&1 </dev/null || echo "failed $?" >&2
  end=$EPOCHREALTIME
  echo "$start $end"
done
"""


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def time_primitive(bundle: Path, command: list[str], count: int) -> list[float]:
    script = SHELL_LOOP.format(count=count, command=shlex.join(command))
    done = subprocess.run(["bash", "-c", script], cwd=bundle, capture_output=True, text=True, check=True)
    if done.stderr.strip():
        raise SystemExit(f"pe bench: the primitive failed: {done.stderr.strip()[:500]}")
    pairs = (line.split() for line in done.stdout.splitlines())
    return [(float(end) - float(start)) * 1000 for start, end in pairs]


def time_edge(client: http.client.HTTPConnection, spec: dict, count: int) -> list[float]:
    body = json.dumps(spec).encode()
    headers = {"Content-Type": "application/json"}
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        client.request("POST", "/api/v1/run", body, headers)
        response = client.getresponse()
        answer = response.read()
        latencies.append((time.perf_counter() - started) * 1000)
        if response.status != 200 or json.loads(answer)["status"] != "ok":
            raise SystemExit(f"pe bench: run failed: {response.status} {answer[:500]!r}")
    return latencies


async def measure(
    settings: Settings, image_id: str, runs: int, warmup: int
) -> tuple[list[float], list[float]]:
    from worker.sandbox import SandboxRunner

    store = ImageStore(settings.images_dir)
    meta = store.current(image_id)
    if meta is None:
        raise SystemExit(f"pe bench: image {image_id!r} is not built; run `pe images build {image_id}`")
    spec = {"image": image_id, "argv": ["/bin/true"], "cache": False}
    runner = SandboxRunner(store, 1)
    primitive: list[float] = []
    edge: list[float] = []
    with tempfile.TemporaryDirectory() as scratch:
        served = start_serve(
            Path(scratch) / "serve.log",
            "--cache-dir",
            str(settings.cache_dir),
            "--slots",
            "1",
            *NO_RATE_LIMITS,
        )
        try:
            bundle, command = await runner.primitive_command(meta.digest, ["/bin/true"])
            client = http.client.HTTPConnection(urllib.parse.urlsplit(served.url).netloc, timeout=60)
            time_primitive(bundle, command, warmup)
            time_edge(client, spec, warmup)
            per_round = max(1, runs // ROUNDS)
            for _ in range(ROUNDS):
                primitive += time_primitive(bundle, command, per_round)
                edge += time_edge(client, spec, per_round)
            client.close()
        finally:
            served.stop()
            await runner.close()
    return primitive, edge


def report(name: str, latencies: list[float]) -> str:
    return (
        f"{name:<10} n={len(latencies):<5} p50={percentile(latencies, 0.5):7.2f} ms  "
        f"p95={percentile(latencies, 0.95):7.2f} ms  mean={statistics.fmean(latencies):7.2f} ms"
    )


def bench_run(args: argparse.Namespace) -> int:
    from pe.cli import settings_from

    primitive, edge = asyncio.run(measure(settings_from(args), args.image, args.runs, args.warmup))
    print(report("primitive", primitive))
    print(report("edge", edge))
    p50 = percentile(edge, 0.5) - percentile(primitive, 0.5)
    p95 = percentile(edge, 0.95) - percentile(primitive, 0.95)
    ratio = percentile(edge, 0.5) / percentile(primitive, 0.5)
    print(f"edge - primitive: p50 {p50:+.2f} ms, p95 {p95:+.2f} ms; edge/primitive p50 ratio {ratio:.2f}")
    return 0
