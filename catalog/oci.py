"""OCI image sources: an image layout directory or an image archive, unpacked into a rootfs.

Formats read: an OCI image layout (oci-layout, index.json → [image index →] manifest → layers); a tar
of one (`skopeo copy … oci-archive:…`, `docker save` since Docker 25); a `docker save` archive
(manifest.json: Config, RepoTags, Layers). Every blob is checked as it is read: layout blobs against
their descriptor's digest and size, docker-save layers against the config's diff_ids. Layers may be
plain or gzip tars; zstd is refused, as Python 3.11 has no zstd decompressor. Layers are applied by
catalog/layer.py; nothing of the image config (Env, Cmd, …) is used.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import platform
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from catalog.build import BuildError
from catalog.layer import MAX_BYTES, MAX_FILES, LayerWriter

REF_NAME = "org.opencontainers.image.ref.name"
INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
LAYER_TYPES = (
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
)
DIGEST_RE = re.compile(r"sha256:([0-9a-f]{64})")
MAX_JSON = 4 << 20  # bytes of an index, manifest or config
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
NO_ZSTD = "zstd-compressed layers are not supported (Python 3.11 has no zstd decompressor); " + (
    "recompress the image: skopeo copy --dest-compress-format=gzip …"
)
# platform.machine() → the architecture name of OCI platforms (Go's GOARCH).
ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}


@dataclass(frozen=True)
class Layer:
    name: str  # the blob's path in the layout or archive
    digest: str  # the sha256 its bytes must have
    size: int | None  # stored bytes (layouts)
    of_tar: bool  # `digest` is that of the uncompressed tar (a docker-save diff_id), not of the blob


@dataclass(frozen=True)
class Image:
    format: str  # "oci-layout" | "oci-archive" | "docker-archive"
    digest: str  # the manifest's digest; for docker-save archives the config's (the image id)
    layers: tuple[Layer, ...]

    def key(self) -> dict:
        """What the build's input key records: a changed image has another digest."""
        return {"format": self.format, "digest": self.digest}


def resolve(source: dict, base: Path) -> dict:
    """The image an `oci` source names (paths relative to `base`), as recorded in the input key."""
    with _opened(source, base) as (_, image):
        return image.key()


def unpack(
    source: dict,
    base: Path,
    rootfs: Path,
    progress: Callable[[str], object],
    *,
    expect: dict | None = None,
    max_bytes: int = MAX_BYTES,
    max_files: int = MAX_FILES,
) -> None:
    """Apply the image's layers in order to the new directory `rootfs`.

    `expect` is what `resolve` gave when the input key was computed; a different image now is an error.
    """
    with _opened(source, base) as (blobs, image):
        if expect is not None and image.key() != expect:
            raise BuildError(f"{blobs.where}: the image changed while building ({image.digest}); build again")
        with LayerWriter(rootfs, progress, max_bytes=max_bytes, max_files=max_files) as writer:
            for number, layer in enumerate(image.layers, 1):
                label = f"layer {number}/{len(image.layers)} {layer.digest[7:19]}"
                progress(label + (f" ({layer.size / 1e6:.1f} MB)" if layer.size is not None else ""))
                _apply(blobs, layer, writer, label)
            writer.finish()
        progress(f"{len(image.layers)} layers: {writer.entries:,} entries, {writer.bytes / 1e6:.1f} MB")


# ---- reading images ----------------------------------------------------------------------------------


class _Blobs(Protocol):
    where: str  # the layout or archive, for messages

    def has(self, name: str) -> bool: ...

    def open(self, name: str) -> IO[bytes]: ...


class _Directory:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.where = str(root)

    def has(self, name: str) -> bool:
        return (self.root / name).is_file()

    def open(self, name: str) -> IO[bytes]:
        try:
            return (self.root / name).open("rb")
        except FileNotFoundError:
            raise BuildError(f"{self.where}: {name} is missing") from None


class _Archive:
    """Blobs read in place from an uncompressed (or, slowly, compressed) tar."""

    def __init__(self, tar: tarfile.TarFile, path: Path) -> None:
        self.tar = tar
        self.where = str(path)
        self.members = {
            member.name.removeprefix("./"): member
            for member in tar.getmembers()
            if member.isfile() or member.issym() or member.islnk()
        }

    def has(self, name: str) -> bool:
        return name in self.members

    def open(self, name: str) -> IO[bytes]:
        try:
            handle = self.tar.extractfile(self.members[name])
        except KeyError:
            handle = None  # not there, or a link to nothing
        if handle is None:
            raise BuildError(f"{self.where}: {name} is missing")
        return handle


@contextlib.contextmanager
def _opened(source: dict, base: Path) -> Iterator[tuple[_Blobs, Image]]:
    ref = source.get("ref")
    if "layout" in source:
        path = _path(source["layout"], base)
        if not (path / "oci-layout").is_file():
            raise BuildError(f"{path}: not an OCI image layout (no oci-layout file)")
        directory = _Directory(path)
        yield directory, _oci_image(directory, ref, "oci-layout")
        return
    path = _path(source["archive"], base)
    with _open_archive(path) as tar:
        archive = _Archive(tar, path)
        if archive.has("oci-layout"):
            image = _oci_image(archive, ref, "oci-archive")
        elif archive.has("manifest.json"):
            image = _docker_image(archive, ref)
        else:
            raise BuildError(f"{path}: neither an OCI archive (oci-layout) nor a docker-save archive")
        yield archive, image


def _open_archive(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:*")
    except (OSError, tarfile.TarError) as error:
        raise BuildError(f"{path}: cannot read the archive: {error}") from None


def _path(value: str, base: Path) -> Path:
    path = Path(value)
    return path if path.is_absolute() else base / path


def _oci_image(blobs: _Blobs, ref: str | None, form: str) -> Image:
    version = _json(blobs, "oci-layout").get("imageLayoutVersion")
    if not isinstance(version, str) or not version.startswith("1."):
        raise BuildError(f"{blobs.where}: unsupported imageLayoutVersion {version!r}")
    descriptors = _list(blobs, _json(blobs, "index.json"), "manifests")
    manifest, digest = _manifest(blobs, _by_ref(blobs, descriptors, ref))
    layers = []
    for item in _list(blobs, manifest, "layers"):
        media_type, layer_digest, size = _descriptor(blobs, item)
        if media_type.endswith("+zstd"):
            raise BuildError(f"{blobs.where}: {NO_ZSTD}")
        if media_type not in LAYER_TYPES:
            raise BuildError(f"{blobs.where}: unsupported layer media type {media_type!r}")
        layers.append(Layer(_blob(layer_digest), layer_digest, size, of_tar=False))
    return Image(form, digest, tuple(layers))


def _manifest(blobs: _Blobs, descriptor: dict) -> tuple[dict, str]:
    """The image manifest a descriptor names, following image indexes by platform; and its digest."""
    for _ in range(4):
        media_type, digest, size = _descriptor(blobs, descriptor)
        document = _json(blobs, _blob(digest), digest, size)
        media_type = media_type or document.get("mediaType") or ""
        if media_type in INDEX_TYPES or (not media_type and "manifests" in document):
            descriptor = _for_platform(blobs, _list(blobs, document, "manifests"))
            continue
        if media_type and media_type not in MANIFEST_TYPES:
            raise BuildError(f"{blobs.where}: {digest} has unsupported media type {media_type!r}")
        return document, digest
    raise BuildError(f"{blobs.where}: image indexes nested too deep")


def _by_ref(blobs: _Blobs, descriptors: list, ref: str | None) -> dict:
    names = [(item.get("annotations") or {}).get(REF_NAME) for item in descriptors]
    known = ", ".join(repr(name) for name in names if name) or "none"
    if ref is None:
        if len(descriptors) != 1:
            raise BuildError(f"{blobs.where} holds {len(descriptors)} images: set ref (names: {known})")
        return descriptors[0]
    matches = [item for item, name in zip(descriptors, names, strict=True) if name == ref]
    if not matches:
        raise BuildError(f"{blobs.where}: no image named {ref!r} (names: {known})")
    return matches[0] if len(matches) == 1 else _for_platform(blobs, matches)


def _for_platform(blobs: _Blobs, descriptors: list) -> dict:
    """The linux descriptor for this machine's architecture."""
    arch = ARCHITECTURES.get(platform.machine(), platform.machine())
    found = []
    for item in descriptors:
        item_platform = item.get("platform") or {}
        if item_platform.get("os") == "linux" and item_platform.get("architecture") == arch:
            return item
        found.append(f"{item_platform.get('os')}/{item_platform.get('architecture')}")
    if len(descriptors) == 1 and "platform" not in descriptors[0]:
        return descriptors[0]
    raise BuildError(f"{blobs.where}: no linux/{arch} image (has {', '.join(found) or 'none'})")


def _docker_image(blobs: _Blobs, ref: str | None) -> Image:
    entries = _parse(blobs, "manifest.json", _read(blobs, "manifest.json"), list)
    if not all(isinstance(entry, dict) for entry in entries):
        raise BuildError(f"{blobs.where}: manifest.json must be a list of objects")
    tags = [entry.get("RepoTags") or [] for entry in entries]
    known = ", ".join(repr(tag) for entry_tags in tags for tag in entry_tags) or "none"
    if ref is None:
        if len(entries) != 1:
            raise BuildError(f"{blobs.where} holds {len(entries)} images: set ref (tags: {known})")
        entry = entries[0]
    else:
        matches = [e for e, t in zip(entries, tags, strict=True) if _short(ref) in map(_short, t)]
        if not matches:
            raise BuildError(f"{blobs.where}: no image tagged {ref!r} (tags: {known})")
        entry = matches[0]
    config_name, layer_names = entry.get("Config"), entry.get("Layers")
    if not isinstance(config_name, str) or not isinstance(layer_names, list):
        raise BuildError(f"{blobs.where}: manifest.json: Config and Layers are required")
    data = _read(blobs, config_name)
    diff_ids = (_parse(blobs, config_name, data, dict).get("rootfs") or {}).get("diff_ids")
    if not isinstance(diff_ids, list) or len(diff_ids) != len(layer_names):
        raise BuildError(f"{blobs.where}: {config_name}: rootfs.diff_ids must list every layer")
    layers = []
    for name, diff_id in zip(layer_names, diff_ids, strict=True):
        if not isinstance(name, str) or not isinstance(diff_id, str) or not DIGEST_RE.fullmatch(diff_id):
            raise BuildError(f"{blobs.where}: bad layer {name!r} with diff_id {diff_id!r}")
        layers.append(Layer(name, diff_id, None, of_tar=True))
    return Image("docker-archive", "sha256:" + hashlib.sha256(data).hexdigest(), tuple(layers))


def _short(tag: str) -> str:
    """A docker tag without the default registry and namespace, as `docker save` writes it."""
    return tag.removeprefix("docker.io/").removeprefix("library/")


def _descriptor(blobs: _Blobs, value: Any) -> tuple[str, str, int]:
    """(mediaType or "", digest, size) of an OCI descriptor, checked."""
    if not isinstance(value, dict):
        raise BuildError(f"{blobs.where}: a descriptor must be an object, not {value!r}")
    media_type, digest, size = value.get("mediaType", ""), value.get("digest"), value.get("size")
    if not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
        raise BuildError(f"{blobs.where}: unsupported digest {digest!r} (sha256:<64 hex digits> only)")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0 or not isinstance(media_type, str):
        raise BuildError(f"{blobs.where}: descriptor of {digest}: bad size or mediaType")
    return media_type, digest, size


def _blob(digest: str) -> str:
    return "blobs/sha256/" + digest.removeprefix("sha256:")


def _json(blobs: _Blobs, name: str, digest: str | None = None, size: int | None = None) -> dict:
    data = _read(blobs, name)
    if size is not None and len(data) != size:
        raise BuildError(f"{blobs.where}: {name} has {len(data)} bytes, its descriptor says {size}")
    if digest is not None and "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise BuildError(f"{blobs.where}: {name} does not match its digest")
    return _parse(blobs, name, data, dict)


def _read(blobs: _Blobs, name: str) -> bytes:
    with blobs.open(name) as handle:
        data = handle.read(MAX_JSON + 1)
    if len(data) > MAX_JSON:
        raise BuildError(f"{blobs.where}: {name} is larger than {MAX_JSON:,} bytes")
    return data


def _parse(blobs: _Blobs, name: str, data: bytes, kind: type) -> Any:
    try:
        value = json.loads(data)
    except ValueError:
        raise BuildError(f"{blobs.where}: {name} is not JSON") from None
    if not isinstance(value, kind):
        raise BuildError(f"{blobs.where}: {name} must be a JSON {kind.__name__}")
    return value


def _list(blobs: _Blobs, document: dict, key: str) -> list:
    value = document.get(key)
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise BuildError(f"{blobs.where}: {key} must be a list of objects")
    return value


# ---- applying layers -----------------------------------------------------------------------------------


class _Hashing(io.RawIOBase):
    """Reads from `inner`, hashing and counting what passes."""

    def __init__(self, inner: IO[bytes]) -> None:
        self.inner = inner
        self.sha256 = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.inner.read(len(buffer))
        buffer[: len(data)] = data
        self.sha256.update(data)
        self.count += len(data)
        return len(data)


def _apply(blobs: _Blobs, layer: Layer, writer: LayerWriter, label: str) -> None:
    """Stream one layer blob into `writer`, checking its digest (after: a bad blob fails the build)."""
    with blobs.open(layer.name) as handle:
        stored = _Hashing(handle)
        buffered = io.BufferedReader(stored, 1 << 20)
        magic = buffered.peek(4)[:4]
        if magic.startswith(ZSTD_MAGIC):
            raise BuildError(f"{label}: {NO_ZSTD}")
        plain: IO[bytes] = buffered
        if magic.startswith(GZIP_MAGIC):
            plain = gzip.GzipFile(fileobj=buffered, mode="rb")
        tar = _Hashing(plain) if layer.of_tar else None
        writer.apply(tar if tar is not None else plain, label)
        try:
            # The digest covers the whole blob, whatever follows the tar's end.
            rest = tar if tar is not None else buffered
            while rest.read(1 << 20):
                pass
        except (OSError, EOFError) as error:
            raise BuildError(f"{label}: cannot read: {error}") from None
    checked = tar if tar is not None else stored
    if "sha256:" + checked.sha256.hexdigest() != layer.digest:
        raise BuildError(f"{label}: the content does not match its digest {layer.digest}: corrupt image")
    if layer.size is not None and stored.count != layer.size:
        raise BuildError(f"{label}: {stored.count} bytes, the manifest says {layer.size}")
