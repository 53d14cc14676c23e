"""Gzip for the site: each file worth compressing gets a `.gz` copy beside it at `pe site build`, and
`PrecompressedFiles` (Starlette's StaticFiles) sends that copy to a client that accepts gzip.

Compressing once at build time costs 0.6 s of CPU (most of it Pyodide's 9.6 MB wasm, which shrinks to
3.6 MB); compressing per request, as a middleware would, costs that on every download. Level 6, not 9:
half the time for 0.4 % more bytes (every `pe serve` with a new site key builds the site before it
answers). Files already compressed (python_stdlib.zip, wire.zip, images) gain nothing and get no copy
(docs/web.md, "Compression")."""

from __future__ import annotations

import gzip
import mimetypes
import os
from pathlib import Path

from starlette.datastructures import Headers
from starlette.responses import FileResponse, Response
from starlette.staticfiles import NotModifiedResponse, PathLike, StaticFiles
from starlette.types import Scope

MIN_BYTES = 1024  # smaller files fit in a packet or two either way
MAX_RATIO = 0.9  # a copy must save at least a tenth of the bytes
LEVEL = 6


def precompress(root: Path) -> list[Path]:
    """Write `<file>.gz` beside every file under `root` that gzip makes 10 % smaller; the copies written.
    The copies carry no name or time, so the same site gives the same bytes."""
    written = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.suffix == ".gz" or path.stat().st_size < MIN_BYTES:
            continue
        data = path.read_bytes()
        packed = gzip.compress(data, compresslevel=LEVEL, mtime=0)
        if len(packed) <= MAX_RATIO * len(data):
            target = path.with_name(path.name + ".gz")
            target.write_bytes(packed)
            written.append(target)
    return written


def accepts_gzip(headers: Headers) -> bool:
    """Whether Accept-Encoding lists gzip (or *) with a quality above 0."""
    for item in headers.get("accept-encoding", "").split(","):
        name, _, params = item.partition(";")
        if name.strip().lower() in ("gzip", "*"):
            quality = params.strip().lower()
            try:
                return not quality.startswith("q=") or float(quality[2:]) > 0
            except ValueError:
                return False
    return False


class PrecompressedFiles(StaticFiles):
    """StaticFiles that answers with `<file>.gz` (Content-Encoding: gzip, the original's media type) when
    the client accepts gzip and the copy exists; `Vary: Accept-Encoding` on both forms of such a file."""

    def file_response(
        self, full_path: PathLike, stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        packed_path = f"{os.fspath(full_path)}.gz"
        try:
            packed_stat = os.stat(packed_path)
        except OSError:
            return super().file_response(full_path, stat_result, scope, status_code)
        request = Headers(scope=scope)
        if not accepts_gzip(request):
            response = super().file_response(full_path, stat_result, scope, status_code)
            response.headers["vary"] = "Accept-Encoding"
            return response
        media_type = mimetypes.guess_type(os.fspath(full_path))[0] or "text/plain"  # as FileResponse does
        headers = {"content-encoding": "gzip", "vary": "Accept-Encoding"}
        response = FileResponse(packed_path, status_code, headers, media_type, stat_result=packed_stat)
        if self.is_not_modified(response.headers, request):
            return NotModifiedResponse(response.headers)
        return response
