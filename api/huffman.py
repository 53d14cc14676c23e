"""HPACK's Huffman decoding a byte at a time, for the header values clients send compressed.

The hpack library decodes Huffman strings with a state machine that takes a nibble a step (its
`huffman_table.HUFFMAN_TABLE`: 256 states x 16 nibbles), two steps per byte in pure Python. nghttp2
(curl, h2load) never adds `:path` to HPACK's dynamic table, so it comes as a Huffman string on every
request: every `GET /api/v1/runs/<id>` spent 11-22 µs, up to a tenth of its whole cost at the edge,
decoding its 77-character path (docs/performance.md, "HTTP/2 connections at the edge").

Here the same state machine is composed with itself once, at import: from each state, a whole byte
leads to one next state and emits zero, one or two symbols. Decoding is then one table step per byte,
with the same results and the same errors as hpack's (tests/api/test_huffman.py compares them).
`install()` makes hpack's decoder use it (api/h2.py calls it).

A client asking for the same run again sends the same string, so short strings are remembered: a
repeated 77-character path costs a dictionary look-up (0.1 µs) instead of its decoding (5 µs).
"""

from __future__ import annotations

import functools

import hpack.hpack
from hpack.exceptions import HPACKDecodingError
from hpack.huffman_table import HUFFMAN_COMPLETE, HUFFMAN_EMIT_SYMBOL, HUFFMAN_FAIL, HUFFMAN_TABLE

_STATES = len(HUFFMAN_TABLE) // 16
_FAILED = -1
# Strings remembered: at most this many, of at most this many bytes (a run's path is 58), so 128 KiB.
MEMO_STRINGS = 1024
MEMO_BYTES = 128


def _nibble(state: int, nibble: int, emitted: bytes) -> tuple[int, bytes, bool]:
    """hpack's step: the next state (_FAILED on an invalid code), what is emitted, whether complete."""
    state, flags, symbol = HUFFMAN_TABLE[state * 16 + nibble]
    if flags & HUFFMAN_FAIL:
        return _FAILED, emitted, False
    if flags & HUFFMAN_EMIT_SYMBOL:
        emitted += bytes((symbol,))
    return state, emitted, bool(flags & HUFFMAN_COMPLETE)


def _byte_table() -> tuple[list[int], list[bytes], list[bool]]:
    """For index `state << 8 | byte`: the next state, the symbols emitted, and whether the string may end
    there. One bytes object per distinct emission, shared, so the table costs about 1.5 MB."""
    next_states: list[int] = []
    emissions: list[bytes] = []
    completes: list[bool] = []
    shared: dict[bytes, bytes] = {}
    for state in range(_STATES):
        for byte in range(256):
            middle, emitted, _ = _nibble(state, byte >> 4, b"")
            if middle != _FAILED:
                after, emitted, complete = _nibble(middle, byte & 0x0F, emitted)
            else:
                after, complete = _FAILED, False
            next_states.append(after)
            emissions.append(shared.setdefault(emitted, emitted))
            completes.append(complete)
    return next_states, emissions, completes


_NEXT, _EMIT, _COMPLETE = _byte_table()


def decode_huffman(huffman_string: bytes | bytearray | memoryview | None) -> bytes:
    """What `hpack.huffman_table.decode_huffman` returns for `huffman_string`, and raises
    HPACKDecodingError where it does (an invalid code, EOS, or padding that is not a code's prefix)."""
    if not huffman_string:
        return b""
    if len(huffman_string) <= MEMO_BYTES:
        return _decode_remembered(bytes(huffman_string))
    return _decode(huffman_string)


@functools.lru_cache(maxsize=MEMO_STRINGS)
def _decode_remembered(huffman_string: bytes) -> bytes:
    return _decode(huffman_string)  # an error is raised again, not remembered


def _decode(huffman_string: bytes | bytearray | memoryview) -> bytes:
    decoded = bytearray()
    state = 0
    index = 0
    for byte in huffman_string:
        index = state << 8 | byte
        state = _NEXT[index]
        if state == _FAILED:
            raise HPACKDecodingError("Invalid Huffman string")
        decoded += _EMIT[index]
    if not _COMPLETE[index]:
        raise HPACKDecodingError("Incomplete Huffman string")
    return bytes(decoded)


def install() -> None:
    """hpack's header decoder calls its module's `decode_huffman`: point that name here."""
    hpack.hpack.decode_huffman = decode_huffman  # type: ignore[attr-defined]
