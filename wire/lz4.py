"""LZ4 block decompression (the raw block format, no frame), pure Python and bounded.

A block is a run of sequences: a token byte (high nibble: literal count, low nibble: match length
minus 4; 15 in either means "add the following bytes until one is below 255"), the literals, then a
2-byte little-endian offset back into the output. The last sequence has literals only.

The caller always knows how many bytes it wants (erofs records every extent's length), so the
output never grows past `size`: decoding stops there, which also covers encoders that leave
trailing input (erofs without 0padding).
"""

from __future__ import annotations

from wire.errors import WireError


class Lz4Error(WireError):
    """Malformed LZ4 input (HTTP 400, code "bad_lz4")."""

    def __init__(self, message: str) -> None:
        super().__init__(400, "bad_lz4", message)


def decompress_block(src: bytes | bytearray | memoryview, size: int) -> bytes:
    """The first `size` bytes that the LZ4 block `src` decodes to; Lz4Error if it is malformed or
    ends before producing `size` bytes."""
    # One flat loop with local counters: it runs once per sequence, millions of times per image.
    # Reading past the input's end raises IndexError, turned into Lz4Error once, outside the loop.
    src = bytes(src)
    end = len(src)
    out = bytearray()
    n = pos = 0
    try:
        while n < size:
            token = src[pos]
            pos += 1
            literals = token >> 4
            if literals:
                if literals == 15:
                    literals, pos = _extended(src, pos, literals)
                stop = pos + literals
                if stop > end:
                    raise Lz4Error("literals run past the end of the input")
                if n + literals >= size:
                    out += src[pos : pos + size - n]
                    break
                out += src[pos:stop]
                pos = stop
                n += literals
            offset = src[pos] | src[pos + 1] << 8
            pos += 2
            length = (token & 15) + 4
            if length == 19:
                length, pos = _extended(src, pos, length)
            if not 0 < offset <= n:
                raise Lz4Error(f"match offset {offset} outside the {n} bytes decoded so far")
            if n + length > size:
                length = size - n
            start = n - offset
            if length <= offset:
                out += out[start : start + length]
            else:  # overlapping: the last `offset` bytes repeat
                out += (out[start:] * (length // offset + 1))[:length]
            n += length
    except IndexError:
        raise Lz4Error(f"input ends after {n} of {size} bytes") from None
    return bytes(out)


def _extended(src: bytes, pos: int, length: int) -> tuple[int, int]:
    """Add the extension bytes of a length whose nibble was 15 (each 255 means another follows)."""
    while True:
        byte = src[pos]
        pos += 1
        length += byte
        if byte != 255:
            return length, pos
