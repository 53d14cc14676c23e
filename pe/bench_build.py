"""`pe bench build`: image build time by phase, and the pipeline's cost over a bare mkfs.erofs.

Per image, the rootfs is made once by its source's tool (mmdebstrap for Debian entries; timed and
reported apart, as it depends on the network and the mirror). Then the rest of the pipeline, exactly
as `pe images build` runs it (normalise, mkfs, digest, store with fsync, into a throw-away store on
the same filesystem), and a bare `mkfs.erofs` of the same tree with the same arguments and
SOURCE_DATE_EPOCH take turns, `rounds` times each, the pipeline first (normalising the tree twice
does the same work twice: it deletes nothing). Dirty pages are written back (sync) before each
side, outside the timings. The ratio of the medians, pipeline / bare mkfs, is the pipeline's
overhead; every image made must have the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from catalog.build import (
    BuildError,
    Phases,
    image_from_rootfs,
    make_rootfs,
    mkfs_command,
    pick,
    remove_tree,
    resolve_inputs,
)
from catalog.entry import CatalogEntry, CatalogError
from catalog.store import ImageMeta, ImageStore

STEPS = ("normalise", "mkfs", "digest", "store")


@dataclass
class Measured:
    image_id: str
    rootfs_s: float  # the source's tool, once
    steps: dict[str, float]  # medians of the pipeline's steps
    pipeline_s: float  # median of normalise + mkfs + digest + store
    bare_s: float  # median of the bare mkfs.erofs
    size: int
    file_count: int
    identical: bool  # the bare mkfs gave the pipeline's bytes, every round
    digest: str


def bench_image(entry: CatalogEntry, store: ImageStore, rounds: int) -> Measured:
    """Make the rootfs once, then `rounds` times the pipeline and a bare mkfs of the same tree."""
    resolved, key = resolve_inputs(entry)
    work = Path(tempfile.mkdtemp(prefix=f"bench-{entry.id}.", dir=store.scratch()))
    try:
        tree = work / "rootfs"
        started = time.time()
        packages = make_rootfs(entry, resolved, tree, store, lambda line: None)
        rootfs_s = time.time() - started
        samples: dict[str, list[float]] = {name: [] for name in (*STEPS, "pipeline", "bare")}
        digests: set[str] = set()

        def pipeline() -> ImageMeta:
            phases = Phases(entry.id, lambda line: None)
            begin = time.monotonic()
            meta = image_from_rootfs(
                entry, ImageStore(work / "store"), key, tree, work / "image.erofs", phases, started, packages
            )
            samples["pipeline"].append(time.monotonic() - begin)
            for name in STEPS[:-1]:
                samples[name].append(phases.seconds[name])
            samples["store"].append(samples["pipeline"][-1] - sum(phases.seconds[n] for n in STEPS[:-1]))
            digests.add(meta.digest)
            return meta

        def bare(epoch: int) -> None:
            image = work / "bare.erofs"
            begin = time.monotonic()
            subprocess.run(
                mkfs_command(image, tree, key),
                env={**os.environ, "SOURCE_DATE_EPOCH": str(epoch)},
                check=True,
            )
            samples["bare"].append(time.monotonic() - begin)
            digests.add("sha256:" + _sha256(image))
            image.unlink()

        os.sync()
        meta = pipeline()  # first, so that the tree is normalised; then the two take turns
        for index in range(rounds):
            os.sync()  # each side starts with no dirty pages to write back
            bare(meta.epoch)
            if index < rounds - 1:
                os.sync()
                meta = pipeline()
        identical = len(digests) == 1
        median = {name: statistics.median(values) for name, values in samples.items()}
        return Measured(
            image_id=entry.id,
            rootfs_s=rootfs_s,
            steps={name: median[name] for name in STEPS},
            pipeline_s=median["pipeline"],
            bare_s=median["bare"],
            size=meta.size,
            file_count=meta.file_count,
            identical=identical,
            digest=meta.digest,
        )
    finally:
        remove_tree(work)


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def table(rows: list[Measured], store: ImageStore) -> str:
    """A Markdown table of the measurements, with a total row."""
    columns = ["image", "rootfs (tool)", *STEPS, "pipeline", "bare mkfs", "ratio", "size", "files"]
    columns += ["bare = pipeline", "= store's image"]
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for row in rows:
        current = store.current(row.image_id)
        cells = [row.image_id, f"{row.rootfs_s:.1f} s", *(f"{row.steps[name]:.2f} s" for name in STEPS)]
        cells += [f"{row.pipeline_s:.2f} s", f"{row.bare_s:.2f} s", f"{row.pipeline_s / row.bare_s:.2f}"]
        cells += [f"{row.size / 1e6:.1f} MB", f"{row.file_count:,}", "yes" if row.identical else "NO"]
        cells.append("yes" if current and current.digest == row.digest else "no")
        lines.append("| " + " | ".join(cells) + " |")
    pipeline = sum(row.pipeline_s for row in rows)
    bare = sum(row.bare_s for row in rows)
    lines.append(
        f"| all | {sum(row.rootfs_s for row in rows):.1f} s | "
        + " | ".join(f"{sum(row.steps[name] for row in rows):.2f} s" for name in STEPS)
        + f" | {pipeline:.2f} s | {bare:.2f} s | {pipeline / bare:.2f} | "
        f"{sum(row.size for row in rows) / 1e6:.1f} MB | {sum(row.file_count for row in rows):,} | | |"
    )
    return "\n".join(lines)


def bench_build(args: argparse.Namespace) -> int:
    from pe.cli import settings_from

    store = ImageStore(settings_from(args).images_dir)
    try:
        entries = pick(args.ids or None)
    except CatalogError as error:
        print(f"pe bench build: {error}")
        return 1
    rows = []
    for entry in entries:
        print(f"{entry.id}: rootfs once, then {args.rounds} rounds of pipeline vs bare mkfs …", flush=True)
        try:
            rows.append(bench_image(entry, store, args.rounds))
        except BuildError as error:
            print(f"pe bench build: {entry.id}: {error}")
            return 1
        row = rows[-1]
        steps = ", ".join(f"{name} {row.steps[name]:.2f} s" for name in STEPS)
        print(
            f"{entry.id}: pipeline {row.pipeline_s:.2f} s ({steps}), bare mkfs {row.bare_s:.2f} s", flush=True
        )
    print(table(rows, store))
    return 0
