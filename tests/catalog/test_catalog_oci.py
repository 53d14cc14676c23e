"""OCI sources: images made with umoci and skopeo built through the real pipeline, and hostile layers."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
from catalog_helpers import mounted, needs_root

from catalog import oci
from catalog.build import BuildError, build_image
from catalog.entry import CatalogEntry, CatalogError, load_entry
from catalog.store import ImageStore

needs_tools = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("umoci", "skopeo", "mkfs.erofs")) or os.geteuid() != 0,
    reason="needs root, umoci, skopeo and erofs-utils",
)
OLD = 1_600_000_000  # the fixture's file times, older than any build, so the image keeps them
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"


# ---- images made with the real tools -----------------------------------------------------------------


def _run(*command: str | Path) -> None:
    subprocess.run([str(part) for part in command], check=True, capture_output=True)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`layout` (tag v1, four layers, built with umoci) and the same image as `image.oci.tar` and
    `image.docker.tar` (skopeo). Layer 1 is a tree; 2 replaces a hard-linked file; 3 deletes a file
    (whiteout); 4 makes /opt/data opaque with new contents."""
    root = tmp_path_factory.mktemp("oci")
    base = root / "base"
    for folder in ("etc/app", "usr/bin", "bin", "opt/data/sub", "srv"):
        (base / folder).mkdir(parents=True)
    (base / "etc/replaced").write_text("one\n")
    os.link(base / "etc/replaced", base / "etc/replaced-link")
    (base / "etc/deleted").write_text("gone\n")
    (base / "etc/app/settings").write_text("x = 1\n")
    (base / "usr/bin/tool").write_text("#!/bin/sh\necho tool\n")
    os.link(base / "usr/bin/tool", base / "usr/bin/tool-again")
    (base / "usr/bin/tool").chmod(0o755)
    (base / "usr/bin/suid").write_text("")
    (base / "usr/bin/suid").chmod(0o4755)
    (base / "bin/tool").symlink_to("../usr/bin/tool")
    (base / "bin/absolute").symlink_to("/usr/bin/tool")
    (base / "opt/data/old.txt").write_text("old\n")
    (base / "opt/data/sub/deep.txt").write_text("deep\n")
    (base / "opt/keep.txt").write_text("keep\n")
    os.mkfifo(base / "srv/fifo")
    os.mknod(base / "srv/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    (base / "etc/app").chmod(0o750)
    for folder, dirs, files in os.walk(base, topdown=False):
        for name in (*files, *dirs):
            os.utime(os.path.join(folder, name), (OLD, OLD), follow_symlinks=False)
    (root / "two").write_text("two\n")
    (root / "fresh").mkdir()
    (root / "fresh/fresh.txt").write_text("fresh\n")

    image = f"{root / 'layout'}:v1"
    _run("umoci", "init", "--layout", root / "layout")
    _run("umoci", "new", "--image", image)
    _run("umoci", "insert", "--image", image, base, "/")
    _run("umoci", "insert", "--image", image, root / "two", "/etc/replaced")
    _run("umoci", "insert", "--image", image, "--whiteout", "/etc/deleted")
    _run("umoci", "insert", "--image", image, "--opaque", root / "fresh", "/opt/data")
    _run("skopeo", "copy", "--quiet", f"oci:{image}", f"oci-archive:{root / 'image.oci.tar'}:v1")
    _run(
        "skopeo",
        "copy",
        "--quiet",
        f"oci:{image}",
        f"docker-archive:{root / 'image.docker.tar'}:example/app:v1",
    )
    return root


def _entry(directory: Path, image_id: str, source: str) -> CatalogEntry:
    path = directory / f"{image_id}.toml"
    path.write_text(f'id = "{image_id}"\ntitle = "T"\ndescription = "D"\n[source]\nkind = "oci"\n{source}\n')
    return load_entry(path)


@needs_tools
@needs_root
@pytest.mark.parametrize(
    ("image_id", "source"),
    [
        ("from-layout", 'layout = "layout"\nref = "v1"'),
        ("from-oci-archive", 'archive = "image.oci.tar"'),
        ("from-docker-archive", 'archive = "image.docker.tar"\nref = "example/app:v1"'),
    ],
)
def test_image_is_built_with_its_layers_applied(
    images: Path, tmp_path: Path, image_id: str, source: str
) -> None:
    entry = _entry(images, image_id, source)
    store = ImageStore(tmp_path / "store")
    lines: list[str] = []
    meta = build_image(entry, store, progress=lines.append)
    assert f"{image_id}:   layer 4/4" in "\n".join(lines)
    assert any(line.endswith("srv/fifo: FIFO skipped") and "warning" in line for line in lines)
    assert any(line.endswith("srv/null: character device skipped") for line in lines)
    assert meta.source == entry.source and meta.packages == {}

    with mounted(store.image_file(meta.digest), tmp_path / "mnt") as root:
        assert not (root / "etc/deleted").exists()
        assert (root / "etc/replaced").read_text() == "two\n"
        assert (root / "etc/replaced-link").read_text() == "one\n", (
            "the replaced file's old link keeps its data"
        )
        assert sorted(p.name for p in (root / "opt/data").iterdir()) == ["fresh.txt"]
        assert (root / "opt/keep.txt").read_text() == "keep\n"
        tool, again = os.lstat(root / "usr/bin/tool"), os.lstat(root / "usr/bin/tool-again")
        assert (tool.st_ino, tool.st_nlink) == (again.st_ino, 2)
        assert stat.S_IMODE(tool.st_mode) == 0o755 and tool.st_mtime == OLD
        assert stat.S_IMODE(os.lstat(root / "usr/bin/suid").st_mode) == 0o4755
        assert os.readlink(root / "bin/tool") == "../usr/bin/tool"
        assert os.readlink(root / "bin/absolute") == "/usr/bin/tool"
        app = os.lstat(root / "etc/app")
        assert stat.S_IMODE(app.st_mode) == 0o750 and app.st_mtime == OLD
        assert sorted(p.name for p in (root / "srv").iterdir()) == []
        assert (root / "tmp").is_dir() and (root / "work").is_dir()


@needs_tools
def test_a_changed_image_is_rebuilt(images: Path, tmp_path: Path) -> None:
    shutil.copytree(images / "layout", tmp_path / "layout")
    entry = _entry(tmp_path, "changing", 'layout = "layout"\nref = "v1"')
    store = ImageStore(tmp_path / "store")
    first = build_image(entry, store, progress=lambda line: None)
    lines: list[str] = []
    assert build_image(entry, store, progress=lines.append) == first
    assert lines[0].startswith("changing: up to date")
    (tmp_path / "new").write_text("new\n")
    _run("umoci", "insert", "--image", f"{tmp_path / 'layout'}:v1", tmp_path / "new", "/etc/new")
    second = build_image(entry, store, progress=lambda line: None)
    assert second.input_key != first.input_key and second.digest != first.digest
    assert store.current("changing") == second


def test_oci_source_entries_are_validated(tmp_path: Path) -> None:
    assert _entry(tmp_path, "a", 'layout = "img"\nref = "v1"').source == {
        "kind": "oci",
        "layout": "img",
        "ref": "v1",
    }
    assert _entry(tmp_path, "b", 'archive = "/abs/image.tar"').source == {
        "kind": "oci",
        "archive": "/abs/image.tar",
    }
    for body, key, message in [
        ('layout = "x"\narchive = "y"', "source.layout", "exactly one of"),
        ('ref = "v1"', "source.layout", "exactly one of"),
        ('layout = ""', "source.layout", "non-empty"),
        ('layout = "x"\nref = 1', "source.ref", "must be a string"),
        ('layout = "x"\ntag = "v1"', "source.tag", "unknown key"),
    ]:
        with pytest.raises(CatalogError, match=message) as caught:
            _entry(tmp_path, "c", body)
        assert caught.value.key == key


# ---- hand-made layers ----------------------------------------------------------------------------------


def _file(name: str, data: bytes = b"x", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, OLD
    return info, data


def _entry_of(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = kind, linkname, 0o755, OLD
    return info, b""


def _tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _layout(directory: Path, layers: list[bytes], media_type: str = LAYER_TAR, refs: tuple = ("x",)) -> Path:
    """A minimal OCI image layout holding `layers` as they are, under each of `refs`."""

    def blob(data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (directory / "blobs/sha256").mkdir(parents=True, exist_ok=True)
        (directory / "blobs/sha256" / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            **blob(json.dumps(config).encode()),
        },
        "layers": [{"mediaType": media_type, **blob(layer)} for layer in layers],
    }
    descriptor = {"mediaType": manifest["mediaType"], **blob(json.dumps(manifest).encode())}
    index = {
        "schemaVersion": 2,
        "manifests": [{**descriptor, "annotations": {oci.REF_NAME: ref}} for ref in refs],
    }
    (directory / "index.json").write_text(json.dumps(index))
    (directory / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return directory


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the rootfs that no layer may change."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside/secret").write_text("secret\n")
    return tmp_path / "outside"


def _unpack(tmp_path: Path, layers: list[bytes], **options: object) -> tuple[Path, list[str]]:
    layout = _layout(tmp_path / "layout", layers, **options)  # type: ignore[arg-type]
    lines: list[str] = []
    oci.unpack({"kind": "oci", "layout": str(layout)}, tmp_path, tmp_path / "rootfs", lines.append)
    return tmp_path / "rootfs", lines


def _untouched(outside: Path) -> bool:
    return [p.name for p in outside.iterdir()] == ["secret"] and (
        outside / "secret"
    ).read_text() == "secret\n"


SYM, HARD = tarfile.SYMTYPE, tarfile.LNKTYPE


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([_tar(_file("../outside/pwned"))], r"\.\.' in the path refused"),
        ([_tar(_file("/outside/pwned"))], "absolute path refused"),
        ([_tar(_entry_of("esc", SYM, "../outside"), _file("esc/pwned"))], "climbs above the image's root"),
        ([_tar(_entry_of("esc", SYM, "../outside")), _tar(_file("esc/pwned"))], "climbs above"),
        ([_tar(_entry_of("esc", SYM, "a/../../outside")), _tar(_file("esc/pwned"))], "climbs above"),
        ([_tar(_entry_of("hl", HARD, "../outside/secret"))], r"\.\.' in the path refused"),
        ([_tar(_entry_of("hl", HARD, "/etc/passwd"))], "absolute path refused"),
        ([_tar(_entry_of("esc", SYM, "../outside"), _entry_of("hl", HARD, "esc/secret"))], "climbs above"),
        ([_tar(_entry_of("hl", HARD, "nothing"))], "'nothing' has not been extracted"),
        ([_tar(_entry_of("d", tarfile.DIRTYPE), _file("d/.wh..."))], "whiteout of '..' refused"),
        ([_tar(_entry_of("loop", SYM, "loop"), _file("loop/x"))], "too many levels of symbolic links"),
    ],
)
def test_hostile_members_are_refused(
    tmp_path: Path, outside: Path, layers: list[bytes], message: str
) -> None:
    with pytest.raises(BuildError, match=message):
        _unpack(tmp_path, layers)
    assert _untouched(outside)


def test_symlinks_are_followed_as_inside_a_chroot(tmp_path: Path, outside: Path) -> None:
    absolute = _entry_of("abs", SYM, str(outside))
    replaced = _entry_of("etc/passwd", SYM, str(outside / "secret"))
    rootfs, _ = _unpack(
        tmp_path,
        [
            _tar(_entry_of("etc", tarfile.DIRTYPE), absolute, replaced, _entry_of("lib", SYM, "usr/lib")),
            _tar(_file("abs/pwned"), _file("etc/passwd", b"root\n"), _file("lib/libc.so")),
        ],
    )
    assert _untouched(outside)
    assert (rootfs / str(outside).lstrip("/") / "pwned").is_file(), (
        "an absolute link starts at the image's root"
    )
    assert not (rootfs / "etc/passwd").is_symlink() and (rootfs / "etc/passwd").read_text() == "root\n"
    assert (rootfs / "usr/lib/libc.so").is_file()


def test_whiteouts_hide_lower_layers_only(tmp_path: Path) -> None:
    folder = tarfile.DIRTYPE
    rootfs, _ = _unpack(
        tmp_path,
        [
            _tar(
                _entry_of("d", folder),
                _file("d/old"),
                _entry_of("d/sub", folder),
                _file("d/sub/old"),
                _file("f"),
            ),
            _tar(
                _entry_of("d/sub", folder),
                _file("d/sub/new"),
                _file("d/.wh..wh..opq"),
                _file("g"),
                _file(".wh.g"),
            ),
            _tar(_file(".wh.f"), _file(".wh.missing"), _file("nowhere/.wh.x")),
        ],
    )
    assert sorted(str(p.relative_to(rootfs)) for p in rootfs.rglob("*")) == ["d", "d/sub", "d/sub/new", "g"]


def test_devices_and_fifos_are_skipped_with_a_warning(tmp_path: Path) -> None:
    rootfs, lines = _unpack(
        tmp_path,
        [
            _tar(_file("dev/null")),
            _tar(
                _entry_of("dev/null", tarfile.CHRTYPE),
                _entry_of("dev/sda", tarfile.BLKTYPE),
                _entry_of("run/fifo", tarfile.FIFOTYPE),
                _entry_of("run/fifo2", HARD, "run/fifo"),
                _file("run/after"),
            ),
            _tar(_file("run/fifo", b"now a file"), _entry_of("run/link", HARD, "run/fifo")),
        ],
    )
    warnings = [line for line in lines if line.startswith("warning:")]
    assert [line.split(": ", 2)[2] for line in warnings] == [
        "dev/null: character device skipped",
        "dev/sda: block device skipped",
        "run/fifo: FIFO skipped",
        "run/fifo2: hard link to a skipped entry skipped",
    ]
    assert all(line.startswith("warning: layer 2/3") for line in warnings)
    assert sorted(p.name for p in rootfs.rglob("*")) == ["after", "dev", "fifo", "link", "run"]
    assert (rootfs / "run/link").read_text() == "now a file"


@pytest.mark.parametrize(
    ("layers", "limits", "message"),
    [
        (
            [_tar(_file("a", bytes(600_000))), _tar(_file("b", bytes(600_000)))],
            {"max_bytes": 1 << 20},
            "1,048,576",
        ),
        ([_tar(*(_file(f"f{n}") for n in range(10)))], {"max_files": 5}, "more than 5 entries"),
    ],
)
def test_limits_are_enforced(tmp_path: Path, layers: list[bytes], limits: dict, message: str) -> None:
    layout = _layout(tmp_path / "layout", layers)
    with pytest.raises(BuildError, match=message):
        oci.unpack({"layout": str(layout)}, tmp_path, tmp_path / "rootfs", print, **limits)


def test_gzip_layers_and_unpadded_tails_are_read(tmp_path: Path) -> None:
    import gzip

    layer = _tar(_file("a", b"abc"), _file("b", b"hello"))
    unpadded = layer[: 512 * 4 + 5]  # as umoci writes: no padding after the last data, no end blocks
    rootfs, _ = _unpack(
        tmp_path, [gzip.compress(unpadded)], media_type="application/vnd.oci.image.layer.v1.tar+gzip"
    )
    assert (rootfs / "b").read_text() == "hello"


def test_truncated_file_data_is_an_error(tmp_path: Path) -> None:
    layer = _tar(_file("a", bytes(2000)))
    with pytest.raises(BuildError, match="a: unexpected end of data"):
        _unpack(tmp_path, [layer[: 512 + 1000]])


def test_a_blob_that_does_not_match_its_digest_is_refused(tmp_path: Path) -> None:
    layout = _layout(tmp_path / "layout", [_tar(_file("a", b"hello"))])
    blob = next(p for p in (layout / "blobs/sha256").iterdir() if b"hello" in p.read_bytes())
    blob.write_bytes(blob.read_bytes().replace(b"hello", b"HELLO"))
    with pytest.raises(BuildError, match="does not match its digest"):
        oci.unpack({"layout": str(layout)}, tmp_path, tmp_path / "rootfs", print)


def test_zstd_layers_are_refused_clearly(tmp_path: Path) -> None:
    layout = _layout(
        tmp_path / "layout", [b"\x28\xb5\x2f\xfd"], "application/vnd.oci.image.layer.v1.tar+zstd"
    )
    with pytest.raises(BuildError, match=r"zstd.*no zstd decompressor"):
        oci.resolve({"layout": str(layout)}, tmp_path)


def test_the_ref_chooses_among_several_images(tmp_path: Path) -> None:
    layout = _layout(tmp_path / "layout", [_tar(_file("a"))], refs=("v1", "v2"))
    assert oci.resolve({"layout": str(layout), "ref": "v2"}, tmp_path)["format"] == "oci-layout"
    with pytest.raises(BuildError, match=r"holds 2 images: set ref \(names: 'v1', 'v2'\)"):
        oci.resolve({"layout": str(layout)}, tmp_path)
    with pytest.raises(BuildError, match="no image named 'v3'"):
        oci.resolve({"layout": "layout", "ref": "v3"}, tmp_path)
    with pytest.raises(BuildError, match="not an OCI image layout"):
        oci.resolve({"layout": "elsewhere"}, tmp_path)
