"""A run's /work on the host side: input files in, changed and new files out.

The program may have left anything under /work: symlinks (to host paths, seen from here), FIFOs,
odd names. Collection never follows a symlink (every open is relative to an already opened directory,
with O_NOFOLLOW), reads regular files only, and returns paths that are valid spec paths.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from wire.errors import WireError
from wire.mime import sniff
from wire.paths import glob_matcher, normalize_path
from wire.result import FileInfo

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def write_inputs(work: Path, files: Iterable[tuple[str, bytes]], owner: int) -> None:
    """Write the (normalised, relative) input files under `work`; files and directories belong to
    `owner` (uid and gid), the host id of the container's root."""
    made: set[Path] = set()
    for path, data in files:
        target = work / path
        for directory in reversed(target.parents):
            if directory in made or len(directory.parts) <= len(work.parts):
                continue
            directory.mkdir(mode=0o755)
            os.chown(directory, owner, owner)
            made.add(directory)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchown(fd, owner, owner)
        finally:
            os.close(fd)


@dataclass
class Outputs:
    files: list[FileInfo] = field(default_factory=list)
    data: dict[str, bytes] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what was left out, and why


def _walk(dir_fd: int, prefix: str, skipped: list[str]) -> Iterator[tuple[str, int, str]]:
    """(path, parent directory fd, name) of each regular file below `dir_fd`, sorted by path."""
    with os.scandir(dir_fd) as scan:
        entries = sorted(scan, key=lambda e: e.name)
    for entry in entries:
        path = prefix + entry.name
        if entry.is_dir(follow_symlinks=False):
            fd = os.open(entry.name, _DIR_FLAGS, dir_fd=dir_fd)
            try:
                yield from _walk(fd, path + "/", skipped)
            finally:
                os.close(fd)
        elif entry.is_file(follow_symlinks=False):
            yield path, dir_fd, entry.name
        else:
            skipped.append(path)


def collect_outputs(
    work: Path, inputs: dict[str, bytes], *, total_bytes: int, max_files: int, globs: Sequence[str] = ()
) -> Outputs:
    """The files under `work` that are new or differ from `inputs` and match one of `globs` (any
    file when there are none), in path order, with at most `total_bytes` of content in all (a file
    cut short, and every later file, is flagged truncated) and at most `max_files` files."""
    out = Outputs()
    skipped: list[str] = []
    wanted = glob_matcher(globs)
    room = total_bytes
    extra = 0
    root = os.open(work, _DIR_FLAGS)
    try:
        for path, dir_fd, name in _walk(root, "", skipped):
            try:
                normalize_path(path)
            except WireError:
                skipped.append(path)
                continue
            if not wanted(path):
                continue
            fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
            try:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode):
                    continue
                original = inputs.get(path)
                if (
                    original is not None
                    and info.st_size == len(original)
                    and _read(fd, info.st_size) == original
                ):
                    continue
                if len(out.files) == max_files:
                    extra += 1
                    continue
                data = _read(fd, min(info.st_size, room))
            finally:
                os.close(fd)
            room -= len(data)
            truncated = len(data) < info.st_size
            out.files.append(FileInfo(path=path, size=len(data), mime=sniff(path, data), truncated=truncated))
            out.data[path] = data
    finally:
        os.close(root)
    cut = [f.path for f in out.files if f.truncated]
    if cut:
        out.notes.append(f"output files are capped at {_size(total_bytes)} in all; cut short: {_some(cut)}")
    if extra:
        out.notes.append(f"{extra} more output files left out (at most {max_files} are returned)")
    if skipped:
        out.notes.append(
            f"entries under /work that are not regular files or valid paths left out: {_some(skipped)}"
        )
    return out


def _some(paths: list[str]) -> str:
    shown = ", ".join(repr(p) for p in paths[:5])
    return shown + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")


def _read(fd: int, size: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while size > 0:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n} bytes"
