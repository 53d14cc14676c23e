"""A warm pool of pre-booted microVM guests: one guest per run, never reused, refilled in the background.

A guest is booted with its image device attached, so the pool boots for one image file at a time:
the one most recently asked for. With packs (catalog/pack.py) one file holds every catalogue image,
so in service the pool rarely changes file; when it does, the waiting guests are discarded.
The pool's size is the runner's business (it bounds guests by memory); a guest that died while
waiting is discarded when it is reached.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Generic, Protocol, TypeVar

log = logging.getLogger("pe.worker.vmpool")


class Pooled(Protocol):
    @property
    def alive(self) -> bool: ...

    async def discard(self) -> None: ...


G = TypeVar("G", bound=Pooled)


class VmPool(Generic[G]):
    def __init__(self, boot: Callable[[Path], Awaitable[G]], size: int) -> None:
        """`boot(image)` starts a guest with `image` attached that waits for its job."""
        self.boot = boot
        self.size = size
        self.image: Path | None = None
        self._idle: deque[G] = deque()
        self._filling: asyncio.Task[None] | None = None
        self._discards: set[asyncio.Task[None]] = set()
        self.hits = self.misses = 0  # takes that found a guest, and that did not

    def take(self, image: Path) -> G | None:
        """A waiting guest with `image` attached (taken out of the pool for good), or None when
        there is none yet; either way the pool is refilled for `image` in the background."""
        self._switch(image)
        taken = None
        while self._idle and taken is None:
            guest = self._idle.popleft()
            if guest.alive:
                taken = guest
            else:
                self._discard(guest)
        self._refill(image)
        if taken is None:
            self.misses += 1
        else:
            self.hits += 1
        return taken

    async def fill(self, image: Path) -> None:
        """Fill the pool for `image` now (warm-up, benchmarks)."""
        self._switch(image)
        await self._refill(image)

    def _switch(self, image: Path) -> None:
        if image != self.image:
            self.image = image
            while self._idle:
                self._discard(self._idle.popleft())

    def _refill(self, image: Path) -> asyncio.Task[None]:
        if self._filling is None or self._filling.done():
            self._filling = asyncio.ensure_future(self._fill(image))
        return self._filling

    async def _fill(self, image: Path) -> None:
        while self.image == image and len(self._idle) < self.size:
            try:
                guest = await self.boot(image)
            except Exception:
                log.exception("the warm pool could not boot a guest")
                return
            if self.image != image:
                await guest.discard()
                return
            self._idle.append(guest)

    def _discard(self, guest: G) -> None:
        task = asyncio.ensure_future(guest.discard())
        self._discards.add(task)
        task.add_done_callback(self._discards.discard)

    async def close(self) -> None:
        """Stop refilling and discard every waiting guest."""
        self.image = None
        if self._filling is not None:
            # Not cancelled: a boot cut off inside process creation would orphan its QEMU. Booting
            # only spawns the process; the fill then sees the image changed and discards the guest.
            await self._filling
        while self._idle:
            self._discard(self._idle.popleft())
        await asyncio.gather(*self._discards)
