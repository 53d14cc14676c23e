"""End-to-end image builds with the real tools (busybox: ~1 s; python3: mmdebstrap, ~20 s)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
from pathlib import Path

import pytest
from catalog_helpers import mounted, needs_root, run_example

from catalog.build import BuildError, build_all, build_image, input_key
from catalog.entry import CatalogError, load_catalog
from catalog.store import ImageMeta, ImageStore

pytestmark = pytest.mark.skipif(shutil.which("mkfs.erofs") is None, reason="needs erofs-utils")
CATALOG = load_catalog()


@pytest.fixture(scope="module")
def busybox(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImageStore, ImageMeta, list[str]]:
    store = ImageStore(tmp_path_factory.mktemp("store"))
    lines: list[str] = []
    meta = build_image(CATALOG["busybox"], store, progress=lines.append)
    return store, meta, lines


def test_busybox_build_reports_phases_and_records_them(
    busybox: tuple[ImageStore, ImageMeta, list[str]],
) -> None:
    store, meta, lines = busybox
    assert meta.digest.startswith("sha256:") and meta.size == store.image_file(meta.digest).stat().st_size
    assert list(meta.phases) == ["rootfs", "normalise", "mkfs", "digest"]
    assert meta.packages.keys() == {"busybox-static"}
    for phase in meta.phases:
        assert any(line.startswith(f"busybox: {phase} done in ") for line in lines)
    assert lines[-1].startswith(f"busybox: built {meta.digest}")
    assert store.current("busybox") == meta
    assert not list(store.scratch().iterdir()), "the build directory is removed"


@needs_root
def test_busybox_image_mounts_read_only_and_runs_its_examples(
    busybox: tuple[ImageStore, ImageMeta, list[str]], tmp_path: Path
) -> None:
    store, meta, _ = busybox
    with mounted(store.image_file(meta.digest), tmp_path / "mnt") as root:
        assert (root / "bin/busybox").is_file() and os.readlink(root / "bin/sh") == "/bin/busybox"
        for name, mode in {"work": 0o1777, "tmp": 0o1777, "proc": 0o555, "dev": 0o755, "sys": 0o555}.items():
            info = os.lstat(root / name)
            assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == mode, name
            if name != "work":  # the tmpfs on it
                assert not list((root / name).iterdir())
        assert {path.name for path in (root / "usr/share/doc/busybox-static").iterdir()} == {"copyright"}
        assert os.lstat(root / "bin/busybox").st_uid == 0
        assert meta.file_count == sum(len(dirs) + len(files) for _, dirs, files in os.walk(root)) > 269
        with pytest.raises(OSError, match="Read-only"):
            (root / "new").write_text("x")
        for example in CATALOG["busybox"].examples:
            result = run_example(root, CATALOG["busybox"], example)
            assert (result.returncode, result.stdout) == (0, example["stdout"]), (
                example["name"],
                result.stderr,
            )


def test_rebuild_is_skipped_when_the_input_key_is_unchanged(
    busybox: tuple[ImageStore, ImageMeta, list[str]],
) -> None:
    store, meta, _ = busybox
    lines: list[str] = []
    assert build_all(["busybox"], store, progress=lines.append) == [meta]
    assert lines == [f"busybox: up to date ({meta.digest}, {meta.size / 1e6:.1f} MB)"]


def test_forced_rebuild_gives_the_same_bytes(busybox: tuple[ImageStore, ImageMeta, list[str]]) -> None:
    store, meta, _ = busybox
    before = store.image_file(meta.digest).read_bytes()
    again = build_image(CATALOG["busybox"], store, force=True, progress=lambda line: None)
    assert again.digest == meta.digest and again.built_at > meta.built_at
    assert store.image_file(again.digest).read_bytes() == before


def test_input_key_is_canonical_and_covers_the_source() -> None:
    source = {"kind": "debian", "suite": "bookworm", "variant": "minbase", "packages": ["a"]}
    reordered = dict(reversed(source.items()))
    assert input_key(source, {}) == input_key(reordered, {})
    assert input_key(source, {}) != input_key({**source, "packages": ["a", "b"]}, {})
    assert input_key(source, {}) != input_key(source, {"deb": {"version": "2"}})


def test_unknown_ids_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="unknown image id 'nope'"):
        build_all(["nope"], ImageStore(tmp_path))


def test_a_failing_command_is_named_with_its_stderr(tmp_path: Path) -> None:
    entry = dataclasses.replace(
        CATALOG["python3"], source=CATALOG["python3"].source | {"suite": "no-such-suite"}
    )
    with pytest.raises(BuildError, match=r"(?s)command failed \(exit \d+\): mmdebstrap .*no-such-suite.*\n"):
        build_image(entry, ImageStore(tmp_path), progress=lambda line: None)
    assert not list((tmp_path / "tmp").iterdir())


@pytest.mark.slow
@needs_root
def test_python3_builds_and_runs_its_examples_and_post_install_commands_run_chrooted(tmp_path: Path) -> None:
    """One mmdebstrap run for both (~15 s): the python3 entry, plus two post-install commands."""
    commands = [
        'echo "from the hook in $(cut -c1-2 /etc/debian_version)" > /pe-hook',
        "dpkg --purge --force-remove-essential diffutils",
    ]
    entry = dataclasses.replace(
        CATALOG["python3"], source={**CATALOG["python3"].source, "post_install": commands}
    )
    assert input_key(entry.source, {}) != input_key(CATALOG["python3"].source, {})
    store = ImageStore(tmp_path / "store")
    meta = build_image(entry, store, progress=lambda line: None)
    assert "python3" in meta.packages and meta.size < 80e6 and meta.file_count > 3000
    assert "diffutils" not in meta.packages and "coreutils" in meta.packages, "listed after the hooks"
    with mounted(store.image_file(meta.digest), tmp_path / "mnt") as root:
        assert (root / "pe-hook").read_text() == "from the hook in 12\n"
        assert not (root / "usr/bin/diff").exists() and (root / "usr/bin/ls").exists()
        assert not (root / "usr/bin/apt").exists() and not list((root / "var/log").iterdir())
        assert not (root / "etc/resolv.conf").exists() and not list((root / "usr/share/man").iterdir())
        for example in CATALOG["python3"].examples:
            result = run_example(root, CATALOG["python3"], example)
            assert (result.returncode, result.stdout) == (0, example["stdout"]), (
                example["name"],
                result.stderr,
            )
        # .py files keep their packaged mtimes, so the .pyc files next to them stay valid.
        verbose = run_example(
            root, CATALOG["python3"], {"argv": ["python3", "-v", "-c", "import json"], "files": {}}
        )
        assert "code object from '/usr/lib/python3.11/json/__pycache__" in verbose.stderr
        assert "stale" not in verbose.stderr


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("PE_SLOW_TESTS"), reason="two mmdebstrap runs (~45 s): set PE_SLOW_TESTS=1"
)
def test_python3_rebuild_is_byte_identical(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    first = build_image(CATALOG["python3"], store, progress=lambda line: None)
    second = build_image(CATALOG["python3"], store, force=True, progress=lambda line: None)
    assert second.digest == first.digest
