from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from catalog.store import ImageMeta, ImageStore, atomic_write

DIGEST = "sha256:" + "ab" * 32


def meta(**changes: object) -> ImageMeta:
    fields = {"id": "tool", "digest": DIGEST, "size": 4, "input_key": "k" * 64, "built_at": 1.0,
              "build_seconds": 2.0, "phases": {"mkfs": 1.5}}  # fmt: skip
    return ImageMeta(**{**fields, **changes})  # type: ignore[arg-type]


def test_image_path_is_content_addressed_and_checks_the_digest(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    assert store.image_path(DIGEST) == tmp_path / "sha256" / ("ab" * 32 + ".erofs")
    for bad in ["ab" * 32, "sha256:" + "AB" * 32, "sha256:../../etc/passwd", "sha256:" + "ab" * 31]:
        with pytest.raises(ValueError, match="not an image digest"):
            store.image_path(bad)


def test_add_then_current(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    assert store.current("tool") is None
    image = store.scratch() / "image.erofs"
    image.write_bytes(b"data")
    store.add(image, meta())
    assert not image.exists()
    assert store.image_path(DIGEST).read_bytes() == b"data"
    assert store.current("tool") == meta()
    by_id = json.loads((tmp_path / "by-id" / "tool.json").read_text())
    assert by_id["digest"] == DIGEST and by_id["input_key"] == "k" * 64
    assert json.loads(store.meta_path(DIGEST).read_text()) == by_id
    assert ImageMeta.from_json({**by_id, "added_later": 1}) == meta()


def test_current_is_none_when_the_image_file_is_gone(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    image = store.scratch() / "image.erofs"
    image.write_bytes(b"data")
    store.add(image, meta())
    store.image_path(DIGEST).unlink()
    assert store.current("tool") is None


def test_ids_are_checked_before_they_become_paths(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not an image id"):
        ImageStore(tmp_path).current("../escape")


def test_atomic_write_replaces_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "file.json"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["file.json"]


def add_image(store: ImageStore, image_id: str, data: bytes) -> ImageMeta:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    image = store.scratch() / "image.erofs"
    image.write_bytes(data)
    added = meta(id=image_id, digest=digest, size=len(data))
    store.add(image, added)
    return added


def test_garbage_collection_keeps_only_the_current_images_of_the_kept_ids(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    old_a = add_image(store, "a", b"a, first build")
    new_a = add_image(store, "a", b"a, second build")
    gone_b = add_image(store, "b", b"b")
    with store.lock("b"):
        pass
    assert {m.digest for m in store.collect_garbage(["a"], dry_run=True).images} == {
        old_a.digest,
        gone_b.digest,
    }
    assert store.current("b") == gone_b, "a dry run deletes nothing"
    garbage = store.collect_garbage(["a", "never-built"])
    removed = garbage.images
    assert garbage.bytes == old_a.size + gone_b.size and garbage.copies == garbage.packs == []
    assert sorted(m.digest for m in removed) == sorted([old_a.digest, gone_b.digest])
    assert {m.id for m in removed} == {"a", "b"}
    assert store.current("a") == new_a and store.current("b") is None
    assert sorted(p.name for p in (tmp_path / "sha256").iterdir()) == sorted(
        [store.image_path(new_a.digest).name, store.meta_path(new_a.digest).name]
    )
    assert [p.name for p in (tmp_path / "by-id").iterdir()] == ["a.json"]
    assert sorted(p.name for p in (tmp_path / "locks").glob("*.lock")) == ["a.lock", "never-built.lock"]
    assert store.collect_garbage(["a"]).images == []


def test_garbage_collection_of_an_image_without_metadata(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    stray = tmp_path / "sha256" / ("cd" * 32 + ".erofs")
    stray.parent.mkdir()
    stray.write_bytes(b"12345")
    (tmp_path / "sha256" / "notes.erofs").write_bytes(b"not named by a digest: left alone")
    [removed] = store.collect_garbage([]).images
    assert (removed.digest, removed.size) == ("sha256:" + "cd" * 32, 5)
    assert [p.name for p in (tmp_path / "sha256").iterdir()] == ["notes.erofs"]
