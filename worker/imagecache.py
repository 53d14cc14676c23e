"""The images a remote worker holds: an LRU cache bounded in bytes, filled from the edge by digest.

Layout: `<root>/<hex>.erofs`, one file per image, named by the sha256 of its bytes. A download goes to
`<root>/.part-<hex>-<random>` (same directory, so the rename is atomic), is hashed as it is written, and
is renamed to its final name only when the hash matches: a partial or corrupted download is never
used. It is deleted and fetched again, `MAX_ATTEMPTS` times at most; then the digest rests for
`FAILED_REST_S` before it is tried again. Leftover `.part-` files (a worker killed mid-download) are
deleted at start; the files with final names were verified before their rename and are trusted.

Least recently used images go first once the files exceed the capacity; the order survives restarts
as the files' mtimes (touched at each use). Images of the jobs this worker holds are pinned and never
evicted. An evicted image the sandbox runner has mounted stays mounted (its loop device keeps the
deleted file's blocks) until the runner closes, when the worker stops: the bound is on the files in
the cache, not on those blocks. Should the image come back, the runner mounts the new file the next
time it starts; until then it reuses the old mount, which has the same bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

from catalog.store import DIGEST_RE, ImageLocation

log = logging.getLogger("pe.worker.images")

PART_PREFIX = ".part-"
MAX_ATTEMPTS = 3  # downloads of one image before it rests
FAILED_REST_S = 30.0
RETRY_DELAY_S = 0.5  # before the second attempt; doubles for each next one
MAX_CONCURRENT = 2  # downloads at once

Download = Callable[[str], AsyncIterator[bytes]]  # the bytes of the image with this digest


class FetchError(Exception):
    """An image could not be fetched (the message says why)."""


class TooLarge(FetchError):
    """The image does not fit in the cache: downloading it again will not help."""


class ImageCache:
    """A worker.runner.ImageLocator over the cached files, which also fetches what it lacks."""

    def __init__(self, root: Path, capacity_bytes: int, download: Download) -> None:
        self.root = Path(root)
        self.capacity_bytes = capacity_bytes
        self.download = download
        self.root.mkdir(parents=True, exist_ok=True)
        for part in self.root.glob(PART_PREFIX + "*"):
            part.unlink(missing_ok=True)
        files = sorted(self.root.glob("*.erofs"), key=lambda path: path.stat().st_mtime)
        # digest → bytes, least recently used first
        self._sizes: OrderedDict[str, int] = OrderedDict(
            (f"sha256:{path.stem}", path.stat().st_size) for path in files if _is_hex(path.stem)
        )
        self._pins: Counter[str] = Counter()
        self._fetches: dict[str, asyncio.Task[None]] = {}
        self._resting: dict[str, float] = {}  # digest → when (monotonic) its downloads may be tried again
        self._downloads = asyncio.Semaphore(MAX_CONCURRENT)
        self._evict()

    def path(self, digest: str) -> Path:
        match = DIGEST_RE.fullmatch(digest)
        if match is None:
            raise ValueError(f"not an image digest: {digest!r}")
        return self.root / f"{match.group(1)}.erofs"

    @property
    def bytes(self) -> int:
        return sum(self._sizes.values())

    def locate(self, digest: str) -> ImageLocation:
        """The image's file, now the most recently used; LookupError when it is not here."""
        if digest not in self._sizes:
            raise LookupError(f"image {digest} is not in this worker's cache at {self.root}")
        self._sizes.move_to_end(digest)
        path = self.path(digest)
        with contextlib.suppress(FileNotFoundError):
            os.utime(path)
        return ImageLocation(path)

    def held(self) -> list[str]:
        """The digests ready to run, for the edge."""
        return list(self._sizes)

    def fetching(self) -> list[str]:
        """Digests being downloaded, or resting after failed downloads: the edge should not ask for them."""
        now = time.monotonic()
        self._resting = {digest: until for digest, until in self._resting.items() if until > now}
        return sorted({*self._fetches, *self._resting})

    def pin(self, digest: str) -> None:
        """Keep the image while a job that uses it is held (calls nest; `unpin` each)."""
        self._pins[digest] += 1

    def unpin(self, digest: str) -> None:
        self._pins[digest] -= 1
        if self._pins[digest] <= 0:
            del self._pins[digest]
        self._evict()

    def want(self, digests: Iterable[str]) -> None:
        """Fetch these images in the background (those not held, fetching or resting)."""
        skip = {*self._sizes, *self.fetching()}
        for digest in digests:
            if digest not in skip and DIGEST_RE.fullmatch(digest):
                self._start(digest).add_done_callback(_quiet)

    async def fetch(self, digest: str) -> None:
        """Make sure the image is here: download it if not (joining a download in progress).
        FetchError when it cannot be had."""
        if digest in self._sizes:
            return
        await asyncio.shield(self._start(digest))

    def _start(self, digest: str) -> asyncio.Task[None]:
        task = self._fetches.get(digest)
        if task is None:
            task = asyncio.create_task(self._fetch(digest), name=f"fetch-{digest[7:19]}")
            self._fetches[digest] = task
            task.add_done_callback(lambda _: self._fetches.pop(digest, None))
        return task

    async def _fetch(self, digest: str) -> None:
        async with self._downloads:
            started = time.monotonic()
            for attempt in range(1, MAX_ATTEMPTS + 1):
                if attempt > 1:
                    await asyncio.sleep(RETRY_DELAY_S * 2 ** (attempt - 2))
                try:
                    size = await self._download_once(digest)
                    break
                except Exception as error:  # a corrupted download, the edge gone mid-download, …
                    why = str(error) if isinstance(error, FetchError) else f"{type(error).__name__}: {error}"
                    extra = {"digest": digest, "attempt": attempt}
                    log.warning("image download failed: %s", why, extra=extra)
                    if isinstance(error, TooLarge) or attempt == MAX_ATTEMPTS:
                        self._resting[digest] = time.monotonic() + FAILED_REST_S
                        raise FetchError(f"image {digest}: download failed ({why})") from None
        self._sizes[digest] = size
        self._resting.pop(digest, None)
        seconds = round(time.monotonic() - started, 3)
        log.info("image fetched", extra={"digest": digest, "bytes": size, "seconds": seconds})
        self._evict(keep=digest)

    async def _download_once(self, digest: str) -> int:
        """Download to a part file, check the hash, rename; the size. FetchError on a mismatch."""
        expected = digest.removeprefix("sha256:")
        part = self.root / f"{PART_PREFIX}{expected}-{secrets.token_hex(4)}"
        hasher = hashlib.sha256()
        size = 0
        try:
            with part.open("wb") as out:
                async for chunk in self.download(digest):
                    size += len(chunk)
                    if size > self.capacity_bytes:
                        raise TooLarge(f"larger than this worker's image cache ({self.capacity_bytes} bytes)")
                    hasher.update(chunk)
                    out.write(chunk)
                out.flush()
                await asyncio.to_thread(os.fsync, out.fileno())
            if hasher.hexdigest() != expected:
                raise FetchError(f"corrupted download: {size} bytes hash to sha256:{hasher.hexdigest()}")
            part.rename(self.path(digest))
        finally:
            part.unlink(missing_ok=True)
        return size

    def _evict(self, keep: str = "") -> None:
        """Delete least recently used images, never pinned ones (nor `keep`), until the files fit the
        capacity."""
        total = self.bytes
        for digest in list(self._sizes):
            if total <= self.capacity_bytes:
                return
            if self._pins[digest] > 0 or digest == keep:
                continue
            size = self._sizes.pop(digest)
            self.path(digest).unlink(missing_ok=True)
            total -= size
            log.info("image evicted", extra={"digest": digest, "bytes": size, "cache_bytes": total})
        if total > self.capacity_bytes:
            log.warning("image cache over capacity: the rest is in use", extra={"cache_bytes": total})

    async def close(self) -> None:
        """Stop the downloads in progress (their part files are deleted)."""
        tasks = list(self._fetches.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _is_hex(name: str) -> bool:
    return DIGEST_RE.fullmatch("sha256:" + name) is not None


def _quiet(task: asyncio.Task[None]) -> None:
    """A background fetch's failure is logged already."""
    if not task.cancelled():
        task.exception()
