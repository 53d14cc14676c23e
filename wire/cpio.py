"""SVR4 "newc" cpio archives (magic 070701), sans-IO: the writer returns bytes, the reader is fed bytes.

One entry is a 110-byte ASCII header (the magic, then 13 fields of 8 hex digits: ino, mode, uid, gid,
nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check), the NUL-terminated
name (namesize counts the NUL), NUL padding so that header + name is a multiple of 4, the data, and NUL
padding of the data to a multiple of 4. An entry named "TRAILER!!!" ends the archive; GNU cpio then pads
with NULs to a 512-byte block, which the reader accepts.

Entry names follow the spec path rules (`wire.paths.normalize_path`): "./a" reads as "a", and the "."
entry that `find . | cpio -o` starts with is skipped. Hard links (nlink > 1) are not joined: GNU cpio
stores their data with the last link only, so earlier links read as empty files.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

from wire.errors import WireError
from wire.paths import normalize_path

MAGIC = b"070701"
HEADER_SIZE = 110
TRAILER = "TRAILER!!!"
_FIELDS = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize")
_FIELDS += ("devmajor", "devminor", "rdevmajor", "rdevminor", "namesize", "check")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_MAX_FIELD = 0xFFFFFFFF
_KINDS = (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK)


class CpioError(WireError):
    """A malformed or unacceptable archive (HTTP 400, code "bad_cpio")."""

    def __init__(self, message: str) -> None:
        super().__init__(400, "bad_cpio", message)


@dataclass(frozen=True)
class Entry:
    """One archive member. `mode` includes the file type bits; a symlink's target is its data."""

    name: str
    mode: int
    data: bytes = b""
    mtime: int = 0
    uid: int = 0
    gid: int = 0

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)


def file_entry(name: str, data: bytes, mode: int = 0o644) -> Entry:
    return Entry(name, stat.S_IFREG | stat.S_IMODE(mode), bytes(data))


def dir_entry(name: str, mode: int = 0o755) -> Entry:
    return Entry(name, stat.S_IFDIR | stat.S_IMODE(mode))


def symlink_entry(name: str, target: str) -> Entry:
    return Entry(name, stat.S_IFLNK | 0o777, target.encode("utf-8"))


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _check_name(name: str) -> str:
    try:
        return normalize_path(name)
    except WireError as e:
        raise CpioError(f"bad entry name: {e.message}") from None


class CpioWriter:
    """Builds an archive piece by piece; every method returns the bytes to send next."""

    def __init__(self) -> None:
        self._ino = 0
        self._remaining: int | None = None  # bytes still due for the file opened by begin_file
        self._padding = b""
        self._ended = False

    def _check_open(self) -> None:
        if self._remaining is not None:
            raise ValueError("a file is still open: call end_file() first")
        if self._ended:
            raise ValueError("the archive already has its trailer")

    def _header(self, name: str, mode: int, size: int, mtime: int = 0, uid: int = 0, gid: int = 0) -> bytes:
        self._check_open()
        name = _check_name(name)
        if name == TRAILER:
            raise CpioError(f"{TRAILER!r} is reserved for the end of the archive")
        self._ino += 1
        nlink = 2 if stat.S_ISDIR(mode) else 1
        return self._encode_header(name, self._ino, mode, uid, gid, nlink, mtime, size)

    @staticmethod
    def _encode_header(
        name: str, ino: int, mode: int, uid: int, gid: int, nlink: int, mtime: int, size: int
    ) -> bytes:
        name_bytes = name.encode("utf-8") + b"\0"
        fields = (ino, mode, uid, gid, nlink, mtime, size, 0, 0, 0, 0, len(name_bytes), 0)
        for field, value in zip(_FIELDS, fields, strict=True):
            if not 0 <= value <= _MAX_FIELD:
                raise CpioError(f"{name!r}: {field} {value} does not fit a newc header")
        head = MAGIC + "".join(f"{value:08X}" for value in fields).encode("ascii") + name_bytes
        return head + _pad(len(head))

    def _parts(self, e: Entry) -> Iterator[bytes]:
        if stat.S_IFMT(e.mode) not in _KINDS:
            raise CpioError(f"{e.name!r}: only regular files, directories and symlinks (mode {e.mode:o})")
        if e.is_dir and e.data:
            raise CpioError(f"{e.name!r}: a directory has no data")
        yield self._header(e.name, e.mode, len(e.data), e.mtime, e.uid, e.gid)
        if e.data:
            yield e.data
            yield _pad(len(e.data))

    def entry(self, e: Entry) -> bytes:
        return b"".join(self._parts(e))

    def begin_file(self, name: str, size: int, mode: int = 0o100644, mtime: int = 0) -> bytes:
        """The header of a regular file whose `size` bytes follow through data(); mode may omit S_IFREG."""
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
            raise CpioError(f"{name!r}: begin_file writes regular files only (mode {mode:o})")
        header = self._header(name, stat.S_IFREG | mode, size, mtime)
        self._remaining, self._padding = size, _pad(size)
        return header

    def data(self, chunk: bytes) -> bytes:
        if self._remaining is None:
            raise ValueError("data() outside begin_file()/end_file()")
        if len(chunk) > self._remaining:
            raise ValueError(f"{len(chunk)} bytes given, {self._remaining} left of the announced size")
        self._remaining -= len(chunk)
        return bytes(chunk)

    def end_file(self) -> bytes:
        if self._remaining is None:
            raise ValueError("end_file() without begin_file()")
        if self._remaining:
            raise ValueError(f"file ended {self._remaining} bytes short of its announced size")
        self._remaining = None
        return self._padding

    def trailer(self) -> bytes:
        self._check_open()
        self._ended = True
        return self._encode_header(TRAILER, 0, 0, 0, 0, 1, 0, 0)


def iter_archive(entries: Iterable[Entry]) -> Iterator[bytes]:
    """The archive in pieces; entry data is passed through without copying."""
    writer = CpioWriter()
    for e in entries:
        yield from writer._parts(e)
    yield writer.trailer()


def write_archive(entries: Iterable[Entry]) -> bytes:
    return b"".join(iter_archive(entries))


@dataclass(frozen=True)
class EntryStart:
    entry: Entry  # without data; `size` bytes of EntryData follow
    size: int


@dataclass(frozen=True)
class EntryData:
    data: bytes


@dataclass(frozen=True)
class EntryEnd:
    pass


@dataclass(frozen=True)
class ArchiveEnd:
    pass


Event = EntryStart | EntryData | EntryEnd | ArchiveEnd

_HEADER, _NAME, _DATA, _PAD, _END = range(5)


class CpioReader:
    """Incremental parser: feed() chunks of any size, get events back.

    It buffers at most one header plus name; entry data is handed on in pieces of the chunks fed.
    After the first error every call raises.
    """

    def __init__(
        self, *, max_entry_bytes: int = 64 << 20, max_entries: int = 100_000, max_name: int = 4096
    ) -> None:
        self._max_entry_bytes = max_entry_bytes
        self._max_entries = max_entries
        self._max_name = max_name
        self._state = _HEADER
        self._need = HEADER_SIZE  # bytes to buffer (header, name) or to pass on (data, padding)
        self._buf = bytearray()
        self._offset = 0  # archive offset of the current header, for messages
        self._mode = self._mtime = self._uid = self._gid = 0
        self._size = self._namesize = 0
        self._name = ""
        self._emit = False  # False for the trailer and the skipped "." entry
        self._trailer = False
        self._entries = 0
        self._error: CpioError | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        if self._error is not None:
            raise CpioError(f"reader already failed: {self._error.message}")
        try:
            return self._feed(memoryview(chunk))
        except CpioError as e:
            self._error = e
            raise

    def close(self) -> None:
        if self._error is not None:
            raise CpioError(f"reader already failed: {self._error.message}")
        if self._state == _END:
            return
        if self._state == _HEADER and not self._buf:
            raise CpioError("archive truncated: no TRAILER!!! entry")
        where = "header" if self._state in (_HEADER, _NAME) else f"entry {self._name!r}"
        raise CpioError(f"archive truncated inside the {where} at offset {self._offset}")

    def _feed(self, view: memoryview) -> list[Event]:
        events: list[Event] = []
        pos, end = 0, len(view)
        while pos < end:
            if self._state == _END:
                if view[pos:].tobytes().strip(b"\0"):
                    raise CpioError("data after the TRAILER!!! entry")
                break
            if self._state in (_HEADER, _NAME):
                take = min(self._need - len(self._buf), end - pos)
                self._buf += view[pos : pos + take]
                pos += take
                if len(self._buf) < self._need:
                    break
                if self._state == _HEADER:
                    self._parse_header()
                else:
                    self._parse_name(events)
            else:
                take = min(self._need, end - pos)
                if self._state == _DATA and self._emit and take:
                    events.append(EntryData(view[pos : pos + take].tobytes()))
                pos += take
                self._need -= take
            self._settle(events)
        return events

    def _settle(self, events: list[Event]) -> None:
        """Leave the data and padding states as soon as nothing more is due, so that an entry ends
        without waiting for the next chunk."""
        if self._state == _DATA and self._need == 0:
            self._state, self._need = _PAD, -self._size % 4
        if self._state == _PAD and self._need == 0:
            if self._trailer:
                self._state = _END
                events.append(ArchiveEnd())
                return
            if self._emit:
                events.append(EntryEnd())
            self._offset += HEADER_SIZE + self._namesize + (-(HEADER_SIZE + self._namesize) % 4)
            self._offset += self._size + (-self._size % 4)
            self._state, self._need = _HEADER, HEADER_SIZE

    def _parse_header(self) -> None:
        raw = bytes(self._buf)
        if raw[:6] != MAGIC:
            raise CpioError(f"bad magic {raw[:6]!r} at offset {self._offset}: not a newc (070701) archive")
        values = []
        for i, field in enumerate(_FIELDS):
            text = raw[6 + 8 * i : 14 + 8 * i]
            if not _HEX.issuperset(text):
                raise CpioError(f"header field {field} at offset {self._offset} is not hexadecimal: {text!r}")
            values.append(int(text, 16))
        _, self._mode, self._uid, self._gid, _, self._mtime, self._size = values[:7]
        self._namesize = values[11]
        if self._namesize == 0 or self._namesize - 1 > self._max_name:
            limit = self._max_name + 1
            raise CpioError(f"name size {self._namesize} at offset {self._offset} is not in 1..{limit}")
        if self._size > self._max_entry_bytes:
            limit = self._max_entry_bytes
            raise CpioError(f"entry at offset {self._offset} has {self._size} bytes, over {limit}")
        self._buf.clear()
        self._state = _NAME
        self._need = self._namesize + (-(HEADER_SIZE + self._namesize) % 4)

    def _parse_name(self, events: list[Event]) -> None:
        field = bytes(self._buf[: self._namesize])
        self._buf.clear()
        if field[-1] != 0:
            raise CpioError(f"name at offset {self._offset} is not NUL-terminated")
        try:
            name = field[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise CpioError(f"name {field[:-1]!r} at offset {self._offset} is not UTF-8") from None
        self._state, self._need = _DATA, self._size
        self._trailer = name == TRAILER
        self._emit = name not in (TRAILER, ".", "./")
        self._name = name
        if not self._emit:
            return
        self._name = _check_name(name)
        self._entries += 1
        if self._entries > self._max_entries:
            raise CpioError(f"more than {self._max_entries} entries")
        entry = Entry(self._name, self._mode, b"", self._mtime, self._uid, self._gid)
        events.append(EntryStart(entry, self._size))


def iter_entries(chunks: Iterable[bytes], **bounds: int) -> Iterator[Entry]:
    """Whole entries from a chunked archive; one entry's data (at most max_entry_bytes) is held at a time."""
    reader = CpioReader(**bounds)
    current: Entry | None = None
    parts: list[bytes] = []
    for chunk in chunks:
        for event in reader.feed(chunk):
            if isinstance(event, EntryStart):
                current, parts = event.entry, []
            elif isinstance(event, EntryData):
                parts.append(event.data)
            elif isinstance(event, EntryEnd) and current is not None:
                yield replace(current, data=b"".join(parts))
    reader.close()


def read_archive(data: bytes, **bounds: int) -> list[Entry]:
    return list(iter_entries([data], **bounds))
