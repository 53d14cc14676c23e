"""`pe bench pack`: what packing the catalogue's images saves, what it costs to build, and whether runs
from a pack are slower.

- Store bytes: the current images' own erofs files against the store with the pack (the pack plus
  the images left loose; regenerated loose copies of packed images are a cache and counted apart).
- Build time by phase (hash, copy, link, mkfs, verify) of a pack of the current images, built here
  afresh and thrown away (the store is not changed).
- Run latency of one image, as the sandbox runner starts it (`primitive_command`, timed from a shell
  loop like `pe bench run`): its own erofs file mounted, against the pack mounted with the image's
  directory in it as the root. The two sides alternate in rounds in the same process, and which
  one goes first alternates from round to round.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import time

from catalog.entry import load_catalog
from catalog.pack import make_pack
from catalog.store import ImageLocation, ImageMeta, ImageStore
from pe.bench import ROUNDS, percentile, report, time_primitive


class _Switch:
    """An image locator that answers with whichever location the benchmark is measuring."""

    def __init__(self) -> None:
        self.location: ImageLocation | None = None

    def locate(self, digest: str) -> ImageLocation:
        assert self.location is not None
        return self.location


def store_bytes(store: ImageStore, metas: list[ImageMeta]) -> None:
    own = sum(meta.size for meta in metas)
    packed = store.packed()
    packs = {packed[meta.digest].key: packed[meta.digest] for meta in metas if meta.digest in packed}
    loose = [meta for meta in metas if meta.digest not in packed]
    copies = [meta for meta in metas if meta.digest in packed and store.image_path(meta.digest).is_file()]
    after = sum(pack.size for pack in packs.values()) + sum(meta.size for meta in loose)
    print(f"current images: {len(metas)}, their own erofs files: {own / 1e6:.1f} MB")
    print(
        f"store with packs: {len(packs)} packs {sum(p.size for p in packs.values()) / 1e6:.1f} MB + "
        f"{len(loose)} loose images {sum(m.size for m in loose) / 1e6:.1f} MB = {after / 1e6:.1f} MB "
        f"({100 * (after - own) / own:+.1f} %)"
    )
    if copies:
        print(
            f"(and {len(copies)} regenerated loose copies, a cache: "
            f"{sum(meta.size for meta in copies) / 1e6:.1f} MB)"
        )


def build_time(store: ImageStore, metas: list[ImageMeta]) -> None:
    started = time.monotonic()
    pack = make_pack(store, metas, progress=lambda line: None, publish=False)
    total = time.monotonic() - started
    phases = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in pack.phases.items())
    mkfs = sum(meta.phases.get("mkfs", 0) for meta in metas)
    print(f"pack build: {total:.1f} s ({phases}); {pack.size / 1e6:.1f} MB")
    print(f"  for scale: the images' own mkfs phases took {mkfs:.1f} s when they were built")
    if pack.unverified:
        print(f"  NOT VERIFIED: {', '.join(pack.unverified)}")


async def run_latency(store: ImageStore, meta: ImageMeta, argv: list[str], runs: int, warmup: int) -> None:
    from worker.sandbox import SandboxRunner

    pack = store.packed().get(meta.digest)
    if pack is None:
        raise SystemExit(f"pe bench pack: {meta.id} is not in a pack; run `pe images pack` first")
    sides = {
        "loose": ImageLocation(store.image_file(meta.digest)),
        "pack": ImageLocation(store.pack_path(pack.key), pack.members[meta.digest].root),
    }
    switch = _Switch()
    runner = SandboxRunner(switch, 1)
    latencies: dict[str, list[float]] = {side: [] for side in sides}
    try:
        commands = {}
        for side, location in sides.items():
            switch.location = location
            commands[side] = await runner.primitive_command(meta.digest, argv)
            time_primitive(*commands[side], warmup)
        for round_number in range(ROUNDS):  # which side goes first alternates too
            for side in sorted(sides, reverse=bool(round_number % 2)):
                latencies[side] += time_primitive(*commands[side], max(1, runs // ROUNDS))
    finally:
        await runner.close()
    print(f"run latency of {shlex.join(argv)} in {meta.id}, sides alternating in {ROUNDS} rounds:")
    for side, values in latencies.items():
        print(report(side, values))
    ratio = percentile(latencies["pack"], 0.5) / percentile(latencies["loose"], 0.5)
    p95 = percentile(latencies["pack"], 0.95) / percentile(latencies["loose"], 0.95)
    print(f"pack/loose: p50 ratio {ratio:.3f}, p95 ratio {p95:.3f}")


def bench_pack(args: argparse.Namespace) -> int:
    from pe.cli import settings_from

    store = ImageStore(settings_from(args).images_dir)
    metas = [meta for meta in map(store.current, load_catalog()) if meta is not None]
    image = store.current(args.image)
    if len(metas) < 2 or image is None:
        print(f"pe bench pack: needs at least two built images, {args.image} among them")
        return 1
    store_bytes(store, metas)
    build_time(store, metas)
    asyncio.run(run_latency(store, image, shlex.split(args.command), args.runs, args.warmup))
    return 0
