"""The worker's image cache: downloads checked before use, partial and corrupted ones never used, LRU
bounded in bytes, images of held jobs kept. The edge is played by a function that yields the bytes (the
scenarios of tests/api/test_workers_e2e.py download from a real edge)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from worker import imagecache
from worker.imagecache import FetchError, ImageCache


def image(fill: int, size: int = 1000) -> tuple[str, bytes]:
    data = bytes([fill]) * size
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


class Edge:
    """Serves images by digest; `faults` are what the next downloads do instead of serving well:
    "corrupt" (one byte flipped), "cut" (the connection drops halfway)."""

    def __init__(self, *images: tuple[str, bytes]) -> None:
        self.images = dict(images)
        self.faults: list[str] = []
        self.downloads = 0

    async def download(self, digest: str) -> AsyncIterator[bytes]:
        self.downloads += 1
        data = self.images[digest]
        fault = self.faults.pop(0) if self.faults else ""
        if fault == "corrupt":
            data = data[:10] + bytes([data[10] ^ 1]) + data[11:]
        half = len(data) // 2
        yield data[:half]
        await asyncio.sleep(0)
        if fault == "cut":
            raise ConnectionResetError("the edge went away")
        yield data[half:]


@pytest.fixture(autouse=True)
def no_retry_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(imagecache, "RETRY_DELAY_S", 0.0)


def files(root: Path) -> list[str]:
    return sorted(path.name for path in root.iterdir())


def test_a_download_is_verified_and_then_located(tmp_path: Path) -> None:
    digest, data = image(1)
    edge = Edge((digest, data))

    async def main() -> None:
        cache = ImageCache(tmp_path, 10_000, edge.download)
        with pytest.raises(LookupError):
            cache.locate(digest)
        await cache.fetch(digest)
        location = cache.locate(digest)
        assert location.file.read_bytes() == data and location.root == ""
        assert cache.held() == [digest]
        await cache.fetch(digest)  # held: not downloaded again
        assert edge.downloads == 1

    asyncio.run(main())


@pytest.mark.parametrize("fault", ["corrupt", "cut"])
def test_a_corrupted_or_partial_download_is_never_used_and_fetched_again(tmp_path: Path, fault: str) -> None:
    digest, data = image(2)
    edge = Edge((digest, data))
    edge.faults = [fault]

    async def main() -> None:
        cache = ImageCache(tmp_path, 10_000, edge.download)
        await cache.fetch(digest)
        assert edge.downloads == 2
        assert cache.locate(digest).file.read_bytes() == data
        assert files(tmp_path) == [digest[7:] + ".erofs"]  # no part file left

    asyncio.run(main())


def test_a_download_that_keeps_failing_gives_up_and_rests(tmp_path: Path) -> None:
    digest, data = image(3)
    edge = Edge((digest, data))
    edge.faults = ["corrupt"] * imagecache.MAX_ATTEMPTS

    async def main() -> None:
        cache = ImageCache(tmp_path, 10_000, edge.download)
        with pytest.raises(FetchError, match="corrupted download"):
            await cache.fetch(digest)
        assert edge.downloads == imagecache.MAX_ATTEMPTS
        assert files(tmp_path) == []
        assert cache.held() == [] and cache.fetching() == [digest]  # the edge is told not to ask now
        cache.want([digest])  # resting: no download
        await asyncio.sleep(0)
        assert edge.downloads == imagecache.MAX_ATTEMPTS

    asyncio.run(main())


def test_an_image_larger_than_the_cache_is_refused_at_once(tmp_path: Path) -> None:
    digest, data = image(4, size=5000)
    edge = Edge((digest, data))

    async def main() -> None:
        cache = ImageCache(tmp_path, 4000, edge.download)
        with pytest.raises(FetchError, match="larger than"):
            await cache.fetch(digest)
        assert edge.downloads == 1 and files(tmp_path) == []

    asyncio.run(main())


def test_wanted_images_download_in_the_background_and_are_reported_meanwhile(tmp_path: Path) -> None:
    a, b = image(5), image(6)
    edge = Edge(a, b)

    async def main() -> None:
        cache = ImageCache(tmp_path, 10_000, edge.download)
        cache.want([a[0], b[0], "sha256:not-a-digest"])
        assert cache.fetching() == sorted([a[0], b[0]])
        while cache.fetching():
            await asyncio.sleep(0.01)
        assert sorted(cache.held()) == sorted([a[0], b[0]])

    asyncio.run(main())


def test_least_recently_used_images_go_first_but_never_pinned_ones(tmp_path: Path) -> None:
    a, b, c, d = (image(fill) for fill in (7, 8, 9, 10))
    edge = Edge(a, b, c, d)

    async def main() -> None:
        cache = ImageCache(tmp_path, 2500, edge.download)  # room for two images of 1000 bytes
        await cache.fetch(a[0])
        await cache.fetch(b[0])
        cache.pin(a[0])  # a job holds it
        cache.locate(b[0])  # b used after a
        await cache.fetch(c[0])  # over: a is the oldest but pinned, so b goes
        assert sorted(cache.held()) == sorted([a[0], c[0]])
        cache.unpin(a[0])  # the job is done; still within capacity
        assert sorted(cache.held()) == sorted([a[0], c[0]])
        await cache.fetch(d[0])  # over: now a, the least recently used, goes
        assert sorted(cache.held()) == sorted([c[0], d[0]])
        assert sorted(files(tmp_path)) == sorted(f"{x[0][7:]}.erofs" for x in (c, d))

    asyncio.run(main())


def test_a_restarted_worker_keeps_its_images_and_their_order(tmp_path: Path) -> None:
    a, b = image(11), image(12)
    edge = Edge(a, b)

    async def main() -> None:
        cache = ImageCache(tmp_path, 10_000, edge.download)
        await cache.fetch(a[0])
        await cache.fetch(b[0])
        os.utime(cache.path(b[0]), (1, 1))  # b last used long ago
        (tmp_path / f"{imagecache.PART_PREFIX}{a[0][7:]}-dead").write_bytes(b"half")  # killed mid-download
        again = ImageCache(tmp_path, 10_000, edge.download)
        assert again.held() == [b[0], a[0]]  # least recently used first
        assert not any(name.startswith(imagecache.PART_PREFIX) for name in files(tmp_path))

    asyncio.run(main())
