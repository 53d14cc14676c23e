"""The image file browser's Python side (web/pyodide/pe_browser.py) on a real erofs made by
mkfs.erofs: how it lists folders, symlinks to folders and broken symlinks (the browser shows what
this returns; here in CPython, in the page in Pyodide)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from web.pyodide.pe_browser import ImageFiles

pytestmark = pytest.mark.skipif(shutil.which("mkfs.erofs") is None, reason="mkfs.erofs is not installed")


@pytest.fixture
def files(tmp_path: Path) -> ImageFiles:
    tree = tmp_path / "tree"
    (tree / "usr" / "bin").mkdir(parents=True)
    (tree / "usr" / "bin" / "hello").write_text("#!/bin/sh\necho hello\n")
    os.symlink("usr/bin", tree / "bin")  # the usrmerge layout of Debian images
    os.symlink("/usr/bin/hello", tree / "hi")
    os.symlink("nowhere", tree / "dangling")
    os.symlink("loop", tree / "loop")
    image = tmp_path / "image.erofs"
    subprocess.run(["mkfs.erofs", str(image), str(tree)], check=True, capture_output=True)
    data = image.read_bytes()
    return ImageFiles(lambda offset, length: data[offset : offset + length])


def test_a_symlink_to_a_folder_is_listed_as_a_folder_that_opens(files: ImageFiles) -> None:
    entries = {entry["name"]: entry for entry in json.loads(files.list("/"))}
    assert (entries["bin"]["kind"], entries["bin"]["target"]) == ("dir", "usr/bin")
    assert [entry["name"] for entry in json.loads(files.list("/bin"))] == ["hello"]
    info, data = files.read("/bin/hello", 1000)
    assert data == b"#!/bin/sh\necho hello\n" and json.loads(info)["path"] == "/bin/hello"


def test_other_symlinks_stay_links_with_their_targets(files: ImageFiles) -> None:
    entries = {entry["name"]: entry for entry in json.loads(files.list("/"))}
    assert (entries["hi"]["kind"], entries["hi"]["target"]) == ("link", "/usr/bin/hello")
    assert (entries["dangling"]["kind"], entries["dangling"]["target"]) == ("link", "nowhere")
    assert (entries["loop"]["kind"], entries["loop"]["target"]) == ("link", "loop")
    # Folders first, then the rest by name.
    names = [entry["name"] for entry in json.loads(files.list("/"))]
    assert names == ["bin", "usr", "dangling", "hi", "loop"]
