"""`ErofsImage`: a read-only view of an erofs image through a `read(offset, length)` callback.

The callback is the only I/O, so the same reader serves a local file, bytes in memory, or HTTP Range
requests from the browser. Metadata (superblock, inodes, directories, index entries) is read in
whole blocks through a bounded LRU cache; file data is read in one call per contiguous run and is
not cached, except the last few decompressed extents (a viewer reading a file piecewise decodes each
extent once).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO

from wire.erofs import format as fmt
from wire.erofs.format import ErofsError, ErofsPathError, ErofsUnsupported, Inode
from wire.erofs.zmap import ALGORITHMS, CompressedMap, Extent, header_offset, parse_map_header
from wire.lz4 import Lz4Error, decompress_block

Read = Callable[[int, int], bytes | bytearray | memoryview]

MAX_SYMLINK = 4096
MAX_SYMLINK_HOPS = 40
MAX_READ = 1 << 30


class _Device:
    def __init__(self, read: Read, size: int | None, name: str) -> None:
        self.read = read
        self.size = size
        self.name = name

    def pread(self, offset: int, length: int) -> bytes:
        """Exactly `length` bytes at `offset`, or ErofsError."""
        if offset < 0 or (self.size is not None and offset + length > self.size):
            raise ErofsError(
                f"{self.name}: read of {length} bytes at {offset} is outside its {self.size} bytes"
            )
        data = self.read(offset, length)
        if len(data) != length:
            raise ErofsError(f"{self.name}: truncated ({len(data)} of {length} bytes at {offset})")
        return bytes(data)


class _Lru(OrderedDict):
    """A dict that forgets its least recently used keys beyond `limit` entries."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def get_recent(self, key):
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def put(self, key, value) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


class ErofsImage:
    """An erofs image. Paths are "/"-separated and relative to the image's root whether or not they
    start with "/"; symlinks are followed inside the image (an absolute target starts at its root).

    - `read(offset, length)` returns the image's bytes (fewer only past its end); `size` (optional)
      lets reads past the end fail before the callback is called.
    - `devices`: read callbacks of the extra devices (blobs) of a multi-device image, in device-table
      order. Without them everything but the data of chunks stored there is readable; reading such
      data raises ErofsError naming the missing device.
    - `max_read`: the most bytes one `read_file`/`read_data` call may return (bounds memory on
      corrupt sizes; ErofsError "too_large" beyond it).

    Every failure caused by the image's bytes is an ErofsError (a WireError); errors of the callback
    itself (OSError, …) pass through.
    """

    def __init__(
        self,
        read: Read,
        size: int | None = None,
        *,
        devices: Sequence[Read] = (),
        cache_blocks: int = 256,
        max_read: int = MAX_READ,
    ) -> None:
        self._primary = _Device(read, size, "image")
        self._blocks = _Lru(max(cache_blocks, 4))
        self._inodes = _Lru(4096)
        self._dirs = _Lru(256)
        self._maps = _Lru(64)
        self._extents = _Lru(8)
        self.max_read = max_read
        self.superblock = sb = fmt.parse_superblock(self._superblock_bytes())
        self.block_size = sb.block_size
        self._bits = sb.block_bits
        self._meta_base = sb.meta_blkaddr << sb.block_bits
        self._slots = [self._device_slot(n) for n in range(sb.extra_devices)]
        self._devices = [_Device(dev, None, f"device {n + 1}") for n, dev in enumerate(devices)]
        self._device_mask = (1 << sb.extra_devices.bit_length()) - 1
        if not self.root.is_dir:
            raise ErofsError(f"root inode {sb.root_nid} is not a directory")

    def _superblock_bytes(self) -> bytes:
        """The image's start, up to the end of what the superblock checksum covers."""
        head = bytes(self._primary.read(0, fmt.SUPERBLOCK_OFFSET + 128))
        bits = head[fmt.SUPERBLOCK_OFFSET + 12] if len(head) > fmt.SUPERBLOCK_OFFSET + 12 else 0
        if 9 <= bits <= 16:
            head = bytes(self._primary.read(0, fmt.SUPERBLOCK_OFFSET + (1 << bits)))
        return head

    @classmethod
    def from_bytes(cls, data: bytes, **options) -> ErofsImage:
        view = memoryview(data)
        return cls(lambda offset, length: view[offset : offset + length], len(data), **options)

    @classmethod
    def from_file(cls, file: BinaryIO, **options) -> ErofsImage:
        """An image read from a seekable binary file object (which the caller keeps open)."""

        def read(offset: int, length: int) -> bytes:
            file.seek(offset)
            return file.read(length)

        file.seek(0, 2)
        return cls(read, file.tell(), **options)

    # -- paths

    @property
    def root(self) -> Inode:
        return self.inode(self.superblock.root_nid)

    def stat(self, path: str, *, follow_symlinks: bool = True) -> Inode:
        return self._resolve(path, follow_symlinks)

    def lstat(self, path: str) -> Inode:
        return self._resolve(path, False)

    def scandir(self, path: str = "/") -> list[fmt.DirEntry]:
        """The entries of a directory, in on-disk (byte-sorted) order, without "." and ".."."""
        directory = self._resolve(path, True)
        if not directory.is_dir:
            raise ErofsPathError("not_a_directory", path)
        return [entry for name, entry in self._entries(directory).items() if name not in (b".", b"..")]

    def listdir(self, path: str = "/") -> list[str]:
        return [entry.name for entry in self.scandir(path)]

    def read_file(self, path: str, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes of a regular file (symlinks followed) from `offset`, `length` of them or up to its end."""
        inode = self._resolve(path, True)
        if inode.is_dir:
            raise ErofsPathError("is_a_directory", path)
        if not inode.is_file:
            raise ErofsPathError("not_a_file", path)
        return self.read_data(inode, offset, length)

    def readlink(self, path: str) -> str:
        inode = self._resolve(path, False)
        if not inode.is_symlink:
            raise ErofsPathError("not_a_symlink", path)
        return self._link_target(inode)

    def walk(self, top: str = "/") -> Iterator[tuple[str, Inode]]:
        """(path, inode) for `top` and everything below it, depth first in on-disk order; symlinks
        are reported, not followed. Paths are absolute ("/usr/bin/env")."""
        start = self._resolve(top, True)
        stack = [("/" + "/".join(part for part in top.split("/") if part), start)]
        seen: set[int] = set()
        while stack:
            path, node = stack.pop()
            yield path, node
            if not node.is_dir:
                continue
            if node.nid in seen:
                raise ErofsError(f"directory {node.nid} appears twice (at {path})")
            seen.add(node.nid)
            base = path.rstrip("/")
            children = [
                (f"{base}/{entry.name}", self.inode(entry.nid))
                for name, entry in self._entries(node).items()
                if name not in (b".", b"..")
            ]
            stack.extend(reversed(children))

    def _resolve(self, path: str, follow_last: bool) -> Inode:
        parts = [part for part in path.split("/") if part not in ("", ".")]
        parts.reverse()  # a stack: the next component on top
        current = self.root
        hops = 0
        while parts:
            name = parts.pop()
            if not current.is_dir:
                raise ErofsPathError("not_a_directory", path)
            try:
                entry = self._entries(current).get(fmt.encode_name(name))
            except UnicodeEncodeError:  # a lone surrogate no on-disk name can match
                entry = None
            if entry is None:
                raise ErofsPathError("not_found", path)
            node = self.inode(entry.nid)
            if node.is_symlink and (parts or follow_last):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise ErofsPathError("symlink_loop", path)
                target = self._link_target(node)
                parts.extend(reversed([part for part in target.split("/") if part not in ("", ".")]))
                if target.startswith("/"):
                    current = self.root
                continue
            current = node
        return current

    # -- inodes and directories

    def inode(self, nid: int) -> Inode:
        cached = self._inodes.get_recent(nid)
        if cached is not None:
            return cached
        offset = self._meta_base + (nid << fmt.NID_SHIFT)
        first = self._meta(offset, 2)
        data = self._meta(offset, fmt.inode_size(first[0] | first[1] << 8))
        inode = fmt.parse_inode(nid, offset, data, self.superblock)
        self._inodes.put(nid, inode)
        return inode

    def _entries(self, directory: Inode) -> dict[bytes, fmt.DirEntry]:
        cached = self._dirs.get_recent(directory.nid)
        if cached is not None:
            return cached
        data = self.read_data(directory)
        entries: dict[bytes, fmt.DirEntry] = {}
        for start in range(0, len(data), self.block_size):
            for name, nid, file_type in fmt.parse_dir_block(
                data[start : start + self.block_size], directory.nid
            ):
                entries[name] = fmt.DirEntry(fmt.decode_name(name), nid, file_type)
        self._dirs.put(directory.nid, entries)
        return entries

    def _link_target(self, inode: Inode) -> str:
        if inode.size > MAX_SYMLINK:
            raise ErofsError(f"inode {inode.nid}: symlink of {inode.size} bytes")
        return fmt.decode_name(self.read_data(inode))

    # -- data

    def read_data(self, inode: Inode, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes [offset, offset + length) of an inode's data, clipped to its size."""
        if offset < 0 or (length is not None and length < 0):
            raise ErofsError(f"bad range: offset {offset}, length {length}", code="bad_range")
        end = inode.size if length is None else min(inode.size, offset + length)
        if end <= offset:
            return b""
        if end - offset > self.max_read:
            raise ErofsError(
                f"inode {inode.nid}: read of {end - offset} bytes is over {self.max_read}",
                status=413,
                code="too_large",
            )
        layout = inode.layout
        if layout == fmt.FLAT_PLAIN:
            return self._pread(0, (inode.raw << self._bits) + offset, end - offset)
        if layout == fmt.FLAT_INLINE:
            return self._read_inline(inode, offset, end)
        if layout == fmt.CHUNK_BASED:
            return self._read_chunked(inode, offset, end)
        return self._read_compressed(inode, offset, end)

    def _read_inline(self, inode: Inode, offset: int, end: int) -> bytes:
        """FLAT_INLINE: whole blocks from `raw` on, the last (partial) block right after the inode."""
        tail_start = (inode.size - 1) >> self._bits << self._bits
        parts = []
        if offset < tail_start:
            block_end = min(end, tail_start)
            parts.append(self._pread(0, (inode.raw << self._bits) + offset, block_end - offset))
            offset = block_end
        if offset < end:
            parts.append(self._meta(inode.end + offset - tail_start, end - offset))
        return b"".join(parts)

    def _read_chunked(self, inode: Inode, offset: int, end: int) -> bytes:
        chunk_format = inode.raw & 0xFFFF
        if chunk_format & ~0x3F:
            raise ErofsUnsupported(f"inode {inode.nid}: unknown chunk format {chunk_format:#x}")
        chunk_bits = self._bits + (chunk_format & 0x1F)
        indexed = bool(chunk_format & 0x20)
        unit = 8 if indexed else 4
        table = (inode.end + unit - 1) // unit * unit
        parts = []
        while offset < end:
            chunk = offset >> chunk_bits
            chunk_end = min(end, (chunk + 1) << chunk_bits)
            entry = self._meta(table + chunk * unit, unit)
            device = (int.from_bytes(entry[2:4], "little") & self._device_mask) if indexed else 0
            blkaddr = int.from_bytes(entry[-4:], "little")
            if blkaddr == fmt.NULL_ADDR:
                parts.append(bytes(chunk_end - offset))
            else:
                physical = (blkaddr << self._bits) + offset - (chunk << chunk_bits)
                parts.append(self._pread(device, physical, chunk_end - offset))
            offset = chunk_end
        return b"".join(parts)

    def _read_compressed(self, inode: Inode, offset: int, end: int) -> bytes:
        zmap = self._compressed_map(inode)
        parts = []
        while offset < end:
            extent = zmap.extent(offset)
            data = self._extent_data(inode, extent)
            parts.append(data[offset - extent.start : end - extent.start])
            offset = min(end, extent.start + extent.length)
        return b"".join(parts)

    def _compressed_map(self, inode: Inode) -> CompressedMap:
        zmap = self._maps.get_recent(inode.nid)
        if zmap is None:
            header = parse_map_header(inode, self._meta(header_offset(inode), 8), self._bits)
            zmap = CompressedMap(inode, header, self._bits, self._meta)
            self._maps.put(inode.nid, zmap)
        return zmap

    def _extent_data(self, inode: Inode, extent: Extent) -> bytes:
        key = (inode.nid, extent.start)
        data = self._extents.get_recent(key)
        if data is not None:
            return data
        if extent.inline:
            raw = self._meta(extent.paddr, extent.plength)
        else:
            raw = self._pread(0, extent.paddr, extent.plength)
        if extent.algorithm is None:
            if extent.length > len(raw):
                raise ErofsError(f"inode {inode.nid}: {extent.length} bytes stored in {len(raw)}")
            data = raw[: extent.length]
        elif extent.algorithm == 0:
            if self.superblock.has(fmt.INCOMPAT_ZERO_PADDING):
                raw = raw.lstrip(b"\0")  # 0padding: the encoded data ends at the pcluster's end
            try:
                data = decompress_block(raw, extent.length)
            except Lz4Error as error:
                raise ErofsError(f"inode {inode.nid}: extent at {extent.start}: {error.message}") from error
        else:
            name = ALGORITHMS.get(extent.algorithm, str(extent.algorithm))
            raise ErofsUnsupported(f"inode {inode.nid}: {name} compression (this reader has lz4 only)")
        self._extents.put(key, data)
        return data

    # -- devices and blocks

    def _device_slot(self, n: int) -> fmt.DeviceSlot:
        offset = self.superblock.devt_slotoff * fmt.DEVICE_SLOT_SIZE + n * fmt.DEVICE_SLOT_SIZE
        return fmt.parse_device_slot(self._meta(offset, fmt.DEVICE_SLOT_SIZE))

    @property
    def device_tags(self) -> list[bytes]:
        """The tag of each extra device the image refers to (mkfs.erofs writes the blob's path)."""
        return [slot.tag for slot in self._slots]

    def _pread(self, device: int, offset: int, length: int) -> bytes:
        """Data bytes from `device` (0: the primary, whose blocks may map onto an extra device)."""
        if device == 0:
            block = offset >> self._bits
            for n, slot in enumerate(self._slots):
                if slot.mapped_blkaddr and slot.mapped_blkaddr <= block < slot.mapped_blkaddr + slot.blocks:
                    return self._pread(n + 1, offset - (slot.mapped_blkaddr << self._bits), length)
            return self._primary.pread(offset, length)
        if device > len(self._slots):
            raise ErofsError(f"data on device {device}, but the image has {len(self._slots)} extra devices")
        if device > len(self._devices):
            tag = fmt.decode_name(self._slots[device - 1].tag)
            raise ErofsError(
                f"data on extra device {device} ({tag!r}), which was not given", code="missing_device"
            )
        return self._devices[device - 1].pread(offset, length)

    def _meta(self, offset: int, length: int) -> bytes:
        """Bytes of the primary device through the block cache (for metadata: small and reread)."""
        if offset < 0:
            raise ErofsError(f"metadata read at {offset}")
        bits = self._bits
        first, last = offset >> bits, (offset + length - 1) >> bits
        if last - first >= self._blocks.limit:
            return self._primary.pread(offset, length)
        blocks = [self._block(n) for n in range(first, last + 1)]
        data = b"".join(blocks)
        start = offset - (first << bits)
        if start + length > len(data) or any(len(block) < self.block_size for block in blocks[:-1]):
            raise ErofsError(f"image truncated: metadata at {offset}..{offset + length} is past its end")
        return data[start : start + length]

    def _block(self, n: int) -> bytes:
        bits = self._bits
        block = self._blocks.get_recent(n)
        if block is None:
            size = self._primary.size
            length = 1 << bits if size is None else max(0, min(1 << bits, size - (n << bits)))
            block = bytes(self._primary.read(n << bits, length)) if length else b""
            self._blocks.put(n, block)
        return block
