"""wire.erofs against real images: trees generated here and packed by mkfs.erofs in every layout it
can write, and the catalogue's store images compared with the kernel's loop mount of them."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from catalog.entry import load_catalog
from catalog.pack import regenerate
from catalog.store import ImageStore
from pe.settings import load_settings
from wire.erofs import ErofsError, ErofsImage, ErofsPathError, ErofsUnsupported
from wire.erofs.format import SUPERBLOCK_OFFSET, crc32c_raw
from wire.errors import WireError

MKFS = shutil.which("mkfs.erofs")
needs_mkfs = pytest.mark.skipif(MKFS is None, reason="mkfs.erofs is not installed")
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0  # Pyodide has no geteuid
EPOCH = 1686355200
TEXT = b"".join(b"line %d of a text that compresses well\n" % i for i in range(60_000))

# mkfs.erofs 1.5 variants: every data layout, index format and feature it can write.
VARIANTS = {
    "plain": [],
    "lz4": ["-zlz4"],
    "lz4hc-fixed-time": ["-zlz4hc", f"-T{EPOCH}"],  # the store's kind: compact inodes, compact indexes
    "ztailpacking": ["-zlz4hc", "-Eztailpacking"],
    "big-pcluster": ["-zlz4hc", "-C65536"],
    "big-pcluster-tail": ["-zlz4", "-C16384", "-Eztailpacking"],
    "full-indexes": ["-zlz4", "-Elegacy-compress"],  # layout 1, and no 0padding
    "full-indexes-big": ["-zlz4hc", "-Elegacy-compress", "-C32768"],
    "chunk-map": ["--chunksize=8192"],
    "compact-no-xattrs": ["-Eforce-inode-compact", "-x-1"],
    "no-inline": ["-Enoinline_data"],
}


def make_tree(root: Path) -> None:
    """Files that exercise every corner of the layouts: empty, tiny, one block, crossing a block,
    large and compressible, incompressible, long zero runs, mixed; deep, wide and unicode names;
    symlinks, a hard link, a FIFO, modes, owners, times and xattrs."""
    rng = random.Random(7)
    (root / "a/b/c/d").mkdir(parents=True)
    (root / "empty").write_bytes(b"")
    (root / "small.txt").write_text("hello\n")
    (root / "a/block").write_bytes(rng.randbytes(4096))
    (root / "a/cross").write_bytes(b"x" * 4095 + rng.randbytes(3))
    (root / "a/b/text").write_bytes(TEXT)
    (root / "a/b/random.bin").write_bytes(rng.randbytes(100_000))
    (root / "zeros").write_bytes(bytes(16 << 20))
    (root / "mixed").write_bytes(
        b"".join(rng.randbytes(5000) if i % 2 else TEXT[i : i + 7000] for i in range(50))
    )
    (root / "many").mkdir()
    for i in range(1500):
        (root / "many" / (f"file-{i:05d}-" + "n" * rng.randrange(60))).write_text(str(i) * rng.randrange(300))
    (root / ("l" * 254)).write_text("the longest name mkfs.erofs 1.5 accepts (255 fails)")
    (root / "ünïcödé ☃.txt").write_text("snow")
    (root / "link-rel").symlink_to("small.txt")
    (root / "link-abs").symlink_to("/a/b/text")
    (root / "link-dir").symlink_to("a/b")
    (root / "link-long").symlink_to("x" * 1000)
    (root / "loop1").symlink_to("loop2")
    (root / "loop2").symlink_to("loop1")
    os.link(root / "small.txt", root / "hard")
    os.mkfifo(root / "fifo")
    (root / "a/block").chmod(0o4755)
    (root / "a/cross").chmod(0o600)
    os.utime(root / "a/cross", (1_000_000_000, 1_000_000_000))
    os.setxattr(root / "a/b/random.bin", "user.note", b"v" * 50)
    os.setxattr(root / "a", "user.dir", b"on a directory")
    if IS_ROOT:
        os.chown(root / "small.txt", 1234, 5678)
        os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))


def mkfs(image: Path, tree: Path, *options: str) -> Path:
    subprocess.run([MKFS, "--quiet", *options, str(image), str(tree)], check=True, capture_output=True)
    return image


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree") / "root"
    root.mkdir()
    make_tree(root)
    return root


@pytest.fixture(scope="module")
def images(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("images")
    return {name: mkfs(folder / f"{name}.img", tree, *options) for name, options in VARIANTS.items()}


def lstat_tree(root: Path) -> dict[str, os.stat_result]:
    found = {"/": os.lstat(root)}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            found["/" + os.path.relpath(path, root)] = os.lstat(path)
    return found


def compare(image: ErofsImage, root: Path, *, read_bytes: int | None = None) -> int:
    """Assert that `image` holds exactly the tree at `root`: names, types, modes, owners, sizes, link
    counts, device numbers, times (or the build time, for compact inodes), symlink targets and file
    bytes: all of them, or (with `read_bytes`) files up to 8 KiB whole, larger ones whole in
    path-hash order until `read_bytes` are compared and then their first and last 4 KiB. Returns
    the bytes compared."""
    ours = dict(image.walk())
    theirs = lstat_tree(root)
    assert sorted(ours) == sorted(theirs)
    budget = read_bytes
    compared = 0
    inodes_of: dict[int, set[int]] = {}
    order = sorted(theirs, key=lambda path: hashlib.sha256(path.encode("utf-8", "surrogateescape")).digest())
    for path in order:
        want, got = theirs[path], ours[path]
        assert (got.mode, got.uid, got.gid) == (want.st_mode, want.st_uid, want.st_gid), path
        assert got.mtime in (want.st_mtime_ns // 1_000_000_000, image.superblock.build_time), path
        assert got.nlink == want.st_nlink, path
        assert got.rdev == want.st_rdev, path
        if not stat.S_ISDIR(want.st_mode):
            assert got.size == want.st_size, path
            inodes_of.setdefault(want.st_ino, set()).add(got.nid)
        if stat.S_ISLNK(want.st_mode):
            assert image.readlink(path) == os.readlink(root / path.lstrip("/")), path
        elif stat.S_ISREG(want.st_mode):
            whole = budget is None or want.st_size <= max(budget, 1 << 13)
            ends = [(0, 1 << 12), (want.st_size - (1 << 12), 1 << 12)]
            windows = [(0, want.st_size)] if whole else ends
            with (root / path.lstrip("/")).open("rb") as file:
                for offset, length in windows:
                    file.seek(offset)
                    data = image.read_data(got, offset, length)
                    assert data == file.read(length), (path, offset)
                    compared += len(data)
            if budget is not None and whole:
                budget = max(0, budget - want.st_size)
    assert all(len(nids) == 1 for nids in inodes_of.values())  # hard links share one inode
    return compared


@needs_mkfs
@pytest.mark.parametrize("variant", VARIANTS)
def test_image_holds_the_tree(variant: str, images: dict[str, Path], tree: Path) -> None:
    with images[variant].open("rb") as file:
        image = ErofsImage.from_file(file)
        assert compare(image, tree) > 16 << 20


@needs_mkfs
def test_reads_at_any_offset_match_the_file(images: dict[str, Path], tree: Path) -> None:
    """Piecewise reads across extent, block and chunk boundaries (what a viewer asks for)."""
    rng = random.Random(1)
    want = {name: (tree / name).read_bytes() for name in ("a/b/text", "mixed", "a/cross", "zeros")}
    for variant in ("lz4", "ztailpacking", "big-pcluster-tail", "full-indexes", "chunk-map", "plain"):
        image = ErofsImage.from_bytes(images[variant].read_bytes())
        for name, data in want.items():
            for _ in range(40):
                offset = rng.randrange(len(data) + 10)
                length = rng.choice([1, 7, 4096, 5000, 70_000, 1 << 20])
                assert image.read_file(name, offset, length) == data[offset : offset + length], (
                    variant,
                    name,
                )


@needs_mkfs
def test_multi_device_image_reads_chunks_from_its_blob(tree: Path, tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    path = mkfs(tmp_path / "blob.img", tree, "--chunksize=4096", f"--blobdev={blob}")
    data = path.read_bytes()
    without = ErofsImage.from_bytes(data)
    assert without.superblock.extra_devices == 1
    assert "text" in without.listdir("a/b")  # metadata is all on the primary device
    with pytest.raises(ErofsError) as missing:
        without.read_file("a/b/text")
    assert missing.value.code == "missing_device"
    blob_data = blob.read_bytes()
    image = ErofsImage.from_bytes(data, devices=[lambda offset, length: blob_data[offset : offset + length]])
    assert compare(image, tree) > 16 << 20


@needs_mkfs
def test_paths_resolve_like_a_filesystem(images: dict[str, Path]) -> None:
    image = ErofsImage.from_bytes(images["lz4"].read_bytes())
    assert image.read_file("/link-abs") == TEXT
    assert image.read_file("link-dir/../b/./text", 0, 4) == b"line"
    assert image.read_file("/../../small.txt") == b"hello\n"
    assert image.listdir("link-dir") == ["c", "random.bin", "text"]
    assert image.stat("link-rel").is_file and image.lstat("link-rel").is_symlink
    assert image.readlink("link-long") == "x" * 1000
    assert image.stat("/").nid == image.superblock.root_nid
    assert [path for path, _ in image.walk("a/b/c")] == ["/a/b/c", "/a/b/c/d"]
    cases = [
        ("missing", "not_found", 404),
        ("small.txt/x", "not_a_directory", 400),
        ("loop1", "symlink_loop", 400),
        ("link-long", "not_found", 404),
        ("a\udcff", "not_found", 404),
        ("\ud800", "not_found", 404),
    ]
    for path, code, status in cases:
        with pytest.raises(ErofsPathError) as error:
            image.read_file(path)
        assert (error.value.code, error.value.status) == (code, status)
    for call, code in [
        (lambda: image.read_file("a"), "is_a_directory"),
        (lambda: image.read_file("fifo"), "not_a_file"),
        (lambda: image.readlink("small.txt"), "not_a_symlink"),
        (lambda: image.listdir("small.txt"), "not_a_directory"),
    ]:
        with pytest.raises(ErofsPathError) as error:
            call()
        assert error.value.code == code


@needs_mkfs
def test_reads_are_bounded(images: dict[str, Path]) -> None:
    image = ErofsImage.from_bytes(images["lz4"].read_bytes(), max_read=1 << 20)
    with pytest.raises(ErofsError) as error:
        image.read_file("zeros")
    assert (error.value.status, error.value.code) == (413, "too_large")
    assert image.read_file("zeros", 5 << 20, 1 << 20) == bytes(1 << 20)


def with_superblock(data: bytes, fields: dict[int, int] | None = None) -> bytes:
    """`data` with 32-bit superblock fields (by offset in the superblock) changed, checksum redone."""
    image = bytearray(data)
    for offset, value in (fields or {}).items():
        image[SUPERBLOCK_OFFSET + offset : SUPERBLOCK_OFFSET + offset + 4] = value.to_bytes(4, "little")
    block = bytearray(image[SUPERBLOCK_OFFSET:4096])
    block[4:8] = bytes(4)
    image[SUPERBLOCK_OFFSET + 4 : SUPERBLOCK_OFFSET + 8] = crc32c_raw(0xFFFFFFFF, block).to_bytes(4, "little")
    return bytes(image)


@needs_mkfs
def test_superblock_checks(images: dict[str, Path]) -> None:
    data = images["lz4"].read_bytes()
    image = ErofsImage.from_bytes(with_superblock(data))  # redoing the checksum changes nothing
    assert image.superblock.features == ["sb_csum", "mtime", "0padding"]
    assert image.block_size == 4096
    flipped = bytearray(data)
    flipped[SUPERBLOCK_OFFSET + 40] ^= 1
    with pytest.raises(ErofsError, match="checksum"):
        ErofsImage.from_bytes(bytes(flipped))
    with pytest.raises(ErofsError, match="not an erofs image"):
        ErofsImage.from_bytes(bytes(8192))
    with pytest.raises(ErofsUnsupported, match="fragments, 0x80"):
        ErofsImage.from_bytes(with_superblock(data, {80: 0x1 | 0x20 | 0x80}))
    with pytest.raises(ErofsError, match="too short"):
        ErofsImage.from_bytes(data[:1100])


def store_images() -> Iterator[tuple[str, str]]:
    """(id, digest) of the current image of each catalogue entry in the local store (older builds of
    an id are left out: they are what `pe images gc` removes)."""
    store = ImageStore(load_settings().images_dir)
    for image_id in load_catalog():
        meta = store.current(image_id)
        if meta is not None:
            yield image_id, meta.digest


STORE = list(store_images())


def own_file(digest: str, scratch: Path) -> Path:
    """The image's own erofs file: loose in the store, or regenerated from its pack into `scratch`
    (not into the store, whose packed images then stay packed)."""
    store = ImageStore(load_settings().images_dir)
    location = store.locate(digest)
    if not location.root:
        return location.file
    regenerate(location.file, digest, store.packed()[digest].members[digest], scratch / "image.erofs")
    return scratch / "image.erofs"


@pytest.mark.skipif(not IS_ROOT, reason="loop mounts need root")
@pytest.mark.skipif(not STORE, reason="no catalogue image has been built")
@pytest.mark.parametrize(("image_id", "digest"), STORE, ids=[f"{i}-{d[7:15]}" for i, d in STORE])
def test_store_image_matches_its_kernel_mount(image_id: str, digest: str, tmp_path: Path) -> None:
    """Every entry, stat field and symlink, and the bytes of the files (whole files up to 8 MB per
    image, then the ends of each), equal what the kernel's erofs driver shows."""
    try:
        path = own_file(digest, tmp_path)
    except LookupError:
        pytest.skip(f"{digest} was removed from the store since collection")
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "erofs", "-o", "loop,ro", str(path), str(mountpoint)], check=True)
    try:
        with path.open("rb") as file:
            assert compare(ErofsImage.from_file(file), mountpoint, read_bytes=8 << 20) > 0
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def test_errors_are_wire_errors() -> None:
    assert issubclass(ErofsError, WireError)
    assert issubclass(ErofsUnsupported, ErofsError) and issubclass(ErofsPathError, ErofsError)
