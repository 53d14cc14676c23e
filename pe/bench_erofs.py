"""`pe bench erofs`: wire.erofs (pure Python) against the kernel's erofs driver on the same image.

Two tasks, each side timed in the same run, rounds alternating between the sides:

- list: every entry's path and stat (our `walk`; `os.walk` + `os.lstat` on a loop mount);
- read: the list, plus every regular file's bytes in 8 MiB reads.

The kernel side mounts the image afresh for every round, so its decompressed page cache starts
empty; both sides read the image file itself through the (warm) page cache. `fsck.erofs --extract`
(erofs-utils' userspace decompressor, checking every file without writing it) is timed for reference.
Throughput counts file bytes (decompressed), not image bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from catalog.pack import mounted
from catalog.store import ImageMeta, ImageStore
from wire.erofs import ErofsImage

CHUNK = 8 << 20
Sample = tuple[int, int, float]  # entries seen, file bytes read, seconds


def bench_erofs(args: argparse.Namespace) -> int:
    from pe.cli import settings_from

    store = ImageStore(settings_from(args).images_dir)
    meta = pick_image(store, args.image)
    if meta is None:
        print("pe bench erofs: no such built image" if args.image else "pe bench erofs: the store is empty")
        return 1
    path = store.image_file(meta.digest)  # regenerated from its pack if need be
    print(f"image: {meta.id} {meta.digest[:19]}… {meta.size / 1e6:.1f} MB, {args.rounds} rounds, median")
    with path.open("rb") as file:
        sides: dict[str, dict[str, Callable[[], Sample]]] = {
            "wire.erofs": {"list": lambda: ours(file, False), "read": lambda: ours(file, True)}
        }
        if os.geteuid() == 0:
            sides["kernel"] = {"list": lambda: kernel(path, False), "read": lambda: kernel(path, True)}
        else:
            print("(not root: no loop mount, the kernel side is left out)")
        if shutil.which("fsck.erofs"):
            sides["fsck.erofs"] = {"read": lambda: fsck(path)}
        times, counts = measure(sides, args.rounds)
    report(times, counts)
    return 0


def pick_image(store: ImageStore, image_id: str | None) -> ImageMeta | None:
    """The current image of `image_id`, or the largest image in the store."""
    if image_id:
        return store.current(image_id)
    metas = [
        ImageMeta.from_json(json.loads(path.read_bytes())) for path in (store.root / "sha256").glob("*.json")
    ]
    metas = [meta for meta in metas if store.has(meta.digest)]
    return max(metas, key=lambda meta: meta.size, default=None)


def measure(
    sides: dict[str, dict[str, Callable[[], Sample]]], rounds: int
) -> tuple[dict[tuple[str, str], list[float]], dict[tuple[str, str], tuple[int, int]]]:
    """Seconds per (side, task) for each round, and the (entries, bytes) each saw."""
    times: dict[tuple[str, str], list[float]] = {}
    counts: dict[tuple[str, str], tuple[int, int]] = {}
    for _ in range(rounds):
        for side, tasks in sides.items():
            for task, run in tasks.items():
                entries, total, seconds = run()
                counts[side, task] = entries, total
                times.setdefault((side, task), []).append(seconds)
    return times, counts


def ours(file: BinaryIO, read: bool) -> Sample:
    """Opening the image (superblock, checksum) included: a browser starts from nothing."""
    start = time.perf_counter()
    image = ErofsImage.from_file(file)
    entries = total = 0
    for _, inode in image.walk():
        entries += 1
        if read and inode.is_file:
            for offset in range(0, inode.size, CHUNK):
                total += len(image.read_data(inode, offset, CHUNK))
    return entries, total, time.perf_counter() - start


def kernel(path: Path, read: bool) -> Sample:
    """Mounting and unmounting (~10 ms) left out."""
    with mounted(path) as root:
        start = time.perf_counter()
        entries, total = 1, 0
        os.lstat(root)
        buffer = bytearray(CHUNK)
        for folder, dirs, files in os.walk(root):
            for name in dirs + files:
                entries += 1
                child = os.path.join(folder, name)
                if stat.S_ISREG(os.lstat(child).st_mode) and read:
                    with open(child, "rb", buffering=0) as handle:
                        while count := handle.readinto(buffer):
                            total += count
        return entries, total, time.perf_counter() - start


def fsck(path: Path) -> Sample:
    start = time.perf_counter()
    subprocess.run(["fsck.erofs", "--extract", str(path)], check=True, capture_output=True)
    return 0, 0, time.perf_counter() - start


def report(times: dict[tuple[str, str], list[float]], counts: dict[tuple[str, str], tuple[int, int]]) -> None:
    entries, total = counts["wire.erofs", "read"]
    print(f"{entries} entries, {total / 1e6:.1f} MB in regular files")
    for task in ("list", "read"):
        if ("kernel", task) in counts and counts["kernel", task] != counts["wire.erofs", task]:
            print(f"MISMATCH in {task}: kernel {counts['kernel', task]}, ours {counts['wire.erofs', task]}")
    median = {key: statistics.median(values) for key, values in times.items()}
    print(f"{'':12} {'list':>9} {'read all':>10} {'MB/s':>8}")
    for side in dict.fromkeys(side for side, _ in times):
        listed = median.get((side, "list"))
        read = median[side, "read"]
        listing = f"{listed:8.3f}s" if listed is not None else f"{'-':>9}"
        print(f"{side:12} {listing} {read:9.2f}s {total / 1e6 / read:8.1f}")
    for side in ("kernel", "fsck.erofs"):
        if (side, "read") in median:
            ratio = median["wire.erofs", "read"] / median[side, "read"]
            line = f"wire.erofs / {side}: read {ratio:.1f}x"
            if (side, "list") in median:
                line += f", list {median['wire.erofs', 'list'] / median[side, 'list']:.1f}x"
            print(line)
