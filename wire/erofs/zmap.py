"""Where the bytes of a compressed file are: erofs's logical-cluster indexes, decoded.

A compressed file is cut into logical clusters ("lclusters", 2^lclusterbits bytes of file data). Each
has an index entry of one of three kinds: a HEAD (type 1 or 3) or PLAIN (type 0, stored uncompressed)
lcluster starts an extent at byte `clusterofs` inside it and names the physical cluster ("pcluster")
holding the extent's encoded data; a NONHEAD (type 2) lcluster lies wholly inside the extent started
by an earlier head, `delta0` lclusters back, and the next head is `delta1` lclusters ahead. An extent
runs from its head to the next head (or the end of the file) and decodes from exactly one pcluster.

Index entries follow the inode (and its xattrs), after an 8-byte map header aligned to 8 bytes:

- layout 1 (COMPRESSED_FULL): 8 more bytes, then one 8-byte entry per lcluster (advise, clusterofs,
  then a block address for heads or delta0/delta1 for non-heads).
- layout 3 (COMPRESSED_COMPACT): "packs" that share one 32-bit block address: 2 entries in 8 bytes,
  or 16 entries in 32 bytes ("2B" packs, when the file has the COMPACTED_2B advice and 4 KiB
  lclusters). Entries are bit fields of `lclusterbits` bits of value + 2 bits of type. First come
  4-byte-per-entry packs up to a 32-byte boundary, then as many 2B packs as fit whole, then 4B packs.
  A pack's block address is that of its first pcluster (for single-block pclusters: minus one), and
  each head's pcluster follows those of the heads before it in the pack. The last entry of a pack
  holds delta1 instead of delta0; delta0 then follows from the entry before it.

With big pclusters, the first non-head after a head carries the pcluster's block count instead of a
delta0 (flag D0_CBLKCNT). With ztailpacking the file's last extent is stored compressed right after
the pack holding the last lcluster's entry, `idata_size` bytes long, in the metadata.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from wire.erofs.format import COMPRESSED_COMPACT, COMPRESSED_FULL, ErofsError, ErofsUnsupported, Inode

TYPE_PLAIN, TYPE_HEAD1, TYPE_NONHEAD, TYPE_HEAD2 = range(4)
ADVISE_COMPACTED_2B = 0x1
ADVISE_BIG_PCLUSTER_1 = 0x2
ADVISE_BIG_PCLUSTER_2 = 0x4
ADVISE_INLINE_PCLUSTER = 0x8
ADVISE_INTERLACED_PCLUSTER = 0x10
ADVISE_FRAGMENT_PCLUSTER = 0x20
KNOWN_ADVICE = ADVISE_COMPACTED_2B | ADVISE_BIG_PCLUSTER_1 | ADVISE_BIG_PCLUSTER_2 | ADVISE_INLINE_PCLUSTER
D0_CBLKCNT = 1 << 11
ALGORITHMS = {0: "lz4", 1: "lzma", 2: "deflate", 3: "zstd"}
MAX_PCLUSTER = 1 << 20  # the format's limits on one pcluster: encoded bytes …
MAX_EXTENT = 12 << 20  # … and decoded bytes

_MAP_HEADER = struct.Struct("<HHHBB")
_FULL_ENTRY = struct.Struct("<HHHH")


@dataclass(frozen=True)
class MapHeader:
    idata_size: int
    advise: int
    algorithms: tuple[int, int]  # for HEAD1 and HEAD2 lclusters
    lclusterbits: int
    index_offset: int  # byte offset of the first index entry


def parse_map_header(inode: Inode, data: bytes, block_bits: int) -> MapHeader:
    """The map header `data` (8 bytes at `header_offset(inode)`)."""
    _, idata_size, advise, algorithms, clusterbits = _MAP_HEADER.unpack(data)
    if clusterbits & 0x80 or advise & ADVISE_FRAGMENT_PCLUSTER:
        raise ErofsUnsupported(f"inode {inode.nid}: data in the packed inode (fragments)")
    if advise & ADVISE_INTERLACED_PCLUSTER:
        raise ErofsUnsupported(f"inode {inode.nid}: interlaced uncompressed pclusters")
    if advise & ~KNOWN_ADVICE:
        raise ErofsUnsupported(f"inode {inode.nid}: unknown compression advice {advise:#x}")
    lclusterbits = block_bits + (clusterbits & 7)
    start = header_offset(inode) + 8
    if inode.layout == COMPRESSED_FULL:
        start += 8
    elif bool(advise & ADVISE_BIG_PCLUSTER_1) != bool(advise & ADVISE_BIG_PCLUSTER_2):
        raise ErofsError(f"inode {inode.nid}: compact indexes with big pclusters for one head type only")
    return MapHeader(idata_size, advise, (algorithms & 15, algorithms >> 4), lclusterbits, start)


def header_offset(inode: Inode) -> int:
    return (inode.end + 7) & ~7


@dataclass(frozen=True)
class Lcluster:
    """One decoded index entry. For heads: `clusterofs` and `pblk`; for non-heads: the deltas
    (`delta1` is None when the entry does not say) and, with big pclusters, `cblkcnt`."""

    lcn: int
    type: int
    clusterofs: int = 0
    pblk: int = 0
    delta0: int = 0
    delta1: int | None = None
    cblkcnt: int = 0
    pack_end: int = 0  # byte offset just past the entry's pack: where an inline tail pcluster starts

    @property
    def is_head(self) -> bool:
        return self.type != TYPE_NONHEAD


@dataclass(frozen=True)
class Extent:
    """File bytes [start, start + length) decode from `plength` bytes at `paddr` (a block address
    times the block size, or a byte offset in the metadata when `inline`) with `algorithm`
    (None: stored as is)."""

    start: int
    length: int
    paddr: int
    plength: int
    algorithm: int | None
    inline: bool


class CompressedMap:
    """Maps file offsets of one compressed inode to extents; reads index bytes with `read_meta`."""

    def __init__(self, inode: Inode, header: MapHeader, block_bits: int, read_meta) -> None:
        self.inode = inode
        self.header = header
        self.block_bits = block_bits
        self.read_meta = read_meta
        self.bits = header.lclusterbits
        self.big = bool(header.advise & ADVISE_BIG_PCLUSTER_1)
        self.total = -(-inode.size >> self.bits)  # lclusters in the file
        self.max_span = (MAX_EXTENT >> self.bits) + 2  # lclusters one extent may touch
        self._last_pack: tuple[int, tuple[list[tuple[int, int]], int]] = (-1, ([], 0))
        self.tail_head: int | None = None
        self.tail_offset = 0
        self.initial_4b, self.compacted_2b = (
            self._compact_regions() if inode.layout == COMPRESSED_COMPACT else (0, 0)
        )
        if header.advise & ADVISE_INLINE_PCLUSTER and inode.size:
            last = self.lcluster(self.total - 1)
            self.tail_offset = last.pack_end
            self.tail_head = self._head_of(last, inode.size - 1).lcn

    def _compact_regions(self) -> tuple[int, int]:
        """How many entries sit in 4-byte packs before the 2-byte ones, and how many in 2-byte packs."""
        if self.bits > 14 or (self.header.advise & ADVISE_COMPACTED_2B and self.bits != 12):
            raise ErofsUnsupported(
                f"inode {self.inode.nid}: compact indexes for 2^{self.bits}-byte lclusters"
            )
        initial = (32 - self.header.index_offset % 32) // 4 % 8  # up to a 32-byte boundary
        packed = 0
        if self.header.advise & ADVISE_COMPACTED_2B and initial < self.total:
            packed = (self.total - initial) // 16 * 16
        return initial, packed

    def extent(self, offset: int) -> Extent:
        """The extent holding byte `offset` (0 <= offset < size) of the file."""
        entry = self.lcluster(offset >> self.bits)
        head = self._head_of(entry, offset)
        start = (head.lcn << self.bits) + head.clusterofs
        end = self._extent_end(head)
        if not start <= offset < end:
            raise ErofsError(f"inode {self.inode.nid}: extent {start}..{end} misses byte {offset}")
        if end - start > MAX_EXTENT:
            raise ErofsError(f"inode {self.inode.nid}: extent of {end - start} bytes")
        algorithm = None
        if head.type != TYPE_PLAIN:
            algorithm = self.header.algorithms[head.type == TYPE_HEAD2]
        if head.lcn == self.tail_head:
            return Extent(start, end - start, self.tail_offset, self.header.idata_size, algorithm, True)
        blocks = self._pcluster_blocks(head)
        return Extent(
            start, end - start, head.pblk << self.block_bits, blocks << self.block_bits, algorithm, False
        )

    def _head_of(self, entry: Lcluster, offset: int) -> Lcluster:
        """The head lcluster of the extent holding `offset`, which lies in `entry`."""
        if entry.is_head and (offset & ((1 << self.bits) - 1)) >= entry.clusterofs:
            return entry
        distance = 1 if entry.is_head else entry.delta0
        lcn = entry.lcn
        while True:
            if distance <= 0 or distance > lcn or entry.lcn - lcn + distance > self.max_span:
                raise ErofsError(f"inode {self.inode.nid}: bad lookback from lcluster {entry.lcn}")
            lcn -= distance
            found = self.lcluster(lcn)
            if found.is_head:
                return found
            distance = found.delta0

    def _extent_end(self, head: Lcluster) -> int:
        """Where the extent started by `head` ends: at the next head, or the end of the file."""
        size = self.inode.size
        lcn = head.lcn + 1
        while (lcn << self.bits) < size:
            if lcn - head.lcn > self.max_span:
                raise ErofsError(f"inode {self.inode.nid}: extent at lcluster {head.lcn} never ends")
            entry = self.lcluster(lcn, lookahead=True)
            if entry.is_head:
                return min((lcn << self.bits) + entry.clusterofs, size)
            if not entry.delta1:
                return min((lcn + 1) << self.bits, size)
            lcn += entry.delta1
        return size

    def _pcluster_blocks(self, head: Lcluster) -> int:
        """How many blocks the pcluster of `head` takes: 1 unless big pclusters say otherwise."""
        big = self.header.advise & (
            ADVISE_BIG_PCLUSTER_2 if head.type == TYPE_HEAD2 else ADVISE_BIG_PCLUSTER_1
        )
        if head.type == TYPE_PLAIN or not big or head.lcn + 1 >= self.total:
            return 1 << (self.bits - self.block_bits)
        following = self.lcluster(head.lcn + 1)
        if following.is_head:
            return 1 << (self.bits - self.block_bits)
        if not following.cblkcnt or following.cblkcnt << self.block_bits > MAX_PCLUSTER:
            raise ErofsError(f"inode {self.inode.nid}: bad pcluster block count after lcluster {head.lcn}")
        return following.cblkcnt

    def lcluster(self, lcn: int, lookahead: bool = False) -> Lcluster:
        if not 0 <= lcn < self.total:
            raise ErofsError(f"inode {self.inode.nid}: lcluster {lcn} outside the file")
        if self.inode.layout == COMPRESSED_FULL:
            return self._full_entry(lcn)
        return self._compact_entry(lcn, lookahead)

    def _full_entry(self, lcn: int) -> Lcluster:
        offset = self.header.index_offset + 8 * lcn
        advise, clusterofs, low, high = _FULL_ENTRY.unpack(self.read_meta(offset, 8))
        kind = advise & 3
        if kind == TYPE_NONHEAD:
            delta0, cblkcnt = low, 0
            if delta0 & D0_CBLKCNT:
                self._check_big(lcn)
                delta0, cblkcnt = 1, delta0 & ~D0_CBLKCNT
            return Lcluster(lcn, kind, delta0=delta0, delta1=high, cblkcnt=cblkcnt, pack_end=offset + 8)
        if clusterofs >> self.bits:
            raise ErofsError(f"inode {self.inode.nid}: cluster offset {clusterofs} at lcluster {lcn}")
        return Lcluster(lcn, kind, clusterofs=clusterofs, pblk=low | high << 16, pack_end=offset + 8)

    def _compact_entry(self, lcn: int, lookahead: bool) -> Lcluster:
        shift, index = 2, lcn
        offset = self.header.index_offset
        if index >= self.initial_4b:
            offset += self.initial_4b * 4
            index -= self.initial_4b
            if index < self.compacted_2b:
                shift = 1
            else:
                offset += self.compacted_2b * 2
                index -= self.compacted_2b
        offset += index << shift
        count = 2 if shift == 2 else 16
        pack_size = count << shift
        pack_start = offset - offset % pack_size
        fields, base = self._pack(pack_start, pack_size, count)
        position = (offset - pack_start) >> shift
        return self._unpack(fields, base, position, lcn, lookahead, pack_start + pack_size)

    def _pack(self, start: int, size: int, count: int) -> tuple[list[tuple[int, int]], int]:
        """The (type, value) fields and block address of the compact pack at `start`. The last pack
        decoded is kept: a file read in order asks for each pack many times over."""
        if self._last_pack[0] == start:
            return self._last_pack[1]
        pack = self.read_meta(start, size)
        width = (size - 4) * 8 // count
        mask = (1 << self.bits) - 1
        fields = []
        for k in range(count):
            value = int.from_bytes(pack[width * k // 8 : width * k // 8 + 4], "little") >> (width * k & 7)
            fields.append((value >> self.bits & 3, value & mask))
        decoded = fields, int.from_bytes(pack[-4:], "little")
        self._last_pack = (start, decoded)
        return decoded

    def _unpack(
        self, fields: list[tuple[int, int]], base: int, i: int, lcn: int, lookahead: bool, pack_end: int
    ) -> Lcluster:
        """Entry `i` of a compact pack; `base` is the pack's block address."""
        count = len(fields)
        kind, value = fields[i]
        if kind == TYPE_NONHEAD:
            delta1 = self._lookahead(fields, i) if lookahead else None
            if value & D0_CBLKCNT:
                self._check_big(lcn)
                return Lcluster(
                    lcn, kind, delta0=1, delta1=delta1, cblkcnt=value & ~D0_CBLKCNT, pack_end=pack_end
                )
            if i + 1 < count:
                return Lcluster(lcn, kind, delta0=value, delta1=delta1, pack_end=pack_end)
            before_kind, before = fields[i - 1]
            delta0 = 1
            if before_kind == TYPE_NONHEAD:
                delta0 += 1 if before & D0_CBLKCNT else before
            return Lcluster(lcn, kind, delta0=delta0, delta1=delta1, pack_end=pack_end)
        return Lcluster(
            lcn, kind, clusterofs=value, pblk=base + self._blocks_before(fields, i), pack_end=pack_end
        )

    def _lookahead(self, fields: list[tuple[int, int]], i: int) -> int:
        """delta1 of non-head entry `i`: the distance to the next head, which the pack's last entry
        continues when every entry after `i` is a non-head."""
        distance = 0
        for kind, _ in fields[i:]:
            if kind != TYPE_NONHEAD:
                return distance
            distance += 1
        last = fields[-1][1]
        return distance if last & D0_CBLKCNT else distance + last - 1

    def _blocks_before(self, fields: list[tuple[int, int]], i: int) -> int:
        """Blocks taken by the pclusters that the pack places before that of the head at `i`."""
        if not self.big:
            return 1 + sum(kind != TYPE_NONHEAD for kind, _ in fields[:i])
        blocks = 0
        for k in range(i):
            kind, value = fields[k]
            if kind == TYPE_NONHEAD:
                if value & D0_CBLKCNT:
                    blocks += value & ~D0_CBLKCNT
            elif not (k + 1 < i and fields[k + 1][0] == TYPE_NONHEAD and fields[k + 1][1] & D0_CBLKCNT):
                blocks += 1
        return blocks

    def _check_big(self, lcn: int) -> None:
        if not self.header.advise & (ADVISE_BIG_PCLUSTER_1 | ADVISE_BIG_PCLUSTER_2):
            raise ErofsError(f"inode {self.inode.nid}: block count at lcluster {lcn} without big pclusters")
