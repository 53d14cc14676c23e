"""The newc writer and the sans-IO reader: layout, round trips, and hostile input."""

from __future__ import annotations

import contextlib
import stat

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wire.cpio import (
    ArchiveEnd,
    CpioError,
    CpioReader,
    CpioWriter,
    Entry,
    EntryData,
    EntryEnd,
    EntryStart,
    dir_entry,
    file_entry,
    iter_archive,
    iter_entries,
    read_archive,
    symlink_entry,
    write_archive,
)

FIELDS = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize")
FIELDS += ("devmajor", "devminor", "rdevmajor", "rdevminor", "namesize", "check")


def parse_headers(archive: bytes) -> list[tuple[dict[str, int], str, bytes]]:
    """An independent, non-streaming reading of the layout, to check the writer against."""
    out, pos = [], 0
    while True:
        assert pos % 4 == 0
        assert archive[pos : pos + 6] == b"070701"
        fields = {name: int(archive[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i, name in enumerate(FIELDS)}
        name_end = pos + 110 + fields["namesize"]
        name = archive[pos + 110 : name_end - 1].decode()
        assert archive[name_end - 1] == 0
        data_start = name_end + (-name_end % 4)
        assert archive[name_end:data_start] == b"\0" * (data_start - name_end)
        data = archive[data_start : data_start + fields["filesize"]]
        pos = data_start + fields["filesize"]
        assert archive[pos : pos + (-pos % 4)] == b"\0" * (-pos % 4)
        pos += -pos % 4
        out.append((fields, name, data))
        if name == "TRAILER!!!":
            assert pos == len(archive)
            return out


def header(name: bytes, *, size: int = 0, mode: int = 0o100644, namesize: int | None = None) -> bytes:
    """A hand-made header + name + padding, for building broken archives."""
    namesize = len(name) + 1 if namesize is None else namesize
    fields = [1, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, namesize, 0]
    raw = b"070701" + "".join(f"{v:08X}" for v in fields).encode() + name + b"\0"
    return raw + b"\0" * (-len(raw) % 4)


TRAILER = header(b"TRAILER!!!", mode=0)


def feed_chunks(data: bytes, sizes: list[int], **bounds: int) -> list:
    reader = CpioReader(**bounds)
    events, pos, i = [], 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)] if sizes else len(data)
        events += reader.feed(data[pos : pos + size])
        pos, i = pos + size, i + 1
    reader.close()
    return events


def collect(events: list) -> list[Entry]:
    entries, current, parts = [], None, []
    for event in events:
        if isinstance(event, EntryStart):
            current, parts = event.entry, []
        elif isinstance(event, EntryData):
            parts.append(event.data)
        elif isinstance(event, EntryEnd):
            entries.append(
                Entry(current.name, current.mode, b"".join(parts), current.mtime, current.uid, current.gid)
            )
    assert isinstance(events[-1], ArchiveEnd)
    return entries


# --- writer ------------------------------------------------------------------------------------------


def test_writer_layout():
    archive = write_archive(
        [
            file_entry("a.txt", b"hello", 0o600),
            dir_entry("d"),
            symlink_entry("d/link", "../a.txt"),
            Entry("d/x", stat.S_IFREG | 0o755, b"12345678", mtime=1_700_000_000, uid=1000, gid=100),
        ]
    )
    parsed = parse_headers(archive)
    assert [name for _, name, _ in parsed] == ["a.txt", "d", "d/link", "d/x", "TRAILER!!!"]
    assert [fields["ino"] for fields, _, _ in parsed] == [1, 2, 3, 4, 0]
    assert [fields["nlink"] for fields, _, _ in parsed] == [1, 2, 1, 1, 1]
    assert [fields["mode"] for fields, _, _ in parsed] == [0o100600, 0o40755, 0o120777, 0o100755, 0]
    assert [data for _, _, data in parsed] == [b"hello", b"", b"../a.txt", b"12345678", b""]
    assert all(fields["check"] == 0 and fields["devmajor"] == 0 for fields, _, _ in parsed)
    assert (parsed[3][0]["mtime"], parsed[3][0]["uid"], parsed[3][0]["gid"]) == (1_700_000_000, 1000, 100)


def test_writer_exact_bytes():
    fields = ["00000001", "000081A4", "00000000", "00000000", "00000001", "00000000", "00000002"]
    fields += ["00000000"] * 4 + ["00000002", "00000000"]
    trailer = ["00000000"] * 4 + ["00000001"] + ["00000000"] * 6 + ["0000000B", "00000000"]
    assert write_archive([file_entry("a", b"xy")]) == (
        b"070701"
        + "".join(fields).encode()
        + b"a\0"
        + b"xy\0\0"
        + b"070701"
        + "".join(trailer).encode()
        + b"TRAILER!!!\0"
        + b"\0\0\0"
    )


def test_streaming_writer_matches_entry():
    data = bytes(range(256)) * 40 + b"tail"
    w = CpioWriter()
    streamed = w.begin_file("big.bin", len(data), mode=0o755, mtime=7)
    for i in range(0, len(data), 999):
        streamed += w.data(data[i : i + 999])
    streamed += w.end_file() + w.trailer()
    assert streamed == write_archive([Entry("big.bin", 0o100755, data, mtime=7)])


def test_streaming_writer_misuse():
    w = CpioWriter()
    with pytest.raises(ValueError, match="outside"):
        w.data(b"x")
    with pytest.raises(ValueError, match="without"):
        w.end_file()
    w.begin_file("f", 3)
    with pytest.raises(ValueError, match="still open"):
        w.entry(file_entry("g", b""))
    with pytest.raises(ValueError, match="still open"):
        w.trailer()
    w.data(b"ab")
    with pytest.raises(ValueError, match="2 bytes given, 1 left"):
        w.data(b"cd")
    with pytest.raises(ValueError, match="1 bytes short"):
        w.end_file()
    w.data(b"c")
    w.end_file()
    w.trailer()
    with pytest.raises(ValueError, match="already has its trailer"):
        w.entry(file_entry("late", b""))
    with pytest.raises(CpioError, match="regular files only"):
        CpioWriter().begin_file("d", 0, mode=stat.S_IFDIR | 0o755)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (file_entry("/etc/passwd", b""), "absolute"),
        (file_entry("a/../b", b""), r"'\.\.'"),
        (file_entry("", b""), "empty"),
        (file_entry("a\0b", b""), "NUL"),
        (file_entry("TRAILER!!!", b""), "reserved"),
        (Entry("fifo", stat.S_IFIFO | 0o644), "only regular files"),
        (Entry("d", stat.S_IFDIR | 0o755, b"x"), "no data"),
        (Entry("f", stat.S_IFREG | 0o644, mtime=1 << 32), "mtime"),
        (Entry("f", stat.S_IFREG | 0o644, uid=-1), "uid"),
    ],
)
def test_writer_rejects(entry, message):
    with pytest.raises(CpioError, match=message) as info:
        write_archive([entry])
    assert (info.value.status, info.value.code) == (400, "bad_cpio")


def test_writer_normalises_names():
    assert [e.name for e in read_archive(write_archive([file_entry("./a//b/", b"")]))] == ["a/b"]


def test_iter_archive_passes_data_through():
    data = b"x" * 10_000
    pieces = list(iter_archive([file_entry("f", data)]))
    assert any(piece is data for piece in pieces)
    assert b"".join(pieces) == write_archive([file_entry("f", data)])


# --- reader ------------------------------------------------------------------------------------------

SAMPLE = [
    file_entry("a.txt", b"hello"),
    dir_entry("d"),
    file_entry("d/empty", b""),
    symlink_entry("d/link", "../a.txt"),
    Entry("d/bin", stat.S_IFREG | 0o755, bytes(range(256)), mtime=123, uid=5, gid=6),
    file_entry("ünï cödé/ß.txt", "✓".encode()),
]


def test_read_one_byte_at_a_time():
    archive = write_archive(SAMPLE)
    assert collect(feed_chunks(archive, [1])) == SAMPLE
    assert read_archive(archive) == SAMPLE


def test_events_stream_before_the_entry_ends():
    archive = write_archive([file_entry("f", b"0123456789")])
    reader = CpioReader()
    events = reader.feed(archive[: 112 + 4])  # header, name "f\0" + padding, 4 data bytes
    assert events == [EntryStart(file_entry("f", b""), 10), EntryData(b"0123")]
    assert reader.feed(archive[116:]) == [EntryData(b"456789"), EntryEnd(), ArchiveEnd()]
    reader.close()


def test_empty_entries_end_without_more_input():
    archive = write_archive([dir_entry("d")])
    reader = CpioReader()
    first = len(archive) - len(TRAILER)
    assert reader.feed(archive[:first]) == [EntryStart(dir_entry("d"), 0), EntryEnd()]


def test_gnu_style_names_and_block_padding():
    archive = header(b".", mode=0o40755) + header(b"./a", size=2) + b"hi\0\0" + TRAILER
    archive += b"\0" * (-len(archive) % 512)
    assert read_archive(archive) == [file_entry("a", b"hi")]


def test_only_the_exact_trailer_name_ends_the_archive():
    archive = header(b"./TRAILER!!!", size=1) + b"x\0\0\0" + TRAILER
    assert read_archive(archive) == [file_entry("TRAILER!!!", b"x")]


def test_lower_and_upper_case_hex():
    archive = header(b"f", size=2, mode=0o100755).replace(b"000081ED", b"000081ed") + b"hi\0\0" + TRAILER
    assert read_archive(archive)[0].mode == 0o100755


def bad_field(position: int, text: bytes) -> bytes:
    raw = bytearray(header(b"f") + TRAILER)
    raw[6 + 8 * position : 14 + 8 * position] = text
    return bytes(raw)


@pytest.mark.parametrize(
    ("archive", "message"),
    [
        (b"070707" + bytes(104) + TRAILER, "bad magic"),
        (b"\x1f\x8b\x08\x00" + bytes(200), "bad magic"),
        (bad_field(1, b"0000G1A4"), "mode .* not hexadecimal"),
        (bad_field(6, b"+0000001"), "filesize .* not hexadecimal"),
        (bad_field(6, b" 0000001"), "not hexadecimal"),
        (bad_field(6, b"0x000001"), "not hexadecimal"),
        (bad_field(6, b"0000_001"), "not hexadecimal"),
        (header(b"f", namesize=0) + TRAILER, "name size 0"),
        (header(b"f", namesize=0xFFFFFFFF) + TRAILER, "name size 4294967295"),
        (header(b"ab", namesize=2) + TRAILER, "not NUL-terminated"),
        (header(b"a\0b") + TRAILER, "bad entry name.*NUL"),
        (header(b"/etc/passwd") + TRAILER, "absolute"),
        (header(b"../x") + TRAILER, r"'\.\.'"),
        (header(b"a/../../x") + TRAILER, r"'\.\.'"),
        (header(b"\xff\xfe") + TRAILER, "not UTF-8"),
        (header(b"f", size=65) + b"x" * 68 + TRAILER, "65 bytes, over 64"),
        (header(b"f", size=0xFFFFFFFF), "4294967295 bytes"),
        (header(b"a") + header(b"b") + header(b"c") + TRAILER, "more than 2 entries"),
        (header(b"f") + TRAILER + b"\0\0junk", "after the TRAILER"),
        (header(b"f") + TRAILER + b"\0" * 512 + header(b"g") + TRAILER, "after the TRAILER"),
        (header(b"f"), "no TRAILER"),
        (b"", "no TRAILER"),
        (header(b"f", size=10) + b"abc", "truncated inside the entry 'f'"),
        (b"0707", "truncated inside the header"),
    ],
)
def test_reader_rejects(archive, message):
    bounds = {"max_entry_bytes": 64, "max_entries": 2, "max_name": 100}
    with pytest.raises(CpioError, match=message) as info:
        feed_chunks(archive, [], **bounds)
    assert (info.value.status, info.value.code) == (400, "bad_cpio")
    with pytest.raises(CpioError, match=message):  # the same verdict whatever the chunking
        feed_chunks(archive, [1], **bounds)


def test_every_proper_prefix_is_truncated():
    archive = write_archive(SAMPLE[:3])
    for end in range(len(archive)):
        with pytest.raises(CpioError, match="truncated"):
            feed_chunks(archive[:end], [max(end, 1)])


def test_reader_fails_for_good():
    reader = CpioReader()
    with pytest.raises(CpioError):
        reader.feed(b"nonsense" * 20)
    with pytest.raises(CpioError, match="already failed"):
        reader.feed(TRAILER)
    with pytest.raises(CpioError, match="already failed"):
        reader.close()


def test_oversized_entry_is_refused_before_its_data():
    reader = CpioReader(max_entry_bytes=1 << 20)
    with pytest.raises(CpioError, match="over 1048576"):
        reader.feed(header(b"huge", size=(1 << 20) + 1))


def test_iter_entries_over_chunks():
    archive = write_archive(SAMPLE)
    chunks = (archive[i : i + 5] for i in range(0, len(archive), 5))
    assert list(iter_entries(chunks)) == SAMPLE


# --- properties ---------------------------------------------------------------------------------------

component = st.text(st.characters(codec="utf-8", exclude_characters="/\0"), min_size=1, max_size=12).filter(
    lambda part: part not in (".", "..")
)
names = st.lists(component, min_size=1, max_size=4).map("/".join)
u32 = st.integers(0, 0xFFFFFFFF)
perms = st.integers(0, 0o7777)
entries = st.one_of(
    st.builds(
        lambda n, d, p, t, u, g: Entry(n, stat.S_IFREG | p, d, t, u, g),
        names,
        st.binary(max_size=300),
        perms,
        u32,
        u32,
        u32,
    ),
    st.builds(lambda n, p, t: Entry(n, stat.S_IFDIR | p, b"", t), names, perms, u32),
    st.builds(lambda n, target: Entry(n, stat.S_IFLNK | 0o777, target.encode()), names, names),
)
chunk_sizes = st.lists(st.integers(1, 200), min_size=1, max_size=20)


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(entries, max_size=12), chunk_sizes, st.integers(0, 3))
def test_round_trip_any_chunking(items, sizes, blocks):
    archive = write_archive(items) + b"\0" * (512 * blocks)
    assert collect(feed_chunks(archive, sizes)) == items


def feed_hostile(data: bytes, sizes: list[int]) -> None:
    with contextlib.suppress(CpioError):
        feed_chunks(data, sizes, max_entry_bytes=1 << 16, max_entries=50, max_name=256)


@settings(max_examples=300, deadline=1000)
@given(st.binary(max_size=2000), chunk_sizes)
def test_arbitrary_bytes_parse_or_raise_cpio_error(data, sizes):
    feed_hostile(data, sizes)
    feed_hostile(b"070701" + data, sizes)


@settings(max_examples=300, deadline=1000)
@given(st.lists(entries, min_size=1, max_size=5), st.data(), chunk_sizes)
def test_corrupted_archives_parse_or_raise_cpio_error(items, data, sizes):
    archive = bytearray(write_archive(items))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(archive) - 1))
        archive[position] = data.draw(st.sampled_from(b"0123456789abcdefABCDEFG/\0.\xff"))
    cut = data.draw(st.integers(0, len(archive)))
    feed_hostile(bytes(archive[:cut]), sizes)
