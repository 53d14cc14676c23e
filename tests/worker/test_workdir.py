"""Input files in, output files out of a run's /work (no root needed: the owner is this user)."""

from __future__ import annotations

import os
from pathlib import Path

from worker.workdir import collect_outputs, write_inputs

ME = os.getuid()


def collect(work: Path, inputs: dict[str, bytes], total: int = 1 << 20, max_files: int = 100):
    return collect_outputs(work, inputs, total_bytes=total, max_files=max_files)


def test_write_inputs_makes_nested_files_owned_by_the_owner(tmp_path: Path) -> None:
    files = [("a/b/c.txt", b"deep"), ("a/top", b""), ("z.bin", bytes(range(256)))]
    write_inputs(tmp_path, files, ME)
    assert (tmp_path / "a/b/c.txt").read_bytes() == b"deep"
    assert (tmp_path / "z.bin").read_bytes() == bytes(range(256))
    for path in ("a", "a/b", "a/b/c.txt", "a/top"):
        assert (tmp_path / path).stat().st_uid == ME
    assert oct((tmp_path / "a/b/c.txt").stat().st_mode & 0o777) == "0o644"


def test_only_new_and_changed_files_come_back(tmp_path: Path) -> None:
    inputs = {"same.txt": b"same", "changed.txt": b"before", "gone.txt": b"x", "sub/same": b"s"}
    write_inputs(tmp_path, inputs.items(), ME)
    (tmp_path / "changed.txt").write_bytes(b"after!")
    (tmp_path / "gone.txt").unlink()
    (tmp_path / "new/deeper").mkdir(parents=True)
    (tmp_path / "new/deeper/out.png").write_bytes(b"\x89PNG\r\n\x1a\nrest")
    (tmp_path / "empty").mkdir()
    out = collect(tmp_path, inputs)
    assert [f.path for f in out.files] == ["changed.txt", "new/deeper/out.png"]
    assert out.data == {"changed.txt": b"after!", "new/deeper/out.png": b"\x89PNG\r\n\x1a\nrest"}
    assert [f.mime for f in out.files] == ["text/plain; charset=utf-8", "image/png"]
    assert out.notes == []


def test_symlinks_and_special_files_are_never_followed(tmp_path: Path) -> None:
    secret = tmp_path / "host-secret"
    secret.write_text("host only")
    work = tmp_path / "work"
    work.mkdir()
    (work / "link").symlink_to(secret)
    (work / "dirlink").symlink_to(tmp_path)
    os.mkfifo(work / "fifo")
    (work / "real.txt").write_text("ok")
    out = collect(work, {})
    assert out.data == {"real.txt": b"ok"}
    assert len(out.notes) == 1 and "'dirlink', 'fifo', 'link'" in out.notes[0]


def test_names_that_are_not_valid_paths_are_left_out(tmp_path: Path) -> None:
    (tmp_path / os.fsdecode(b"bad-\xff-name")).write_text("x")
    (tmp_path / "good").write_text("y")
    out = collect(tmp_path, {})
    assert list(out.data) == ["good"] and "not regular files or valid paths" in out.notes[0]


def test_total_cap_truncates_and_flags(tmp_path: Path) -> None:
    for name, size in (("a", 600), ("b", 600), ("c", 10)):
        (tmp_path / name).write_bytes(b"x" * size)
    out = collect(tmp_path, {}, total=1000)
    assert [(f.path, f.size, f.truncated) for f in out.files] == [
        ("a", 600, False),
        ("b", 400, True),
        ("c", 0, True),
    ]
    assert out.data["b"] == b"x" * 400 and out.data["c"] == b""
    assert "capped at 1000 bytes" in out.notes[0] and "'b', 'c'" in out.notes[0]


def test_file_count_cap(tmp_path: Path) -> None:
    for i in range(12):
        (tmp_path / f"f{i:02}").write_text(str(i))
    out = collect(tmp_path, {}, max_files=10)
    assert [f.path for f in out.files] == [f"f{i:02}" for i in range(10)]
    assert out.notes == ["2 more output files left out (at most 10 are returned)"]


def test_globs_choose_the_output_files(tmp_path: Path) -> None:
    for path in ("out.svg", "out.png", "fit.log", "plots/a.svg", "plots/deep/b.svg", "main.c"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(path)
    out = collect_outputs(tmp_path, {}, total_bytes=1 << 20, max_files=2, globs=("out.*", "plots/**/*.svg"))
    assert [f.path for f in out.files] == ["out.png", "out.svg"], "the file cap counts matching files only"
    assert out.notes == ["2 more output files left out (at most 2 are returned)"]
    every = collect_outputs(tmp_path, {}, total_bytes=1 << 20, max_files=10, globs=("*.c", "plots/**/*.svg"))
    assert [f.path for f in every.files] == ["main.c", "plots/a.svg", "plots/deep/b.svg"]
