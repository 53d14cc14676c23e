"""`pe bench sharing`: how many bytes the catalogue's images share, file by file (same content hash).

Each current image of the store is loop-mounted read-only; every regular file is hashed. Reported:
the bytes of all files, the bytes of distinct contents (what a store that keeps each content once
would hold), the shared fraction, and which images share the most with each other.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from collections import defaultdict
from itertools import combinations
from pathlib import Path

from catalog.entry import load_catalog
from catalog.pack import mounted
from catalog.store import ImageStore


def content_sizes(root: Path) -> dict[str, int]:
    """sha256 of every regular file under `root` → its size (a content counted once per image)."""
    sizes: dict[str, int] = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder, name)
            if path.is_symlink() or not path.is_file():
                continue
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
            sizes[digest.hexdigest()] = path.stat().st_size
    return sizes


def bench_sharing(args: argparse.Namespace) -> int:
    from pe.cli import settings_from

    store = ImageStore(settings_from(args).images_dir)
    per_image: dict[str, dict[str, int]] = {}
    image_bytes = 0
    for image_id in load_catalog():
        meta = store.current(image_id)
        if meta is None:
            print(f"{image_id}: not built, left out")
            continue
        image_bytes += meta.size
        location = store.locate(meta.digest)  # its own erofs file, or the pack holding it
        with mounted(location.file) as root:
            per_image[image_id] = content_sizes(root / location.root)
    total = sum(sum(sizes.values()) for sizes in per_image.values())
    distinct: dict[str, int] = {}
    owners: defaultdict[str, set[str]] = defaultdict(set)
    for image_id, sizes in per_image.items():
        distinct.update(sizes)
        for content in sizes:
            owners[content].add(image_id)
    unique = sum(distinct.values())
    print(f"images: {len(per_image)}, their own erofs files: {image_bytes / 1e6:.1f} MB")
    print(
        f"file contents: {total / 1e6:.1f} MB in all, {unique / 1e6:.1f} MB distinct, "
        f"{(total - unique) / 1e6:.1f} MB shared ({100 * (total - unique) / total:.1f} % of all bytes)"
    )
    pairs = []
    for first, second in combinations(per_image, 2):
        common = per_image[first].keys() & per_image[second].keys()
        pairs.append((sum(per_image[first][c] for c in common), first, second))
    for shared, first, second in sorted(pairs, reverse=True)[: args.top]:
        print(f"  {first} & {second}: {shared / 1e6:.1f} MB of identical files")
    return 0
