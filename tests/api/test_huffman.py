"""api/huffman.py decodes exactly what hpack's own decoder does, errors included, and is the one hpack's
header decoder uses once the edge's protocols are installed."""

from __future__ import annotations

import random

import hpack
import hpack.hpack
import pytest
from hpack.exceptions import HPACKDecodingError
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.huffman_table import decode_huffman as hpack_decode

from api import h2
from api.huffman import decode_huffman

ENCODER = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)


def outcome(decode, data: bytes) -> bytes | str:  # type: ignore[no-untyped-def]
    try:
        return decode(data)
    except HPACKDecodingError as error:
        return f"error: {error}"


def test_valid_strings_decode_as_hpack_decodes_them() -> None:
    rng = random.Random(5)
    path = b"/api/v1/runs/2a52e5e5d5d9d2a0aae3bbaf571348b5ec763ad66113785af491860290eea0b8"
    samples = [b"", b"a", path, bytes(range(256))]
    samples += [rng.randbytes(rng.randrange(1, 40)) for _ in range(2000)]
    for plain in samples:
        assert decode_huffman(ENCODER.encode(plain)) == plain == hpack_decode(ENCODER.encode(plain))


def test_invalid_strings_fail_as_hpack_fails() -> None:
    rng = random.Random(6)
    # EOS (30 one-bits), padding longer than 7 bits, padding of zeros, cut codes, and random bytes.
    samples = [b"\xff\xff\xff\xff", b"\xff", b"\x00", ENCODER.encode(b"\x80")[:-1]]
    samples += [rng.randbytes(rng.randrange(1, 12)) for _ in range(20000)]
    failures = 0
    for data in samples:
        expected = outcome(hpack_decode, data)
        assert outcome(decode_huffman, data) == expected, data
        failures += isinstance(expected, str)
    assert failures > 1000  # random bytes are mostly not Huffman strings: the error paths were taken


def test_a_repeated_string_decodes_and_fails_the_same_again() -> None:
    path = ENCODER.encode(b"/api/v1/runs/" + b"7e" * 32)
    assert [decode_huffman(path) for _ in range(3)] == [hpack_decode(path)] * 3
    assert decode_huffman(memoryview(path)) == decode_huffman(bytearray(path)) == hpack_decode(path)
    for _ in range(2):
        with pytest.raises(HPACKDecodingError):
            decode_huffman(b"\xff\xff\xff\xff")


def test_the_edge_protocols_make_hpack_use_it() -> None:
    h2.install()
    assert hpack.hpack.decode_huffman is decode_huffman
    block = hpack.Encoder().encode([(":path", "/api/v1/runs/abc")], huffman=True)
    assert hpack.Decoder().decode(block) == [(":path", "/api/v1/runs/abc")]


@pytest.mark.parametrize("data", [b"", bytearray(), memoryview(b""), None])
def test_nothing_decodes_to_nothing(data: bytes | None) -> None:
    assert decode_huffman(data) == b""
