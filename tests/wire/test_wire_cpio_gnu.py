"""Interoperability with GNU cpio, both ways."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from wire.cpio import Entry, dir_entry, file_entry, iter_entries, read_archive, symlink_entry, write_archive
from wire.result import pack_output, unpack_output

pytestmark = pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio is not installed")

BINARY = bytes(range(256)) * 9 + b"\0\xff"


def make_tree(root: Path) -> None:
    (root / "dir/sub/deeper").mkdir(parents=True)
    (root / "dir/sub/deeper/note.txt").write_text("nested\n")
    (root / "bin.dat").write_bytes(BINARY)
    (root / "empty").write_bytes(b"")
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "run.sh").chmod(0o755)
    (root / "private").write_text("secret")
    (root / "private").chmod(0o600)
    (root / "ünïcødé ✓").mkdir()
    (root / "ünïcødé ✓/日本語.txt").write_text("こんにちは")
    (root / "link").symlink_to("dir/sub/deeper/note.txt")
    (root / "dangling").symlink_to("../outside/nowhere")


def tree(root: Path) -> dict[str, tuple[int, bytes]]:
    """path -> (mode, content or link target) for everything under root."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            data = os.readlink(path).encode()
        elif stat.S_ISREG(st.st_mode):
            data = path.read_bytes()
        else:
            data = b""
        out[path.relative_to(root).as_posix()] = (st.st_mode, data)
    return out


def cpio(args: list[str], cwd: Path, data: bytes) -> bytes:
    """GNU cpio with umask 0, so that extracted modes are exactly the archived ones."""
    done = subprocess.run(
        ["sh", "-c", 'umask 0 && exec cpio "$@"', "cpio", *args],
        cwd=cwd,
        input=data,
        capture_output=True,
        check=True,
        timeout=30,
    )
    return done.stdout


def test_we_read_gnu_archives(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    names = subprocess.run(["find", "."], cwd=src, capture_output=True, check=True).stdout
    archive = cpio(["-o", "-H", "newc", "--quiet"], src, names)
    assert archive.startswith(b"070701") and len(archive) % 512 == 0

    entries = read_archive(archive)
    assert {e.name: (e.mode, e.data) for e in entries} == tree(src)
    assert len(entries) == len(tree(src))  # "." was skipped, nothing came twice

    assert list(iter_entries(archive[i : i + 7] for i in range(0, len(archive), 7))) == entries


SOURCE = [
    dir_entry("dir"),
    dir_entry("dir/sub", 0o700),
    file_entry("dir/sub/note.txt", b"nested\n", 0o640),
    file_entry("bin.dat", BINARY),
    file_entry("empty", b""),
    file_entry("run.sh", b"#!/bin/sh\necho hi\n", 0o755),
    Entry("dated", stat.S_IFREG | 0o644, b"old", mtime=1_000_000_000),
    dir_entry("ünïcødé ✓"),
    file_entry("ünïcødé ✓/日本語.txt", "こんにちは".encode()),
    symlink_entry("link", "dir/sub/note.txt"),
    symlink_entry("dangling", "../outside/nowhere"),
    file_entry("no/parent/dirs.txt", b"cpio -d makes them"),
]


def test_gnu_reads_our_archives(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    listing = cpio(["-idmv", "--no-absolute-filenames", "--quiet"], out, write_archive(SOURCE))
    assert listing == b""  # -v lists on stderr; nothing on stdout
    got = tree(out)
    for e in SOURCE:
        assert got[e.name] == (e.mode, e.data), e.name
    assert (out / "dated").stat().st_mtime == 1_000_000_000
    assert set(got) - {e.name for e in SOURCE} == {"no", "no/parent"}


def test_gnu_lists_our_archives(tmp_path):
    listing = cpio(["-it", "--quiet"], tmp_path, write_archive(SOURCE)).decode().split("\n")
    assert listing[:-1] == [e.name for e in SOURCE]


def test_gnu_unpacks_result_archives(tmp_path, sample_output):
    """`curl … | cpio -idv` gives result.json, stdout, stderr and files/…; repacking that with
    `find . | cpio -o` gives an archive that unpack_output reads the same."""
    cpio(["-id", "--no-absolute-filenames", "--quiet"], tmp_path, pack_output(sample_output))
    assert json.loads((tmp_path / "result.json").read_text()) == sample_output.result.to_json()
    assert (tmp_path / "stdout").read_bytes() == sample_output.stdout
    assert (tmp_path / "stderr").read_bytes() == sample_output.stderr
    for path, data in sample_output.files.items():
        assert (tmp_path / "files" / path).read_bytes() == data
    names = subprocess.run(["find", "."], cwd=tmp_path, capture_output=True, check=True).stdout
    assert unpack_output(cpio(["-o", "-H", "newc", "--quiet"], tmp_path, names)) == sample_output
