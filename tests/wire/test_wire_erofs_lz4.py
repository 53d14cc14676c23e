"""wire.lz4: LZ4 blocks from the reference encoder, hand-made edge cases, and random input."""

from __future__ import annotations

import random
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wire.lz4 import Lz4Error, decompress_block

LZ4 = shutil.which("lz4")


def reference_blocks(data: bytes, level: int) -> list[tuple[bytes, bool]]:
    """The blocks of the frame the `lz4` tool writes for `data`: (block, stored uncompressed)."""
    frame = subprocess.run(
        [LZ4, f"-{level}", "-B4", "-BI", "--no-frame-crc", "-c"], input=data, capture_output=True, check=True
    ).stdout
    assert frame[:4] == (0x184D2204).to_bytes(4, "little")
    flags = frame[4]
    pos = 7 + (8 if flags & 0x08 else 0) + (4 if flags & 0x01 else 0)
    blocks = []
    while True:
        size = int.from_bytes(frame[pos : pos + 4], "little")
        pos += 4
        if size == 0:
            return blocks
        length = size & 0x7FFFFFFF
        blocks.append((frame[pos : pos + length], bool(size >> 31)))
        pos += length + (4 if flags & 0x10 else 0)


def payloads() -> dict[str, bytes]:
    rng = random.Random(3)
    text = b"".join(b"%d: the quick brown fox\n" % i for i in range(2000))
    return {
        "text": text[:60000],
        "zeros": bytes(65536),
        "short": b"abcabcabcabcabcab",
        "runs": b"".join(bytes([rng.randrange(4)]) * rng.randrange(1, 600) for _ in range(300))[:65536],
        "mixed": (rng.randbytes(300) + text[:700]) * 50,
    }


@pytest.mark.skipif(LZ4 is None, reason="the lz4 tool is not installed")
@pytest.mark.parametrize("level", [1, 9, 12])
@pytest.mark.parametrize("name", sorted(payloads()))
def test_reference_encoder_blocks_decode(name: str, level: int) -> None:
    data = payloads()[name]
    [(block, stored)] = reference_blocks(data, level)
    assert not stored
    assert decompress_block(block, len(data)) == data
    for size in (0, 1, 17, len(data) // 2, len(data) - 1):
        assert decompress_block(block, size) == data[:size]  # stops early: erofs partial decoding
    with pytest.raises(Lz4Error, match="input ends"):
        decompress_block(block, len(data) + 1)


def test_hand_made_sequences() -> None:
    assert decompress_block(b"\x30abc", 3) == b"abc"  # literals only
    assert decompress_block(b"\x11a\x01\x00", 6) == b"aaaaaa"  # offset 1 repeats the last byte
    assert decompress_block(b"\x22ab\x02\x00", 8) == b"abababab"  # overlapping pattern
    assert decompress_block(b"\xf0\x00" + b"z" * 15, 15) == b"z" * 15  # literal length 15 + 0
    assert decompress_block(b"\x1fq\x01\x00\xff\x01", 1 + 4 + 15 + 255 + 1) == b"q" * 276  # long match
    assert decompress_block(b"\x10a\x01\x00", 3) == b"aaa"  # a match clipped to the wanted size


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (b"", "input ends"),
        (b"\x50ab", "literals run past"),
        (b"\x10a", "input ends"),
        (b"\x10a\x00\x00", "match offset 0"),
        (b"\x10a\x02\x00", "match offset 2"),
        (b"\xf0\xff\xff", "input ends"),
        (b"\x1fa\x01\x00\xff", "input ends"),
    ],
)
def test_malformed_blocks(block: bytes, message: str) -> None:
    with pytest.raises(Lz4Error, match=message):
        decompress_block(block, 100)


@pytest.mark.skipif(LZ4 is None, reason="the lz4 tool is not installed")
@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.binary(min_size=1, max_size=40), st.integers(1, 300)), max_size=60))
def test_any_data_round_trips_through_the_reference_encoder(pieces: list[tuple[bytes, int]]) -> None:
    data = b"".join(piece * count for piece, count in pieces)[:65536] + b"end"
    [(block, stored)] = reference_blocks(data, 9)
    assert (block if stored else decompress_block(block, len(data))) == data


@settings(max_examples=500, deadline=1000)
@given(st.binary(max_size=2000), st.integers(min_value=0, max_value=1 << 20))
def test_random_input_gives_the_size_or_lz4_error(block: bytes, size: int) -> None:
    try:
        out = decompress_block(block, size)
    except Lz4Error as error:
        assert error.status == 400 and error.code == "bad_lz4"
    else:
        assert len(out) == size
