"""Build catalogue images: rootfs → normalise → mkfs.erofs → digest → store.

Reproducibility (details in docs/catalog.md): the input key covers the entry's [source], the builder
version, the mkfs arguments and, where known without network, the exact package (busybox-static's
.deb version and sha256). The rootfs tools see a fixed SOURCE_DATE_EPOCH; files keep the mtimes
their packages ship (Python's .pyc files check them), and anything the build itself created is
clamped by mkfs.erofs to the newest shipped mtime; owners are forced to root and the filesystem
UUID is derived from the input key.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from catalog.entry import CATALOG_DIR, CatalogEntry, CatalogError, load_catalog
from catalog.store import ImageMeta, ImageStore

Progress = Callable[[str], object]

# Bump when a change to this module changes the bytes of an image built from the same inputs.
BUILDER_VERSION = "2"
# lz4hc with the default 4 KiB clusters: 40 % smaller than plain, and readers (wire/, the kernel)
# need nothing beyond basic lz4 support. See docs/catalog.md for the measurements.
MKFS_ARGS = ("-zlz4hc", "--all-root")
# What date the rootfs tools (mmdebstrap, maintainer scripts) believe it is: Debian 12's release.
SOURCE_DATE_EPOCH = 1686355200
APT_ARCHIVES = Path("/var/cache/apt/archives")
MERGED_USR_HOOK = "/usr/share/mmdebstrap/hooks/merged-usr"
# Directories whose contents no image needs (the directories are kept), and files the host leaks
# into a rootfs; they are left out of the image (EXCLUDED), not deleted from the tree.
EMPTIED = (
    "var/cache/apt",
    "var/lib/apt/lists",
    "var/log",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
)
REMOVED = ("etc/hostname", "etc/resolv.conf", "var/cache/ldconfig/aux-cache")
REMOVED_GLOBS = ("var/lib/dpkg/*-old", "var/cache/debconf/*-old")
# The sandbox mounts over these; the image's root is read-only, so they must exist, empty.
MOUNT_POINTS = {"work": 0o1777, "tmp": 0o1777, "proc": 0o555, "dev": 0o755, "sys": 0o555}
DOC_KEPT = "copyright"  # the one file kept in each usr/share/doc/<package>


class BuildError(RuntimeError):
    """A build step failed; the message says which command and ends with its stderr."""


def build_all(
    ids: Sequence[str] | None,
    store: ImageStore,
    *,
    force: bool = False,
    progress: Progress = print,
    directory: Path = CATALOG_DIR,
) -> list[ImageMeta]:
    """Build the named catalogue images (all when `ids` is empty or None), skipping up-to-date ones."""
    return [build_image(entry, store, force=force, progress=progress) for entry in pick(ids, directory)]


def pick(ids: Sequence[str] | None, directory: Path = CATALOG_DIR) -> list[CatalogEntry]:
    """The catalogue entries with these ids (all when `ids` is empty or None); CatalogError for an
    unknown id."""
    catalog = load_catalog(directory)
    wanted = list(dict.fromkeys(ids)) if ids else list(catalog)
    unknown = [image_id for image_id in wanted if image_id not in catalog]
    if unknown:
        raise CatalogError(f"unknown image id {', '.join(map(repr, unknown))} (known: {', '.join(catalog)})")
    return [catalog[image_id] for image_id in wanted]


def build_image(
    entry: CatalogEntry, store: ImageStore, *, force: bool = False, progress: Progress = print
) -> ImageMeta:
    """Build `entry` into `store` unless its current image was built from the same input key."""
    resolved, key = resolve_inputs(entry)
    with store.lock(entry.id):
        current = store.current(entry.id)
        if current is not None and current.input_key == key and not force:
            progress(f"{entry.id}: up to date ({current.digest}, {current.size / 1e6:.1f} MB)")
            return current
        work = Path(tempfile.mkdtemp(prefix=f"{entry.id}.", dir=store.scratch()))
        try:
            return _build(entry, store, key, resolved, work, progress)
        finally:
            remove_tree(work)


def resolve_inputs(entry: CatalogEntry) -> tuple[dict, str]:
    """What the entry's source resolves to without building (see `_resolve`), and the input key."""
    resolved = _resolve(entry)
    return resolved, input_key(entry.source, resolved)


def input_key(source: dict, resolved: dict) -> str:
    """Hex sha256 over everything that decides an image's bytes and is known before building it."""
    document = {
        "builder": BUILDER_VERSION,
        "mkfs": list(MKFS_ARGS),
        "excluded": list(EXCLUDED),
        "source": source,
        "resolved": resolved,
    }
    return hashlib.sha256(_canonical(document)).hexdigest()


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _build(
    entry: CatalogEntry, store: ImageStore, key: str, resolved: dict, work: Path, progress: Progress
) -> ImageMeta:
    phases = Phases(entry.id, progress)

    def detail(line: str) -> None:
        progress(f"{entry.id}:   {line}")

    started = time.time()
    rootfs = work / "rootfs"
    with phases("rootfs", _describe(entry.source)):
        packages = make_rootfs(entry, resolved, rootfs, store, detail)
    meta = image_from_rootfs(entry, store, key, rootfs, work / "image.erofs", phases, started, packages)
    progress(f"{entry.id}: built {meta.digest} ({meta.size / 1e6:.1f} MB) in {meta.build_seconds:.1f} s")
    return meta


def make_rootfs(
    entry: CatalogEntry, resolved: dict, rootfs: Path, store: ImageStore, detail: Progress
) -> dict[str, str]:
    """The entry's root filesystem tree at `rootfs`, made by its source's tool; the Debian
    packages in it (name -> version), when known."""
    if entry.source["kind"] == "busybox-static":
        packages = _busybox_rootfs(resolved["deb"], rootfs, store, detail)
    elif entry.source["kind"] == "oci":
        from catalog import oci  # not at the top: catalog.oci imports from this module

        oci.unpack(entry.source, entry.path.parent, rootfs, detail, expect=resolved)
        packages = {}
    else:
        packages = _debian_rootfs(entry.source, rootfs, detail)
    return packages


def image_from_rootfs(
    entry: CatalogEntry,
    store: ImageStore,
    key: str,
    rootfs: Path,
    image: Path,
    phases: Phases,
    started: float,
    packages: dict[str, str],
) -> ImageMeta:
    """The rest of the pipeline: normalise `rootfs` in place, make `image` (on the store's
    filesystem), hash it and move it into the store as `entry.id`'s current image."""
    with phases("normalise"):
        _normalise(rootfs)
        epoch, file_count = _scan(rootfs, started)
    with phases("mkfs", " ".join(MKFS_ARGS)):
        _run(mkfs_command(image, rootfs, key), env={"SOURCE_DATE_EPOCH": str(epoch)})
    with phases("digest"):
        digest = "sha256:" + _sha256(image)
    meta = ImageMeta(
        id=entry.id,
        digest=digest,
        size=image.stat().st_size,
        input_key=key,
        built_at=time.time(),
        build_seconds=round(time.time() - started, 3),
        phases=phases.seconds,
        packages=packages,
        source=entry.source,
        builder=BUILDER_VERSION,
        epoch=epoch,
        file_count=file_count,
    )
    store.add(image, meta)
    return meta


def mkfs_command(image: Path, rootfs: Path, key: str) -> list[str]:
    """The mkfs.erofs command line of an image (run with SOURCE_DATE_EPOCH set to its epoch); the
    filesystem UUID is derived from the input key."""
    fs_uuid = uuid.UUID(bytes=bytes.fromhex(key)[:16], version=4)
    excluded = [f"--exclude-regex={pattern}" for pattern in EXCLUDED]
    return ["mkfs.erofs", "--quiet", *MKFS_ARGS, *excluded, f"-U{fs_uuid}", str(image), str(rootfs)]


def _describe(source: dict) -> str:
    if source["kind"] == "debian":
        return (
            f"mmdebstrap {source['variant']} {source['suite']} + {' '.join(source['packages']) or 'nothing'}"
        )
    if source["kind"] == "oci":
        return f"oci {source.get('layout') or source['archive']} {source.get('ref', '')}".rstrip()
    return source["kind"]


class Phases:
    """Times named build phases and reports each one's start and end through `progress`."""

    def __init__(self, image_id: str, progress: Progress) -> None:
        self.image_id = image_id
        self.progress = progress
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str, detail: str = "") -> Iterator[None]:
        self.progress(f"{self.image_id}: {name}{' (' + detail + ')' if detail else ''} …")
        started = time.monotonic()
        yield
        self.seconds[name] = round(time.monotonic() - started, 3)
        self.progress(f"{self.image_id}: {name} done in {self.seconds[name]:.1f} s")


# ---- sources ---------------------------------------------------------------------------------------


def _resolve(entry: CatalogEntry) -> dict:
    """What the source resolves to without network: for busybox-static, apt's candidate .deb; for
    oci, the image's format and manifest digest."""
    if entry.source["kind"] == "oci":
        from catalog import oci  # not at the top: catalog.oci imports from this module

        return oci.resolve(entry.source, entry.path.parent)
    if entry.source["kind"] != "busybox-static":
        return {}
    fields = _apt_show("busybox-static")
    return {
        "deb": {
            "package": fields["Package"],
            "version": fields["Version"],
            "architecture": fields["Architecture"],
            "sha256": fields["SHA256"],
            "filename": Path(fields["Filename"]).name,
        }
    }


def _apt_show(package: str) -> dict[str, str]:
    output = _run(["apt-cache", "show", "--no-all-versions", package]).stdout.decode()
    fields: dict[str, str] = {}
    for line in output.splitlines():
        name, colon, value = line.partition(":")
        if colon and not line.startswith(" ") and name not in fields:
            fields[name] = value.strip()
    missing = {"Package", "Version", "Architecture", "SHA256", "Filename"} - set(fields)
    if missing:
        raise BuildError(f"apt-cache show {package} gave no {', '.join(sorted(missing))} (apt-get update?)")
    return fields


def _busybox_rootfs(deb: dict, rootfs: Path, store: ImageStore, progress: Progress) -> dict[str, str]:
    """/bin/busybox from the busybox-static .deb, plus a symlink for every applet it has."""
    path = _fetch_deb(deb, store.downloads(), progress)
    _run(["dpkg-deb", "-x", str(path), str(rootfs)])
    binary = next((rootfs / p for p in ("bin/busybox", "usr/bin/busybox") if (rootfs / p).is_file()), None)
    if binary is None:
        raise BuildError(f"{path.name} has no bin/busybox or usr/bin/busybox")
    target = "/" + str(binary.relative_to(rootfs))
    for applet in _run([str(binary), "--list-full"]).stdout.decode().split():
        link = rootfs / applet
        if not os.path.lexists(link):
            _make_dirs(rootfs, link.parent)
            link.symlink_to(target)
    return {deb["package"]: deb["version"]}


def _fetch_deb(deb: dict, downloads: Path, progress: Progress) -> Path:
    """The .deb with the expected sha256: from our cache, apt's cache, or `apt-get download`."""
    apt_name = f"{deb['package']}_{deb['version'].replace(':', '%3a')}_{deb['architecture']}.deb"
    candidates = [
        folder / name for folder in (downloads, APT_ARCHIVES) for name in (deb["filename"], apt_name)
    ]
    for candidate in candidates:
        if candidate.is_file() and _sha256(candidate) == deb["sha256"]:
            return candidate
    progress(f"apt-get download {deb['package']}={deb['version']}")
    _run(["apt-get", "download", f"{deb['package']}={deb['version']}"], cwd=downloads)
    for candidate in candidates[:2]:
        if candidate.is_file():
            if _sha256(candidate) != deb["sha256"]:
                candidate.unlink()
                raise BuildError(f"{candidate.name}: sha256 differs from apt's index ({deb['sha256']})")
            return candidate
    raise BuildError(f"apt-get download left no {apt_name} in {downloads}")


def _debian_rootfs(source: dict, rootfs: Path, on_line: Callable[[str], object]) -> dict[str, str]:
    """mmdebstrap a merged-/usr rootfs, running the post-install commands in it (chrooted, with
    /bin/sh, after all packages are installed); returns its package versions.

    Docs are left out by mkfs.erofs (EXCLUDED) rather than with dpkg path-exclude options, which
    made mmdebstrap's extraction ~5 s slower.
    """
    command = [
        "mmdebstrap",
        f"--variant={source['variant']}",
        f"--hook-dir={MERGED_USR_HOOK}",  # without it bookworm pulls in usrmerge and all of perl
    ]
    if source["packages"]:
        command.append("--include=" + ",".join(source["packages"]))
    for line in source.get("post_install", ()):
        command.append(f'--customize-hook=chroot "$1" /bin/sh -ec {shlex.quote(line)}')
    command += [source["suite"], str(rootfs)]
    if "mirror" in source:
        command.append(source["mirror"])
    _run(command, env={"SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH)}, on_line=on_line)
    listing = _run(
        ["dpkg-query", f"--admindir={rootfs / 'var/lib/dpkg'}", "-W", "-f", "${Package}\t${Version}\n"]
    )
    return dict(line.split("\t", 1) for line in sorted(listing.stdout.decode().splitlines()))


# ---- normalisation ---------------------------------------------------------------------------------


def _ere(text: str) -> str:
    """`text` as a literal in a POSIX extended regex (which Python's re reads the same way)."""
    return re.sub(r"([.\[\]()*+?{}|^$\\])", r"\\\1", text)


def _anything_but(word: str) -> str:
    """An extended regex (no lookahead in POSIX) matching a non-empty text that is not `word`."""
    different = [_ere(word[:i]) + (f"($|[^{word[i]}])" if i else f"[^{word[i]}]") for i in range(len(word))]
    return "(" + "|".join([*different, _ere(word) + "."]) + ")"


# What images leave out: POSIX extended regexes over paths relative to the root ("usr/bin/x").
# mkfs.erofs skips every entry one matches (--exclude-regex), with its subtree, and _scan does the
# same with Python's re. Leaving them out instead of deleting them keeps the normalise step cheap:
# unlinking a few thousand files took longer than everything else but mkfs (docs/performance.md).
EXCLUDED = (
    "^(" + "|".join(_ere(folder) for folder in (*EMPTIED, *MOUNT_POINTS)) + ")/",
    "^(" + "|".join(_ere(path) for path in REMOVED) + ")$",
    *("^" + _ere(glob).replace("\\*", "[^/]*") + "$" for glob in REMOVED_GLOBS),
    "^usr/share/doc/[^/]+/" + _anything_but(DOC_KEPT),
)


def _normalise(rootfs: Path) -> None:
    """Create the mount points with fixed modes; what is in them is left out with the rest of
    EXCLUDED."""
    _refuse_mounts(rootfs)
    rootfs.chmod(0o755)
    for name, mode in MOUNT_POINTS.items():
        path = rootfs / name
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            path.unlink()
        path.mkdir(exist_ok=True)
        path.chmod(mode)


def _scan(rootfs: Path, started: float) -> tuple[int, int]:
    """The newest mtime among the entries that go into the image that predates the build (the
    packages' own newest file), and the number of those entries.

    mkfs.erofs clamps every later mtime (files the build created or touched) to it, so the image
    does not depend on when it was built, while shipped files (.py next to their .pyc) keep theirs.
    """
    excluded = re.compile("|".join(f"(?:{pattern})" for pattern in EXCLUDED))
    cutoff = started - 60  # filesystem timestamps are coarse; nothing shipped is that fresh
    newest = 0.0
    count = 0
    for folder, dirs, files in os.walk(rootfs):
        relative = os.path.relpath(folder, rootfs)
        prefix = "" if relative == "." else relative + "/"
        dirs[:] = [name for name in dirs if not excluded.search(prefix + name)]
        kept = [*dirs, *(name for name in files if not excluded.search(prefix + name))]
        count += len(kept)
        for name in kept:
            mtime = os.lstat(os.path.join(folder, name)).st_mtime
            if newest < mtime < cutoff:
                newest = mtime
    return (math.ceil(newest) if newest else SOURCE_DATE_EPOCH), count


def _make_dirs(rootfs: Path, path: Path) -> None:
    """mkdir -p with mode 0755 whatever the umask, so images do not depend on it."""
    missing = []
    while not path.exists() and path != rootfs:
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        folder.mkdir()
        folder.chmod(0o755)


def _refuse_mounts(path: Path) -> None:
    """Never delete through a mount left behind by a failed mmdebstrap (it may be the host's /dev)."""
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
            if point.startswith(prefix):
                raise BuildError(f"{point} is still mounted; unmount it, then remove {path}")


def remove_tree(path: Path) -> None:
    """Delete a build directory, refusing while anything is mounted under it."""
    if path.exists():
        _refuse_mounts(path)
        shutil.rmtree(path)


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


# ---- subprocesses ----------------------------------------------------------------------------------


def _run(
    command: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    on_line: Callable[[str], object] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command with C locale and UTC; on failure raise BuildError with the command and stderr tail.

    With `on_line`, stderr lines starting with "I: " (mmdebstrap's progress) are passed on as they come.
    """
    if shutil.which(command[0]) is None:
        raise BuildError(f"{command[0]} is not installed (Debian package: {_PROVIDERS.get(command[0], '?')})")
    full_env = {**os.environ, "LC_ALL": "C.UTF-8", "TZ": "UTC", **(env or {})}
    stdout = io.BytesIO()
    tail: collections.deque[bytes] = collections.deque(maxlen=40)
    with subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=full_env,
        cwd=cwd,
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        # Drain stdout in a thread while stderr is read here, so neither pipe can fill up and block.
        reader = threading.Thread(target=shutil.copyfileobj, args=(process.stdout, stdout), daemon=True)
        reader.start()
        for raw in process.stderr:
            tail.append(raw)
            line = raw.decode(errors="replace").rstrip()
            if on_line is not None and line.startswith("I: "):
                on_line(line[3:])
        reader.join()
    if process.returncode != 0:
        text = b"".join(tail).decode(errors="replace").rstrip() or "(no stderr)"
        raise BuildError(f"command failed (exit {process.returncode}): {shlex.join(command)}\n{text}")
    return subprocess.CompletedProcess(command, process.returncode, stdout.getvalue(), b"".join(tail))


_PROVIDERS = {
    "mkfs.erofs": "erofs-utils",
    "mmdebstrap": "mmdebstrap",
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg-deb": "dpkg",
    "dpkg-query": "dpkg",
}
