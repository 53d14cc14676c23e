"""The content-addressed image store.

Layout under the root (normally `<PE_CACHE_DIR>/images`):

    sha256/<hex>.erofs    an image, named by the sha256 of its bytes ("loose"); absent when the image
                          is in a pack (then, if present, a copy regenerated from the pack: a cache)
    sha256/<hex>.json     the metadata of the build that produced it
    packs/<key>.erofs     a pack: several images in one erofs, each under /<hex of its digest>/, with
                          the files they share stored once (catalog/pack.py); <key> is the sha256 of
                          the digests it was made from
    packs/<key>.json      the pack's metadata: its members (digest -> id, root, epoch, input key, size)
    by-id/<id>.json       the current image of a catalogue id: its metadata, input key included
    locks/<id>.lock       held while an id is being built
    locks/sha256/<hex>.lock  held while an image is regenerated from its pack
    locks/packs/pack.lock    held while a pack is made, and by garbage collection
    tmp/                  build scratch space (same filesystem, so finished images are renamed in)
    downloads/            cached .deb files

Every file is written to a temporary name in its final directory, fsynced and renamed, so a reader
sees either the old or the new version; by-id is written last, so it never names a missing image,
and a pack's .json after its .erofs, so it never names a missing pack.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from catalog.entry import ID_RE

DIGEST_RE = re.compile(r"sha256:([0-9a-f]{64})")


@dataclass
class ImageMeta:
    id: str
    digest: str  # "sha256:<hex>" of the erofs file
    size: int  # bytes of the erofs file
    input_key: str  # hex sha256 of what the image was built from (see catalog/build.py)
    built_at: float  # unix time
    build_seconds: float
    phases: dict[str, float] = field(default_factory=dict)  # seconds per build phase
    packages: dict[str, str] = field(default_factory=dict)  # Debian package -> version in the image
    source: dict = field(default_factory=dict)  # the entry's [source] it was built from
    builder: str = ""  # catalog.build.BUILDER_VERSION
    epoch: int = 0  # the newest file time in the image (see docs/catalog.md)
    file_count: int = 0  # entries in the image's tree (files, directories, symlinks), the root excluded

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict) -> ImageMeta:
        return cls(**{f.name: obj[f.name] for f in fields(cls) if f.name in obj})


@dataclass(frozen=True)
class ImageLocation:
    """Where a runner finds an image on this host: an erofs file to mount, and the image's directory in it."""

    file: Path  # the image's own erofs file, or a pack holding several images (catalog/pack.py)
    root: str = ""  # the image's directory inside `file`, relative; "" when the file is the image's own


@dataclass
class PackMember:
    """An image in a pack, with what regenerating its own erofs file takes (catalog/pack.py)."""

    id: str
    root: str  # its directory in the pack: the hex of its digest
    epoch: int  # ImageMeta.epoch: SOURCE_DATE_EPOCH of its mkfs
    input_key: str  # ImageMeta.input_key: its filesystem UUID derives from it
    size: int  # bytes of its own erofs file


@dataclass
class PackMeta:
    key: str  # hex sha256 of the digests the pack was made from; names packs/<key>.erofs
    size: int  # bytes of the pack's erofs file
    built_at: float  # unix time; where packs overlap, the newest one serves an image
    epoch: int  # SOURCE_DATE_EPOCH of the pack's mkfs: the newest member epoch
    members: dict[str, PackMember]  # digest -> member, only those that were verified
    unverified: dict[str, str] = field(default_factory=dict)  # digest -> why it stays loose
    phases: dict[str, float] = field(default_factory=dict)  # seconds per pack phase

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict) -> PackMeta:
        members = {digest: PackMember(**member) for digest, member in obj["members"].items()}
        return cls(**{**{f.name: obj[f.name] for f in fields(cls) if f.name in obj}, "members": members})


@dataclass
class Garbage:
    """What `collect_garbage` deleted (or would delete)."""

    images: list[ImageMeta] = field(default_factory=list)  # images no kept id refers to
    copies: list[ImageMeta] = field(default_factory=list)  # loose copies of images also in a pack
    packs: list[PackMeta] = field(default_factory=list)  # packs no kept image is served from
    bytes: int = 0  # of the files deleted


class ImageStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        # image id -> (identity of its by-id file, its metadata): `current` is on every run's path.
        self._current: dict[str, tuple[tuple[int, int, int], ImageMeta]] = {}
        # The packs' metadata, read again when the set of packs changes.
        self._packs: tuple[tuple[str, ...], dict[str, PackMeta]] | None = None

    def image_path(self, digest: str) -> Path:
        """Where the image with this digest lives (whether or not it exists). ValueError for a bad digest."""
        return self.root / "sha256" / f"{_hex(digest)}.erofs"

    def locate(self, digest: str) -> ImageLocation:
        """Where a runner finds the image (worker.runner.ImageLocator): the pack holding it if there is
        one (so runs of every packed image share one mount and its page cache, even after a download
        regenerated the image's own file), else its loose erofs file; LookupError if it is not here."""
        pack = self.packed().get(digest)
        if pack is not None:
            return ImageLocation(self.pack_path(pack.key), pack.members[digest].root)
        path = self.image_path(digest)
        if path.is_file():
            return ImageLocation(path)
        raise LookupError(f"image {digest} is not in the store at {self.root}")

    def image_file(self, digest: str) -> Path:
        """The image's own erofs file (for downloads and tools that read it whole): the loose file,
        or, for a packed image, one regenerated from the pack, checked against the digest and kept as
        a cache until `collect_garbage`. Takes seconds the first time (mkfs.erofs, root for the
        mount). LookupError if the image is not here; catalog.pack.PackError if regenerating fails."""
        path = self.image_path(digest)
        if path.is_file():
            return path
        with _flock(self.root / "locks" / "sha256" / f"{_hex(digest)}.lock"):
            if path.is_file():  # regenerated meanwhile by the holder of the lock
                return path
            pack = self.packed().get(digest)
            if pack is None:
                raise LookupError(f"image {digest} is not in the store at {self.root}")
            from catalog.pack import regenerate  # not at the top: catalog.pack imports this module

            work = Path(tempfile.mkdtemp(prefix="regenerate.", dir=self.scratch()))
            try:
                regenerate(self.pack_path(pack.key), digest, pack.members[digest], work / "image.erofs")
                _publish(work / "image.erofs", path)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        return path

    def pack_path(self, key: str) -> Path:
        return self.root / "packs" / f"{_checked_key(key)}.erofs"

    def packs(self) -> dict[str, PackMeta]:
        """The packs in the store (key -> metadata), those whose erofs file is there."""
        folder = self.root / "packs"
        try:
            # A pack's .json is written after its .erofs and deleted before it, so the names of the
            # .json files say which packs there are (a directory's mtime is too coarse for that).
            names = tuple(sorted(name for name in os.listdir(folder) if name.endswith(".json")))
        except FileNotFoundError:
            return {}
        if self._packs is None or self._packs[0] != names:
            found = {}
            for name in names:
                with contextlib.suppress(FileNotFoundError):
                    meta = PackMeta.from_json(json.loads((folder / name).read_bytes()))
                    if self.pack_path(meta.key).is_file():
                        found[meta.key] = meta
            self._packs = names, found
        return self._packs[1]

    def packed(self) -> dict[str, PackMeta]:
        """digest -> the pack that serves it: of the packs holding an image, the newest."""
        served: dict[str, PackMeta] = {}
        for pack in sorted(self.packs().values(), key=lambda pack: (pack.built_at, pack.key)):
            served.update(dict.fromkeys(pack.members, pack))
        return served

    def add_pack(self, pack_file: Path, meta: PackMeta) -> None:
        """Move a finished pack (on the store's filesystem) in; its images are served from it from
        now on (their loose files become copies: see `drop_copies`)."""
        _publish(pack_file, self.pack_path(meta.key))
        atomic_write(self.pack_path(meta.key).with_suffix(".json"), _document(meta.to_json()))

    def drop_copies(self, digests: Iterable[str], *, dry_run: bool = False) -> list[ImageMeta]:
        """Delete the loose files of those of `digests` that a pack serves; their metadata."""
        packed = self.packed()
        dropped = [self._meta_at(self.image_path(d)) for d in digests if d in packed]
        dropped = [meta for meta in dropped if self.image_path(meta.digest).is_file()]
        if not dry_run:
            for meta in dropped:
                self.image_path(meta.digest).unlink(missing_ok=True)
        return dropped

    def unserved_packs(self, digests: Iterable[str] | None = None) -> list[PackMeta]:
        """The packs that serve none of `digests` (of any image, when None): superseded by newer
        packs, or holding only images no longer wanted."""
        packed = self.packed()
        wanted = packed.keys() if digests is None else set(digests) & packed.keys()
        served = {packed[digest].key for digest in wanted}
        return [pack for key, pack in sorted(self.packs().items()) if key not in served]

    def remove_pack(self, pack: PackMeta) -> None:
        """Delete a pack: its metadata first, so it is never listed without its file."""
        self.pack_path(pack.key).with_suffix(".json").unlink(missing_ok=True)
        self.pack_path(pack.key).unlink(missing_ok=True)
        _fsync_dir(self.root / "packs")

    @contextlib.contextmanager
    def pack_lock(self) -> Iterator[None]:
        """Held while a pack is made and during garbage collection."""
        with _flock(self.root / "locks" / "packs" / "pack.lock"):
            yield

    def meta_path(self, digest: str) -> Path:
        return self.root / "sha256" / f"{_hex(digest)}.json"

    def current(self, image_id: str) -> ImageMeta | None:
        """The image last built for `image_id`, or None if there is none or its file has gone."""
        path = self._by_id(image_id)
        try:
            stat = path.stat()
            identity = (stat.st_ino, stat.st_mtime_ns, stat.st_size)  # a rebuild replaces the file
            cached = self._current.get(image_id)
            if cached is None or cached[0] != identity:
                cached = identity, ImageMeta.from_json(json.loads(path.read_bytes()))
                self._current[image_id] = cached
        except FileNotFoundError:
            return None
        meta = cached[1]
        return meta if self.has(meta.digest) else None

    def has(self, digest: str) -> bool:
        """Whether the image is here, loose or packed."""
        return self.image_path(digest).is_file() or digest in self.packed()

    def add(self, image_file: Path, meta: ImageMeta) -> None:
        """Move a finished image (on the store's filesystem) in and make it `meta.id`'s current image."""
        _publish(image_file, self.image_path(meta.digest))
        document = _document(meta.to_json())
        atomic_write(self.meta_path(meta.digest), document)
        atomic_write(self._by_id(meta.id), document)

    @contextlib.contextmanager
    def lock(self, image_id: str) -> Iterator[None]:
        """Held while building `image_id`, so two builders of one id do not race."""
        with _flock(self.root / "locks" / f"{_checked_id(image_id)}.lock"):
            yield

    def collect_garbage(self, keep: Iterable[str], *, dry_run: bool = False) -> Garbage:
        """Delete every image that is not the current image of an id in `keep` (its loose file and
        metadata), the loose copies of kept images a pack serves, the packs that serve no kept image
        (a pack serving some stays whole), and what the store holds for ids not in `keep` (by-id
        metadata, lock files). Returns what was deleted (or would be, with `dry_run`). Holds the lock
        of every kept id and the pack lock meanwhile, so no build can add an image that is not
        referenced yet."""
        ids = sorted(set(keep))
        with contextlib.ExitStack() as locks:
            for image_id in ids:
                locks.enter_context(self.lock(image_id))
            locks.enter_context(self.pack_lock())
            kept = {meta.digest for meta in map(self.current, ids) if meta is not None}
            stored = {
                f"sha256:{path.stem}"
                for path in (self.root / "sha256").glob("*.*")
                if path.suffix in (".erofs", ".json") and DIGEST_RE.fullmatch(f"sha256:{path.stem}")
            }
            garbage = Garbage(
                images=[self._meta_at(self.image_path(digest)) for digest in sorted(stored - kept)],
                copies=self.drop_copies(sorted(kept), dry_run=True),
                packs=self.unserved_packs(kept),
            )
            files = [self.image_path(meta.digest) for meta in garbage.images + garbage.copies]
            files += [self.pack_path(pack.key) for pack in garbage.packs]
            garbage.bytes = sum(path.stat().st_size for path in files if path.is_file())
            if dry_run:
                return garbage
            self.drop_copies(meta.digest for meta in garbage.copies)
            for pack in garbage.packs:
                self.remove_pack(pack)
            for meta in garbage.images:
                self.image_path(meta.digest).unlink(missing_ok=True)
                self.meta_path(meta.digest).unlink(missing_ok=True)
            for folder, suffix in (("by-id", ".json"), ("locks", ".lock")):
                for path in (self.root / folder).glob(f"*{suffix}"):
                    if path.name.removesuffix(suffix) not in ids:
                        path.unlink(missing_ok=True)
                        self._current.pop(path.stem, None)
        return garbage

    def _meta_at(self, image: Path) -> ImageMeta:
        """The metadata stored beside an image file; a stand-in with its digest and size if none."""
        digest = f"sha256:{image.stem}"
        try:
            return ImageMeta.from_json(json.loads(self.meta_path(digest).read_bytes()))
        except FileNotFoundError:
            size = image.stat().st_size if image.is_file() else 0
            return ImageMeta(id="", digest=digest, size=size, input_key="", built_at=0, build_seconds=0)

    def scratch(self) -> Path:
        """A directory for build work on the store's filesystem."""
        path = self.root / "tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def downloads(self) -> Path:
        path = self.root / "downloads"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _by_id(self, image_id: str) -> Path:
        return self.root / "by-id" / f"{_checked_id(image_id)}.json"


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that readers never see a partial file, and it survives a crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_dir(path.parent)


def _publish(file: Path, path: Path) -> None:
    """Move a finished file (on the same filesystem) to `path`, durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(file, "rb") as handle:
        os.fsync(handle.fileno())
    os.chmod(file, 0o644)
    os.replace(file, path)
    _fsync_dir(path.parent)


def _document(obj: dict) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n"


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _hex(digest: str) -> str:
    match = DIGEST_RE.fullmatch(digest)
    if match is None:
        raise ValueError(f"not an image digest (sha256:<64 hex digits>): {digest!r}")
    return match.group(1)


def _checked_key(key: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{64}", key):
        raise ValueError(f"not a pack key (64 hex digits): {key!r}")
    return key


def _checked_id(image_id: str) -> str:
    if not ID_RE.fullmatch(image_id):
        raise ValueError(f"not an image id: {image_id!r}")
    return image_id
