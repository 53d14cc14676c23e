"""Host uid ranges claimed per runner, so that runners on one host never share a uid.

Slot *n* of a runner maps container root to host uid `base + n·65536`. Two runners with the same base
(a `pe serve` and a `pe worker` on one host, or two workers) would run two programs as the same host
uid at once, and per-uid kernel limits (inotify instances, user namespaces) would then be shared
between runs. So each runner claims a block of uids: block *k* starts at `FIRST_UID + k·BLOCK_UIDS`,
and it is held by an exclusive `flock` on `<lock_dir>/<k>.lock` for as long as the runner lives. The
kernel drops the lock when the process dies, so a crashed runner's block is free again at once.

The vm runner claims its QEMU processes' uids the same way, from a region of its own (`UidRegion`,
worker/vm.py `QEMU_UIDS`).
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass, replace
from pathlib import Path

from guest.oci import ID_COUNT
from worker.mounts import SetupError

FIRST_UID = 200_000
BLOCK_SLOTS = 256  # slots one block has room for
BLOCK_UIDS = BLOCK_SLOTS * ID_COUNT
BLOCKS = (2**31 - FIRST_UID) // BLOCK_UIDS  # below 2^31: some tools take uids for signed ints
LOCK_DIR = Path("/run/pe/uid-blocks")


@dataclass(frozen=True)
class UidRegion:
    """`blocks` blocks of `block_uids` host uids from `first`, each held through `<lock_dir>/<k>.lock`."""

    first: int
    block_uids: int
    blocks: int
    lock_dir: Path
    holders: str  # who holds the blocks, for the error when none is free


SANDBOX_UIDS = UidRegion(FIRST_UID, BLOCK_UIDS, BLOCKS, LOCK_DIR, "running sandbox runners")


@dataclass
class UidBlock:
    """A claimed block: `base` is slot 0's host uid. `release` (or the process's end) frees it."""

    base: int
    lock_fd: int

    def slot_uid(self, slot: int) -> int:
        return self.base + slot * ID_COUNT

    def release(self) -> None:
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1


def claim_uid_block(slots: int, lock_dir: Path = LOCK_DIR) -> UidBlock:
    """A sandbox runner's block (SetupError when `slots` do not fit in one, or every block is held)."""
    if slots > BLOCK_SLOTS:
        raise SetupError(f"a sandbox runner has at most {BLOCK_SLOTS} slots ({slots} asked)")
    return claim_block(replace(SANDBOX_UIDS, lock_dir=lock_dir))


def claim_block(region: UidRegion) -> UidBlock:
    """The first free block of `region` (SetupError when every block is held)."""
    region.lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for block in range(region.blocks):
        fd = os.open(region.lock_dir / f"{block}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return UidBlock(region.first + block * region.block_uids, fd)
    raise SetupError(f"all {region.blocks} uid blocks under {region.lock_dir} are held by {region.holders}")
