"""The content-addressed image store.

Layout under the root (normally `<PE_CACHE_DIR>/images`):

    sha256/<hex>.erofs    an image, named by the sha256 of its bytes
    sha256/<hex>.json     the metadata of the build that produced it
    by-id/<id>.json       the current image of a catalogue id: its metadata, input key included
    locks/<id>.lock       held while an id is being built
    tmp/                  build scratch space (same filesystem, so finished images are renamed in)
    downloads/            cached .deb files

Every file is written to a temporary name in its final directory, fsynced and renamed, so a reader
sees either the old or the new version; by-id is written last, so it never names a missing image.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
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


class ImageStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        # image id -> (identity of its by-id file, its metadata): `current` is on every run's path.
        self._current: dict[str, tuple[tuple[int, int, int], ImageMeta]] = {}

    def image_path(self, digest: str) -> Path:
        """Where the image with this digest lives (whether or not it exists). ValueError for a bad digest."""
        return self.root / "sha256" / f"{_hex(digest)}.erofs"

    def locate(self, digest: str) -> ImageLocation:
        """Where a runner finds the image (worker.runner.ImageLocator); LookupError if it is not here."""
        path = self.image_path(digest)
        if not path.is_file():
            raise LookupError(f"image {digest} is not in the store at {self.root}")
        return ImageLocation(path)

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
        return meta if self.image_path(meta.digest).is_file() else None

    def add(self, image_file: Path, meta: ImageMeta) -> None:
        """Move a finished image (on the store's filesystem) in and make it `meta.id`'s current image."""
        path = self.image_path(meta.digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(image_file, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(image_file, 0o644)
        os.replace(image_file, path)
        _fsync_dir(path.parent)
        document = json.dumps(meta.to_json(), indent=2, sort_keys=True).encode() + b"\n"
        atomic_write(self.meta_path(meta.digest), document)
        atomic_write(self._by_id(meta.id), document)

    @contextlib.contextmanager
    def lock(self, image_id: str) -> Iterator[None]:
        """Held while building `image_id`, so two builders of one id do not race."""
        path = self.root / "locks" / f"{_checked_id(image_id)}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def collect_garbage(self, keep: Iterable[str], *, dry_run: bool = False) -> list[ImageMeta]:
        """Delete every image that is not the current image of an id in `keep`, and what the store
        holds for ids not in `keep` (by-id metadata, lock files); returns the metadata of the images
        deleted (or that would be, with `dry_run`). Holds the lock of every kept id meanwhile, so
        no build can add an image that is not referenced yet."""
        ids = sorted(set(keep))
        with contextlib.ExitStack() as locks:
            for image_id in ids:
                locks.enter_context(self.lock(image_id))
            kept = {meta.digest for meta in map(self.current, ids) if meta is not None}
            removed = [
                self._meta_at(path)
                for path in sorted((self.root / "sha256").glob("*.erofs"))
                if DIGEST_RE.fullmatch(f"sha256:{path.stem}") and f"sha256:{path.stem}" not in kept
            ]
            if dry_run:
                return removed
            for meta in removed:
                self.image_path(meta.digest).unlink(missing_ok=True)
                self.meta_path(meta.digest).unlink(missing_ok=True)
            for folder, suffix in (("by-id", ".json"), ("locks", ".lock")):
                for path in (self.root / folder).glob(f"*{suffix}"):
                    if path.name.removesuffix(suffix) not in ids:
                        path.unlink(missing_ok=True)
                        self._current.pop(path.stem, None)
        return removed

    def _meta_at(self, image: Path) -> ImageMeta:
        """The metadata stored beside an image file; a stand-in with its digest and size if none."""
        digest = f"sha256:{image.stem}"
        try:
            return ImageMeta.from_json(json.loads(self.meta_path(digest).read_bytes()))
        except FileNotFoundError:
            return ImageMeta(
                id="", digest=digest, size=image.stat().st_size, input_key="", built_at=0, build_seconds=0
            )

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


def _checked_id(image_id: str) -> str:
    if not ID_RE.fullmatch(image_id):
        raise ValueError(f"not an image id: {image_id!r}")
    return image_id
