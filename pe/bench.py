"""`pe bench run`: the latency of a trivial run through the edge, against the bare sandbox primitive.

Both sides run `/bin/true` in the same image, measured in the same invocation so that the machine's
load affects both alike:

- primitive: the exact `crun run` command line the sandbox runner spawns for such a run (same bundle,
  config, cgroup and mount namespace), timed per iteration from a bash loop with `$EPOCHREALTIME`;
- edge: `POST /api/v1/run` with `"cache": false` to a `pe serve` child process over one keep-alive
  HTTP/1.1 connection, timed around each request, so it includes HTTP, parsing, hashing, the queue,
  the worker, per-run filesystem setup, the same crun invocation, output collection and packing.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from catalog.store import ImageStore
from pe.child import start_serve
from pe.settings import Settings

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


async def primitive_latencies(settings: Settings, image_id: str, runs: int) -> list[float]:
    from worker.sandbox import SandboxRunner

    meta = ImageStore(settings.images_dir).current(image_id)
    if meta is None:
        raise SystemExit(f"pe bench: image {image_id!r} is not built; run `pe images build {image_id}`")
    runner = SandboxRunner(settings.cache_dir, 1)
    try:
        bundle, command = await runner.primitive_command(
            ImageStore(settings.images_dir).image_path(meta.digest), meta.digest, ["/bin/true"]
        )
        script = SHELL_LOOP.format(count=runs, command=shlex.join(command))
        done = subprocess.run(["bash", "-c", script], cwd=bundle, capture_output=True, text=True, check=True)
        if done.stderr.strip():
            raise SystemExit(f"pe bench: the primitive failed: {done.stderr.strip()[:500]}")
    finally:
        await runner.close()
    return [
        (float(end) - float(start)) * 1000
        for start, end in (line.split() for line in done.stdout.splitlines())
    ]


def edge_latencies(settings: Settings, image_id: str, runs: int, warmup: int) -> list[float]:
    spec = {"image": image_id, "argv": ["/bin/true"], "cache": False}
    with tempfile.TemporaryDirectory() as scratch:
        served = start_serve(
            Path(scratch) / "serve.log", "--cache-dir", str(settings.cache_dir), "--slots", "1"
        )
        try:
            with httpx.Client(base_url=served.url, timeout=60) as client:
                latencies = []
                for index in range(warmup + runs):
                    started = time.perf_counter()
                    response = client.post("/api/v1/run", json=spec)
                    elapsed = (time.perf_counter() - started) * 1000
                    if response.status_code != 200 or response.json()["status"] != "ok":
                        raise SystemExit(
                            f"pe bench: run failed: {response.status_code} {response.text[:500]}"
                        )
                    if index >= warmup:
                        latencies.append(elapsed)
        finally:
            served.stop()
    return latencies


def report(name: str, latencies: list[float]) -> str:
    return (
        f"{name:<10} n={len(latencies):<5} p50={percentile(latencies, 0.5):7.2f} ms  "
        f"p95={percentile(latencies, 0.95):7.2f} ms  mean={statistics.fmean(latencies):7.2f} ms"
    )


def bench_run(args: argparse.Namespace) -> int:
    from pe.cli import settings_from

    settings = settings_from(args)
    primitive = asyncio.run(primitive_latencies(settings, args.image, args.runs))
    edge = edge_latencies(settings, args.image, args.runs, args.warmup)
    print(report("primitive", primitive))
    print(report("edge", edge))
    p50 = percentile(edge, 0.5) - percentile(primitive, 0.5)
    p95 = percentile(edge, 0.95) - percentile(primitive, 0.95)
    print(
        f"edge - primitive: p50 {p50:+.2f} ms, p95 {p95:+.2f} ms; "
        f"ratio p50 {percentile(edge, 0.5) / percentile(primitive, 0.5):.2f}"
    )
    return 0
