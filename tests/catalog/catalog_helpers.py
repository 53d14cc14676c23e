"""Helpers for the catalogue suites: mount a built image read-only and run an entry's examples in it."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from catalog.entry import CatalogEntry
from catalog.options import expand_command, option_values

PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting an erofs image needs root"
)


@contextlib.contextmanager
def mounted(image: Path, mountpoint: Path) -> Iterator[Path]:
    """The image mounted read-only with a tmpfs on /work, as the sandbox would; unmounted afterwards."""
    mountpoint.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "erofs", "-o", "loop,ro", str(image), str(mountpoint)], check=True)
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=16m", "work", str(mountpoint / "work")], check=True
        )
        try:
            yield mountpoint
        finally:
            subprocess.run(["umount", str(mountpoint / "work")], check=True)
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def example_argv(entry: CatalogEntry, example: dict) -> list[str]:
    """The example's argv, or the entry's command template filled from its options."""
    if "argv" in example:
        return example["argv"]
    return list(expand_command(entry, option_values(entry, example.get("options", {}))))


def run_example(root: Path, entry: CatalogEntry, example: dict) -> subprocess.CompletedProcess[str]:
    """Run one example chrooted into a mounted image, with its files in /work."""
    work = root / "work"
    for item in work.iterdir():
        shutil.rmtree(item) if item.is_dir() else item.unlink()
    for name, text in example["files"].items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)

    def enter() -> None:
        os.chroot(root)
        os.chdir("/work")

    return subprocess.run(
        example_argv(entry, example),
        input=example.get("stdin", ""),
        capture_output=True,
        text=True,
        env={"PATH": PATH, "HOME": "/tmp", "LANG": "C.UTF-8"},
        preexec_fn=enter,
        timeout=30,
        check=False,
    )
