"""Packs (catalog/pack.py): images made here from busybox-static with the builder's mkfs command, packed,
then mounted, run, downloaded and collected from the pack."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from catalog.build import mkfs_command
from catalog.pack import mounted, pack_current
from catalog.store import ImageMeta, ImageStore
from pe.child import start_serve
from wire.result import Status
from wire.spec import parse_spec
from worker.runner import Job

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("busybox") or not shutil.which("mkfs.erofs"),
    reason="needs root (loop mounts), busybox-static and erofs-utils",
)
EPOCH = 1_700_000_000
SHARED = os.urandom(256 << 10)  # incompressible, so storing it once shows in the pack's size
SAME = b"one content, two inodes in image a\n"


def make_image(
    store: ImageStore, image_id: str, files: dict[str, bytes], links: dict[str, str] | None = None,
    *, recorded_key: str | None = None,
) -> ImageMeta:  # fmt: skip
    """An image of busybox, the mount points, `files` and hard links (new name -> existing name),
    made as the builder makes one; `recorded_key` is an input key that is not the one used."""
    root = store.scratch() / f"{image_id}.root"
    for directory in ("bin", "work", "tmp", "proc", "dev", "sys"):
        (root / directory).mkdir(parents=True)
    shutil.copy(shutil.which("busybox") or "", root / "bin/busybox")
    (root / "bin/sh").symlink_to("busybox")
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    for name, existing in (links or {}).items():
        os.link(root / existing, root / name)
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            os.utime(Path(folder, name), (EPOCH, EPOCH), follow_symlinks=False)
    os.utime(root, (EPOCH, EPOCH))
    key = hashlib.sha256(image_id.encode()).hexdigest()
    image = store.scratch() / f"{image_id}.erofs"
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(EPOCH)}
    subprocess.run(mkfs_command(image, root, key), env=env, check=True)
    shutil.rmtree(root)
    digest = "sha256:" + hashlib.sha256(image.read_bytes()).hexdigest()
    meta = ImageMeta(
        id=image_id, digest=digest, size=image.stat().st_size, input_key=recorded_key or key,
        built_at=time.time(), build_seconds=0, epoch=EPOCH,
    )  # fmt: skip
    store.add(image, meta)
    return meta


def image_a(store: ImageStore) -> ImageMeta:
    files = {"etc/a.txt": b"alpha\n", "data/shared.bin": SHARED, "etc/same": SAME, "etc/copy": SAME}
    return make_image(store, "a", files, {"etc/same-link": "etc/same"})


def image_b(store: ImageStore) -> ImageMeta:
    files = {"etc/b.txt": b"beta\n", "data/shared.bin": SHARED, "data/own.bin": os.urandom(64 << 10)}
    return make_image(store, "b", files | {"etc/same": SAME})


def image_c(store: ImageStore) -> ImageMeta:
    return make_image(store, "c", {"etc/c.txt": b"gamma\n"})


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_pack_is_smaller_than_its_members_and_holds_shared_files_once(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    a, b, c = image_a(store), image_b(store), image_c(store)
    lines: list[str] = []
    pack = pack_current(store, ["a", "b", "c", "not-built"], lines.append)
    assert pack is not None and set(pack.members) == {a.digest, b.digest, c.digest} and not pack.unverified
    assert pack.size < a.size + b.size + c.size - len(SHARED), "the shared file is stored once"
    assert [line.split(" ")[1] for line in lines[:10:2]] == ["hash", "copy", "link", "mkfs", "verify"]
    assert list(pack.phases) == ["hash", "copy", "link", "mkfs", "verify"]
    with mounted(store.pack_path(pack.key)) as root:
        ra, rb, rc = (root / meta.digest.removeprefix("sha256:") for meta in (a, b, c))
        inode = {name: os.lstat(name).st_ino for name in [ra / "data/shared.bin", rb / "data/shared.bin",
                 ra / "bin/busybox", rb / "bin/busybox", rc / "bin/busybox", ra / "etc/same",
                 ra / "etc/same-link", ra / "etc/copy", rb / "etc/same"]}  # fmt: skip
        assert inode[ra / "data/shared.bin"] == inode[rb / "data/shared.bin"]
        assert inode[ra / "bin/busybox"] == inode[rb / "bin/busybox"] == inode[rc / "bin/busybox"]
        assert inode[ra / "etc/same"] == inode[ra / "etc/same-link"], "the image's own hard link"
        assert inode[ra / "etc/same"] != inode[ra / "etc/copy"], "two inodes of image a stay two"
        assert inode[rb / "etc/same"] in (inode[ra / "etc/same"], inode[ra / "etc/copy"])
        assert (rb / "etc/b.txt").read_bytes() == b"beta\n" and not (rb / "etc/a.txt").exists()
        assert os.readlink(rc / "bin/sh") == "busybox"


def test_packed_images_are_served_from_the_pack_and_regenerate_to_their_digest(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    metas = [image_a(store), image_b(store)]
    pack = pack_current(store, ["a", "b"], lambda line: None)
    assert pack is not None
    for meta in metas:
        assert not store.image_path(meta.digest).exists(), "the loose file is dropped"
        location = store.locate(meta.digest)
        assert (location.file, location.root) == (store.pack_path(pack.key), meta.digest[7:])
        assert store.current(meta.id) == meta and store.has(meta.digest)
        path = store.image_file(meta.digest)
        assert path == store.image_path(meta.digest) and sha256(path) == meta.digest
        assert store.locate(meta.digest) == location, "runs keep using the pack after a regeneration"
    assert [p.name for p in store.scratch().iterdir()] == [], "no scratch is left"
    with pytest.raises(LookupError):
        store.locate("sha256:" + "0" * 64)
    with pytest.raises(LookupError):
        store.image_file("sha256:" + "0" * 64)


def test_a_second_pack_of_the_same_images_is_skipped(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    image_a(store), image_b(store)
    first = pack_current(store, ["a", "b"], lambda line: None)
    lines: list[str] = []
    assert pack_current(store, ["b", "a"], lines.append) == first
    assert lines == [f"pack: up to date ({first.key[:12]}, {first.size / 1e6:.1f} MB)"]  # type: ignore[union-attr]


def test_a_member_that_does_not_regenerate_stays_loose(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    good = image_a(store)
    bad = make_image(store, "bad", {"etc/x": b"x\n"}, recorded_key="f" * 64)  # its UUID will differ
    lines: list[str] = []
    pack = pack_current(store, ["a", "bad"], lines.append)
    assert pack is not None and list(pack.members) == [good.digest] and list(pack.unverified) == [bad.digest]
    assert any(f"{bad.digest} does not regenerate" in line for line in lines)
    assert store.locate(bad.digest).file == store.image_path(bad.digest) and store.current("bad") == bad
    assert store.locate(good.digest).root == good.digest[7:]


def test_garbage_collection_of_packs_and_loose_copies(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    a, b, c = image_a(store), image_b(store), image_c(store)
    old = pack_current(store, ["a", "b"], lambda line: None)
    new = pack_current(store, ["a", "c"], lambda line: None)
    assert old is not None and new is not None
    assert store.locate(a.digest).file == store.pack_path(new.key), "the newest pack serves a"
    assert store.locate(b.digest).file == store.pack_path(old.key), "the old one still serves b"
    store.image_file(a.digest)  # a loose copy, a cache
    kept = store.collect_garbage(["a", "b", "c"])
    assert ([m.digest for m in kept.copies], kept.packs, kept.images) == ([a.digest], [], [])
    assert kept.bytes == a.size and store.locate(a.digest).file == store.pack_path(new.key)
    partly = store.collect_garbage(["a"])  # the new pack serves a, not c: it stays whole
    assert [pack.key for pack in partly.packs] == [old.key]
    assert sorted(meta.digest for meta in partly.images) == sorted([b.digest, c.digest])
    assert partly.bytes == old.size
    assert not store.pack_path(old.key).exists() and store.pack_path(new.key).is_file()
    assert store.current("a") == a and store.current("b") is None
    assert sha256(store.image_file(a.digest)) == a.digest


@pytest.mark.sandbox
@pytest.mark.skipif(not shutil.which("crun"), reason="needs crun")
def test_a_packed_image_runs_in_the_sandbox(tmp_path: Path) -> None:
    from worker.sandbox import SandboxRunner

    store = ImageStore(tmp_path)
    a, b = image_a(store), image_b(store)
    pack_current(store, ["a", "b"], lambda line: None)
    runner = SandboxRunner(store, slots=1)

    async def run(meta: ImageMeta, argv: list[str]) -> tuple[Status, bytes]:
        spec = parse_spec({"image": meta.id, "argv": argv})
        output = await runner.run(Job(meta.id + "-run", spec, spec.argv, meta.id, meta.digest, "sandbox"))
        return output.result.status, output.stdout

    async def main() -> list[tuple[Status, bytes]]:
        try:
            return [
                await run(a, ["/bin/sh", "-c", "cat /etc/a.txt; ls /etc"]),
                await run(b, ["/bin/busybox", "cat", "/etc/b.txt"]),
            ]
        finally:
            await runner.close()

    assert asyncio.run(main()) == [
        (Status.OK, b"alpha\na.txt\ncopy\nsame\nsame-link\n"),
        (Status.OK, b"beta\n"),
    ]
    assert not store.image_path(a.digest).exists(), "runs use the pack, not a regenerated copy"


def test_the_download_route_serves_a_packed_image_as_its_own_file(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "cache" / "images")
    a, b = image_a(store), image_b(store)
    pack_current(store, ["a", "b"], lambda line: None)
    served = start_serve(tmp_path / "serve.log", "--cache-dir", str(tmp_path / "cache"))
    try:
        with httpx.Client(base_url=served.url, timeout=60) as client:
            whole = client.get(f"/api/v1/images/{b.digest}.erofs")
            part = client.get(f"/api/v1/images/{a.digest[7:]}.erofs", headers={"Range": "bytes=1024-2047"})
    finally:
        served.stop()
    assert whole.status_code == 200 and "sha256:" + hashlib.sha256(whole.content).hexdigest() == b.digest
    assert part.status_code == 206 and part.content == store.image_path(a.digest).read_bytes()[1024:2048]


def test_pe_images_pack_packs_the_catalogues_current_images(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from pe.cli import main

    store = ImageStore(tmp_path / "images")
    first = make_image(store, "busybox", {"etc/x": b"x\n"})  # catalogue ids, made here
    second = make_image(store, "sqlite3", {"etc/y": b"y\n"})
    assert main(["images", "pack", "--cache-dir", str(tmp_path)]) == 0
    assert "pack: built" in capsys.readouterr().out
    assert store.locate(first.digest).root and store.locate(second.digest).root
    store.image_file(first.digest)
    assert main(["images", "pack", "--cache-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("pack: up to date")
    assert main(["images", "gc", "--cache-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"removed 0 images, 1 loose copies, 0 packs: {first.size / 1e6:.1f} MB"
    )
