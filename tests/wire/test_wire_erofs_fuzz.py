"""wire.erofs on hostile input: corrupted, truncated and random images end in a WireError, never in
another exception, a hang or an unbounded allocation."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wire.erofs import ErofsImage
from wire.erofs.format import SUPERBLOCK_OFFSET, crc32c_raw
from wire.errors import WireError

MKFS = shutil.which("mkfs.erofs")
pytestmark = pytest.mark.skipif(MKFS is None, reason="mkfs.erofs is not installed")
VARIANTS = {
    "compact-tail": ["-zlz4hc", "-Eztailpacking", "-T0"],
    "full-big": ["-zlz4", "-Elegacy-compress", "-C16384"],
    "plain": [],
    "chunks": ["--chunksize=4096"],
}
MAX_SECONDS = 10  # per example: far beyond what a small image needs
MAX_PEAK = 64 << 20  # max_read (1 MiB) + one decoded extent (at most 12 MiB) and copies of them


def small_tree(root: Path) -> None:
    """Every structure the reader parses, in an image of a few blocks."""
    rng = random.Random(5)
    (root / "d/e").mkdir(parents=True)
    (root / "d/e/deep").write_text("deep\n")
    (root / "text").write_bytes(b"".join(b"%d compressible\n" % i for i in range(3000)))
    (root / "noise").write_bytes(rng.randbytes(9000))
    (root / "inline").write_bytes(b"tail" * 300)
    (root / "empty").write_bytes(b"")
    (root / "wide").mkdir()
    for i in range(150):
        (root / "wide" / f"entry-{i:03d}").write_text(str(i))
    (root / "link").symlink_to("d/e/deep")
    (root / "dirlink").symlink_to("/d")
    os.setxattr(root / "noise", "user.x", b"y" * 20)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("fuzz")
    tree = folder / "tree"
    tree.mkdir()
    small_tree(tree)
    built = {}
    for name, options in VARIANTS.items():
        image = folder / f"{name}.img"
        subprocess.run([MKFS, "--quiet", *options, str(image), str(tree)], check=True, capture_output=True)
        built[name] = image.read_bytes()
    return built


class Hang(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise Hang(f"no answer within {MAX_SECONDS} s")


def exercise(data: bytes) -> None:
    """Everything a client does with an image: open, walk, stat, read every file and link."""
    image = ErofsImage.from_bytes(data, max_read=1 << 20, cache_blocks=16)
    for path, inode in image.walk():
        if inode.is_file:
            image.read_data(inode)
            image.read_data(inode, inode.size // 2, 100)
        elif inode.is_symlink:
            image.readlink(path)
    for path in ("link", "dirlink/e/deep", "text", "wide/entry-100"):
        image.read_file(path)


def survives(data: bytes) -> None:
    """`exercise(data)` ends in success or a WireError, in bounded time and memory."""
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, MAX_SECONDS)
    tracemalloc.start()
    try:
        exercise(data)
    except WireError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert peak < MAX_PEAK


def with_checksum(data: bytearray) -> bytes:
    """Redo the superblock checksum, so that corruption elsewhere gets past it."""
    block = bytearray(data[SUPERBLOCK_OFFSET:4096])
    if len(block) >= 8:
        block[4:8] = bytes(4)
        data[SUPERBLOCK_OFFSET + 4 : SUPERBLOCK_OFFSET + 8] = crc32c_raw(0xFFFFFFFF, block).to_bytes(
            4, "little"
        )
    return bytes(data)


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def test_the_small_images_read_cleanly(images: dict[str, bytes]) -> None:
    for data in images.values():
        exercise(data)  # no error at all: the fuzzing starts from valid images


@FUZZ
@given(
    variant=st.sampled_from(sorted(VARIANTS)),
    changes=st.lists(
        st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8
    ),
    fix_checksum=st.booleans(),
)
def test_corrupted_images(images: dict[str, bytes], variant: str, changes, fix_checksum: bool) -> None:
    data = bytearray(images[variant])
    for where, value in changes:
        data[int(where * len(data))] = value
    survives(with_checksum(data) if fix_checksum else bytes(data))


@FUZZ
@given(
    variant=st.sampled_from(sorted(VARIANTS)),
    where=st.integers(1024, 1 << 20),
    value=st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]),
    width=st.sampled_from([1, 2, 4]),
)
def test_metadata_fields_set_to_extremes(images: dict[str, bytes], variant: str, where, value, width) -> None:
    """Field-sized overwrites in the metadata blocks (superblock, inodes, indexes, dirents)."""
    data = bytearray(images[variant])
    metadata_end = min(len(data), 4 * 4096)
    start = where % (metadata_end - width)
    data[start : start + width] = bytes([value]) * width
    survives(with_checksum(data))


@FUZZ
@given(variant=st.sampled_from(sorted(VARIANTS)), length=st.integers(0, 1 << 20))
def test_truncated_images(images: dict[str, bytes], variant: str, length: int) -> None:
    data = images[variant]
    survives(data[: length % len(data)])


@FUZZ
@given(st.binary(max_size=20000))
def test_random_bytes(data: bytes) -> None:
    survives(data)


@FUZZ
@given(variant=st.sampled_from(sorted(VARIANTS)), rest=st.binary(min_size=1, max_size=40000))
def test_valid_superblock_then_random_bytes(images: dict[str, bytes], variant: str, rest: bytes) -> None:
    head = images[variant][: SUPERBLOCK_OFFSET + 128]
    survives(with_checksum(bytearray(head + rest)))
