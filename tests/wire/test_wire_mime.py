"""Media type sniffing for output files."""

from __future__ import annotations

import struct

import pytest

from wire.mime import sniff


def binary_stl(triangles: int, header: bytes = b"binary stl") -> bytes:
    return header.ljust(80, b"\0") + struct.pack("<I", triangles) + bytes(50 * triangles)


ASCII_STL = (
    b"solid cube\n facet normal 0 0 1\n  outer loop\n   vertex 0 0 0\n  endloop\n endfacet\nendsolid cube\n"
)
SVG = b'<?xml version="1.0"?>\n<!-- made by hand -->\n<svg xmlns="http://www.w3.org/2000/svg"></svg>'


@pytest.mark.parametrize(
    ("path", "data", "expected"),
    [
        ("a.bin", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "image/png"),
        ("photo", b"\xff\xd8\xff\xe0\0\x10JFIF", "image/jpeg"),
        ("x.gif", b"GIF89a\x01\0", "image/gif"),
        ("x.gif", b"GIF87a\x01\0", "image/gif"),
        ("doc.txt", b"%PDF-1.7\n", "application/pdf"),
        ("a.gz", b"\x1f\x8b\x08\0", "application/gzip"),
        ("a.zip", b"PK\x03\x04\x14\0", "application/zip"),
        ("a.out", b"\x7fELF\x02\x01\x01", "application/x-executable"),
        ("m.glb", b"glTF\x02\0\0\0", "model/gltf-binary"),
        ("m", binary_stl(2), "model/stl"),
        ("m", binary_stl(1, header=b"solid but binary"), "model/stl"),
        ("m.stl", binary_stl(0), "model/stl"),
        ("m.ply", b"ply\nformat binary_little_endian 1.0\nend_header\n\xff\xfe", "model/ply"),
        ("m.stl", ASCII_STL, "model/stl"),
        ("m.txt", ASCII_STL, "model/stl"),
        ("pic", SVG, "image/svg+xml"),
        ("pic.svg", b"<svg width='1'/>", "image/svg+xml"),
        ("p", b"\xef\xbb\xbf  <!DOCTYPE html><html></html>", "text/html; charset=utf-8"),
        ("p", b"<html><body>hi</body></html>", "text/html; charset=utf-8"),
        ("p.htm", b"just text", "text/html; charset=utf-8"),
        ("out.json", b"not even json", "application/json"),
        ("out", b' {"a": [1, 2]}\n', "application/json"),
        ("out", b"[1, 2", "text/plain; charset=utf-8"),
        ("mesh.obj", b"# comment\n", "model/obj"),
        ("mesh", b"o cube\nv 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", "model/obj"),
        ("table.csv", b"a,b\n1,2\n", "text/csv; charset=utf-8"),
        ("table.CSV", b"a,b\n", "text/csv; charset=utf-8"),
        ("notes", "héllo ✓\n".encode(), "text/plain; charset=utf-8"),
        ("cut", "✓✓".encode()[:-1], "text/plain; charset=utf-8"),
        ("empty", b"", "text/plain; charset=utf-8"),
        ("dir.csv/file", b"x", "text/plain; charset=utf-8"),
        ("nul", b"text\0with nul", "application/octet-stream"),
        ("bad", b"\xff\xfe\xfd", "application/octet-stream"),
        ("bad.csv", b"\x80abc", "application/octet-stream"),
        ("zeros", bytes(84), "application/octet-stream"),
    ],
)
def test_sniff(path, data, expected):
    assert sniff(path, data) == expected
