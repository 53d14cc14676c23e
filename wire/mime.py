"""Guess an output file's media type, so the browser can pick a viewer.

Magic bytes decide first, then text forms; text means valid UTF-8 without NUL bytes (an incomplete
character at the very end is allowed, as output may be cut at a byte limit).
"""

from __future__ import annotations

import codecs
import json
import re
import struct

TEXT = "text/plain; charset=utf-8"
BINARY = "application/octet-stream"

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"%PDF-", "application/pdf"),
    (b"\x1f\x8b", "application/gzip"),
    (b"PK\x03\x04", "application/zip"),
    (b"PK\x05\x06", "application/zip"),  # an empty zip
    (b"\x7fELF", "application/x-executable"),
    (b"glTF", "model/gltf-binary"),
    (b"ply\n", "model/ply"),  # the header is text; the body may be binary
    (b"ply\r\n", "model/ply"),
)
_BY_EXTENSION = {
    ".svg": "image/svg+xml",
    ".html": "text/html; charset=utf-8",
    ".htm": "text/html; charset=utf-8",
    ".json": "application/json",
    ".stl": "model/stl",
    ".obj": "model/obj",
    ".ply": "model/ply",
    ".csv": "text/csv; charset=utf-8",
}
_SVG = re.compile(r"(<\?xml[^>]*>\s*)?(<!--.*?-->\s*|<!DOCTYPE[^>]*>\s*)*<svg[\s>]", re.S | re.I)
_OBJ_VERTEX = re.compile(r"^v\s", re.M)
_OBJ_FACE = re.compile(r"^f\s", re.M)
_HEAD = 4096  # text forms are recognised from the start of the file


def _binary_stl(path: str, data: bytes) -> bool:
    """An 80-byte header, a little-endian triangle count, 50 bytes per triangle."""
    if len(data) < 84:
        return False
    (count,) = struct.unpack_from("<I", data, 80)
    return len(data) == 84 + 50 * count and (count > 0 or path.lower().endswith(".stl"))


def _text(data: bytes) -> str | None:
    if b"\0" in data:
        return None
    try:
        return codecs.getincrementaldecoder("utf-8")().decode(data, final=False)
    except UnicodeDecodeError:
        return None


def _is_json(text: str) -> bool:
    if not text.lstrip().startswith(("{", "[")):
        return False
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


def sniff(path: str, data: bytes) -> str:
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if _binary_stl(path, data):
        return "model/stl"
    text = _text(data)
    if text is None:
        return BINARY
    head = text[:_HEAD].lstrip("\ufeff \t\r\n")
    extension = "." + path.rpartition(".")[2].lower() if "." in path.rpartition("/")[2] else ""
    if _SVG.match(head):
        return "image/svg+xml"
    if head[:15].lower().startswith(("<!doctype html", "<html")):
        return "text/html; charset=utf-8"
    if head.startswith("solid") and ("facet" in head or "endsolid" in head):
        return "model/stl"
    if extension in _BY_EXTENSION:
        return _BY_EXTENSION[extension]
    if _is_json(text):
        return "application/json"
    if _OBJ_VERTEX.search(head) and _OBJ_FACE.search(text):
        return "model/obj"
    return TEXT
