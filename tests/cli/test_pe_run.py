"""`pe run` against a real edge: output as the program wrote it, files on disk, the program's status."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

from pe.child import ServeProcess


def pe_run(edge: ServeProcess, cwd: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pe.cli", "run", "--edge", edge.url, *args]
    return subprocess.run(command, cwd=cwd, input=stdin, capture_output=True, timeout=60)


def test_stdout_stderr_files_and_exit_code(edge: ServeProcess, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "in.txt").write_text("héllo wörld\n")
    script = "cat src/in.txt; echo to-stderr >&2; mkdir -p out; printf '\\001\\002' > out/b.bin; exit 7"
    done = pe_run(
        edge,
        tmp_path,
        "busybox",
        "-f",
        "src/in.txt",
        "--env",
        f"RUN={uuid.uuid4().hex}",
        "-o",
        "results",
        "--",
        "sh",
        "-c",
        script,
    )
    assert done.returncode == 7
    assert done.stdout == "héllo wörld\n".encode()
    assert done.stderr.startswith(b"to-stderr\n")
    assert (tmp_path / "results" / "out" / "b.bin").read_bytes() == b"\x01\x02"


def test_stdin_from_a_file_and_named_input(edge: ServeProcess, tmp_path: Path) -> None:
    (tmp_path / "local.py").write_text("import sys\nprint(sys.stdin.read().upper(), end='')\n")
    (tmp_path / "input.txt").write_text(f"abc {uuid.uuid4().hex}\n")
    done = pe_run(
        edge,
        tmp_path,
        "python3",
        "-f",
        "main.py=local.py",
        "--stdin",
        "input.txt",
        "--",
        "python3",
        "main.py",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode() == (tmp_path / "input.txt").read_text().upper()


def test_signal_and_timeout_statuses(edge: ServeProcess, tmp_path: Path) -> None:
    killed = pe_run(edge, tmp_path, "busybox", "--", "sh", "-c", f"echo {uuid.uuid4().hex}; kill -TERM $$")
    assert killed.returncode == 128 + 15
    slow = pe_run(
        edge,
        tmp_path,
        "busybox",
        "--limit",
        "wall_ms=500",
        "--",
        "sh",
        "-c",
        f"echo {uuid.uuid4().hex}; sleep 5",
    )
    assert slow.returncode == 124
    assert b"timeout" in slow.stderr


def test_service_errors_exit_125_with_the_message(edge: ServeProcess, tmp_path: Path) -> None:
    done = pe_run(edge, tmp_path, "no-such-image", "--", "true")
    assert done.returncode == 125
    assert b"unknown_image" in done.stderr
