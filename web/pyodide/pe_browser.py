"""What the playground's Pyodide worker (web/pyodide/worker.js) calls: `wire`'s result parser and erofs
reader, with answers in the shapes the JavaScript side wants (JSON text and bytes).

Shipped to the browser in `assets/pyodide/wire.zip` beside the `wire` package; plain CPython imports it
too (the bytes it is given are then `bytes`, not Pyodide's JsProxy)."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable

from wire.erofs import ErofsError, ErofsImage, Inode
from wire.mime import sniff
from wire.result import unpack_output


def _bytes(data) -> bytes:
    """Bytes from a JavaScript Uint8Array (a JsProxy in Pyodide) or from anything bytes-like."""
    to_bytes = getattr(data, "to_bytes", None)
    return to_bytes() if to_bytes is not None else bytes(data)


def parse_result(data) -> tuple[str, bytes, bytes, list[bytes]]:
    """A run answer in its cpio form → (result.json as text, stdout, stderr, each file's bytes in the
    order of result.json's `files`)."""
    out = unpack_output(_bytes(data))
    files = [out.files[info.path] for info in out.result.files]
    return json.dumps(out.result.to_json()), out.stdout, out.stderr, files


def _kind(inode: Inode) -> str:
    if inode.is_dir:
        return "dir"
    if inode.is_symlink:
        return "link"
    return "file" if inode.is_file else "other"


class ImageFiles:
    """An image's files through `read(offset, length)` (the worker's HTTP Range reads)."""

    def __init__(self, read: Callable) -> None:
        self.image = ErofsImage(lambda offset, length: _bytes(read(offset, length)))

    def list(self, path: str) -> str:
        """JSON: the entries of directory `path`, directories first, each {name, kind, size, mode, target}.
        A symlink to a directory (`/bin` → `usr/bin`) is listed as a "dir" with its target, so that it
        opens like one; other symlinks are "link"s."""
        entries = []
        for entry in self.image.scandir(path):
            inode = self.image.inode(entry.nid)
            item = {
                "name": entry.name,
                "kind": _kind(inode),
                "size": inode.size,
                "mode": stat.filemode(inode.mode),
            }
            if inode.is_symlink:
                full_path = f"{path.rstrip('/')}/{entry.name}"
                item["target"] = self.image.readlink(full_path)
                if self._is_dir(full_path):
                    item["kind"] = "dir"
            entries.append(item)
        entries.sort(key=lambda item: (item["kind"] != "dir", item["name"]))
        return json.dumps(entries)

    def _is_dir(self, path: str) -> bool:
        """Whether `path`, symlinks followed, is a directory (False when the link is dangling or loops)."""
        try:
            return self.image.stat(path).is_dir
        except ErofsError:
            return False

    def read(self, path: str, limit: int) -> tuple[str, bytes]:
        """(JSON {path, size, mime, truncated}, the file's first `limit` bytes); symlinks are followed."""
        inode = self.image.stat(path)
        data = self.image.read_file(path, 0, limit)
        info = {
            "path": path,
            "size": inode.size,
            "mime": sniff(path, data),
            "truncated": inode.size > len(data),
        }
        return json.dumps(info), data
