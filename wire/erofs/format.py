"""EROFS on-disk structures: the superblock, inodes and directory entries, and the errors of the reader.

All integers are little-endian. Layout (Linux fs/erofs/erofs_fs.h, the format's definition):

- the superblock: 128 bytes at byte 1024;
- inodes: at `meta_blkaddr * block_size + nid * 32`, 32 bytes (compact) or 64 (extended), followed
  by the inline xattrs (skipped here), then the layout's own data (inline tail, chunk or
  compression indexes);
- a directory's data: blocks that each start with 12-byte dirents; names follow the dirents, in
  the same order, unterminated except that the last one of a block may end with NULs.
"""

from __future__ import annotations

import stat
import struct
from dataclasses import dataclass

from wire.errors import WireError

SUPERBLOCK_OFFSET = 1024
MAGIC = 0xE0F5E1E2
NID_SHIFT = 5  # an inode number counts 32-byte slots of the metadata area

COMPAT_SB_CHKSUM = 0x1
INCOMPAT_ZERO_PADDING = 0x1
INCOMPAT_BIG_PCLUSTER = 0x2  # also "compression configs follow the superblock"
INCOMPAT_CHUNKED_FILE = 0x4
INCOMPAT_DEVICE_TABLE = 0x8
INCOMPAT_ZTAILPACKING = 0x10
INCOMPAT_FRAGMENTS = 0x20  # also dedupe: needs the packed inode, which this reader does not read
INCOMPAT_XATTR_PREFIXES = 0x40  # only changes xattrs, which this reader skips
SUPPORTED_INCOMPAT = (
    INCOMPAT_ZERO_PADDING
    | INCOMPAT_BIG_PCLUSTER
    | INCOMPAT_CHUNKED_FILE
    | INCOMPAT_DEVICE_TABLE
    | INCOMPAT_ZTAILPACKING
    | INCOMPAT_XATTR_PREFIXES
)
FEATURE_NAMES = {
    ("compat", 0x1): "sb_csum",
    ("compat", 0x2): "mtime",
    ("compat", 0x4): "xattr_filter",
    ("incompat", 0x1): "0padding",
    ("incompat", 0x2): "big_pcluster",
    ("incompat", 0x4): "chunked_file",
    ("incompat", 0x8): "device_table",
    ("incompat", 0x10): "ztailpacking",
    ("incompat", 0x20): "fragments",
    ("incompat", 0x40): "xattr_prefixes",
}

# Inode data layouts (bits 1-3 of i_format).
FLAT_PLAIN = 0
COMPRESSED_FULL = 1
FLAT_INLINE = 2
COMPRESSED_COMPACT = 3
CHUNK_BASED = 4
LAYOUT_NAMES = {
    0: "flat_plain",
    1: "compressed_full",
    2: "flat_inline",
    3: "compressed_compact",
    4: "chunk_based",
}

# Directory entry file types (the generic FT_* numbers).
FT_UNKNOWN, FT_REG, FT_DIR, FT_CHR, FT_BLK, FT_FIFO, FT_SOCK, FT_SYMLINK = range(8)

NULL_ADDR = 0xFFFFFFFF  # a hole in a chunk-based file
DIRENT_SIZE = 12
MAX_NAME = 255

_SUPERBLOCK = struct.Struct("<IIIBBHQQIIII16s16sIHHHB")
_COMPACT = struct.Struct("<HHHHIIIIHHI")
_EXTENDED = struct.Struct("<HHHHQIIIIQII16x")
_DIRENT = struct.Struct("<QHBx")
_DEVICE_SLOT = struct.Struct("<64sII56x")
DEVICE_SLOT_SIZE = _DEVICE_SLOT.size


class ErofsError(WireError):
    """A corrupt or truncated image, or a read it cannot satisfy (HTTP 400, code "bad_erofs")."""

    def __init__(self, message: str, *, status: int = 400, code: str = "bad_erofs") -> None:
        super().__init__(status, code, message)


class ErofsUnsupported(ErofsError):
    """A valid image using a feature this reader does not implement (HTTP 422)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=422, code="unsupported_erofs")


class ErofsPathError(ErofsError):
    """A path that does not name what the call needs: `code` is "not_found" (404), "not_a_directory",
    "is_a_directory", "not_a_file", "not_a_symlink" or "symlink_loop" (400)."""

    def __init__(self, code: str, path: str) -> None:
        super().__init__(
            f"{path}: {code.replace('_', ' ')}", status=404 if code == "not_found" else 400, code=code
        )
        self.path = path


@dataclass(frozen=True)
class Superblock:
    block_bits: int
    root_nid: int
    inodes: int
    build_time: int
    build_time_nsec: int
    blocks: int
    meta_blkaddr: int
    xattr_blkaddr: int
    uuid: bytes
    volume_name: bytes
    feature_compat: int
    feature_incompat: int
    extra_devices: int
    devt_slotoff: int

    @property
    def block_size(self) -> int:
        return 1 << self.block_bits

    @property
    def features(self) -> list[str]:
        """Names of the feature bits set, as dump.erofs prints them."""
        return [
            FEATURE_NAMES.get((kind, bit), f"{kind}:{bit:#x}")
            for kind, bits in (("compat", self.feature_compat), ("incompat", self.feature_incompat))
            for bit in (1 << n for n in range(32))
            if bits & bit
        ]

    def has(self, incompat: int) -> bool:
        return bool(self.feature_incompat & incompat)


def parse_superblock(block: bytes) -> Superblock:
    """The superblock from the image's first bytes (at least up to the end of its block)."""
    if len(block) < SUPERBLOCK_OFFSET + 128:
        raise ErofsError("image too short for a superblock")
    fields = _SUPERBLOCK.unpack_from(block, SUPERBLOCK_OFFSET)
    magic, checksum, compat, block_bits, _extslots, root_nid, inodes, build_time, build_time_nsec = fields[:9]
    blocks, meta_blkaddr, xattr_blkaddr, uuid, volume_name, incompat, _u1, extra, slotoff, dirblkbits = (
        fields[9:]
    )
    if magic != MAGIC:
        raise ErofsError(f"not an erofs image (magic {magic:#010x} at byte {SUPERBLOCK_OFFSET})")
    if not 9 <= block_bits <= 16:
        raise ErofsUnsupported(f"block size 2^{block_bits} (this reader handles 512 B to 64 KiB)")
    if compat & COMPAT_SB_CHKSUM:
        _check_superblock_crc(block, 1 << block_bits, checksum)
    unknown = incompat & ~SUPPORTED_INCOMPAT
    if unknown:
        names = [
            FEATURE_NAMES.get(("incompat", 1 << n), f"{1 << n:#x}") for n in range(32) if unknown >> n & 1
        ]
        raise ErofsUnsupported(f"image needs incompatible features this reader lacks: {', '.join(names)}")
    if dirblkbits:
        raise ErofsUnsupported(f"directory blocks of 2^{dirblkbits} fs blocks")
    return Superblock(
        block_bits=block_bits,
        root_nid=root_nid,
        inodes=inodes,
        build_time=build_time,
        build_time_nsec=build_time_nsec,
        blocks=blocks,
        meta_blkaddr=meta_blkaddr,
        xattr_blkaddr=xattr_blkaddr,
        uuid=uuid,
        volume_name=volume_name.rstrip(b"\0"),
        feature_compat=compat,
        feature_incompat=incompat,
        extra_devices=extra if incompat & INCOMPAT_DEVICE_TABLE else 0,
        devt_slotoff=slotoff,
    )


def _check_superblock_crc(block: bytes, block_size: int, expected: int) -> None:
    """sb_csum: crc32c (seed ~0, no final inversion) of the superblock's block from byte 1024 on,
    with the checksum field zeroed."""
    length = block_size - SUPERBLOCK_OFFSET if block_size > SUPERBLOCK_OFFSET else block_size
    data = bytearray(block[SUPERBLOCK_OFFSET : SUPERBLOCK_OFFSET + length])
    if len(data) < length:
        raise ErofsError("image too short for its superblock block")
    data[4:8] = bytes(4)
    if crc32c_raw(0xFFFFFFFF, data) != expected:
        raise ErofsError("superblock checksum mismatch")


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def crc32c_raw(crc: int, data: bytes | bytearray) -> int:
    """CRC-32C (Castagnoli) register update without the customary pre/post inversion."""
    table = _CRC32C
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


@dataclass(frozen=True)
class DeviceSlot:
    """An extra device (blob) of a multi-device image: its tag (mkfs writes the blob's path or
    digest), size in blocks, and where it sits in the primary's block address space (0: nowhere)."""

    tag: bytes
    blocks: int
    mapped_blkaddr: int


def parse_device_slot(data: bytes) -> DeviceSlot:
    tag, blocks, mapped = _DEVICE_SLOT.unpack(data)
    return DeviceSlot(tag.rstrip(b"\0"), blocks, mapped)


@dataclass(frozen=True)
class Inode:
    """One inode: what stat() shows, and where its data lives. `nid` doubles as the inode number."""

    nid: int
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    mtime: int
    mtime_nsec: int
    layout: int  # FLAT_PLAIN … CHUNK_BASED
    raw: int  # i_u: block address, chunk format, compressed block count or device number
    offset: int  # byte offset of the inode in the image
    header_size: int  # inode (32 or 64) + inline xattrs: the layout's data starts at offset + header_size

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def rdev(self) -> int:
        """The device number of a character or block device (0 otherwise)."""
        return self.raw if stat.S_ISCHR(self.mode) or stat.S_ISBLK(self.mode) else 0

    @property
    def end(self) -> int:
        """Byte offset just past the inode and its inline xattrs."""
        return self.offset + self.header_size


def inode_size(i_format: int) -> int:
    return 64 if i_format & 1 else 32


def parse_inode(nid: int, offset: int, data: bytes, superblock: Superblock) -> Inode:
    """Decode the 32- or 64-byte inode `data` (as long as `inode_size` says) found at `offset`."""
    i_format = data[0] | data[1] << 8
    if i_format & ~0xF:
        raise ErofsUnsupported(f"inode {nid}: unknown format bits {i_format:#x}")
    layout = i_format >> 1 & 7
    if layout not in LAYOUT_NAMES:
        raise ErofsUnsupported(f"inode {nid}: unknown data layout {layout}")
    if i_format & 1:
        _, xattr_count, mode, _, size, raw, _, uid, gid, mtime, mtime_nsec, nlink = _EXTENDED.unpack(data)
        base = 64
    else:
        _, xattr_count, mode, nlink, size, _, raw, _, uid, gid, _ = _COMPACT.unpack(data)
        mtime, mtime_nsec = superblock.build_time, superblock.build_time_nsec
        base = 32
    xattr_size = 12 + 4 * (xattr_count - 1) if xattr_count else 0
    return Inode(nid, mode, nlink, uid, gid, size, mtime, mtime_nsec, layout, raw, offset, base + xattr_size)


@dataclass(frozen=True)
class DirEntry:
    """A directory entry. `name` is the on-disk name decoded as UTF-8 (undecodable bytes as
    surrogates, like `os.listdir`)."""

    name: str
    nid: int
    file_type: int

    @property
    def is_dir(self) -> bool:
        return self.file_type == FT_DIR

    @property
    def is_file(self) -> bool:
        return self.file_type == FT_REG

    @property
    def is_symlink(self) -> bool:
        return self.file_type == FT_SYMLINK


def decode_name(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def encode_name(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def parse_dir_block(block: bytes, nid: int) -> list[tuple[bytes, int, int]]:
    """The (name, nid, file type) entries of one directory block (`block` cut at the directory's end)."""
    if len(block) < DIRENT_SIZE:
        raise ErofsError(f"directory {nid}: block of {len(block)} bytes")
    first_name = block[8] | block[9] << 8
    count, rest = divmod(first_name, DIRENT_SIZE)
    if rest or not count or first_name >= len(block):
        raise ErofsError(f"directory {nid}: bad first name offset {first_name}")
    dirents = [_DIRENT.unpack_from(block, i * DIRENT_SIZE) for i in range(count)]
    entries = []
    for i, (child, start, file_type) in enumerate(dirents):
        if i + 1 < count:
            end = dirents[i + 1][1]
        else:
            nul = block.find(b"\0", start)
            end = len(block) if nul < 0 else nul
        if not first_name <= start < end <= len(block) or end - start > MAX_NAME:
            raise ErofsError(f"directory {nid}: bad name bounds {start}..{end}")
        entries.append((bytes(block[start:end]), child, file_type))
    return entries
