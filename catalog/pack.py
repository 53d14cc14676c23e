"""Packs: several images in one erofs file, with the files they have in common stored once.

A pack holds each member image's tree under `/<hex of its digest>/`. Files that are identical in
several members (same content, type, mode, mtime and xattrs) become one hard-linked inode, which
mkfs.erofs stores (and compresses) once. Each member keeps its own link structure: two distinct
inodes of one image are never merged. Inodes of one image with the same content take "slots" 0, 1, …
and only equal slots of different images are linked, so a member's subtree has exactly the inodes
and links of the member's own image. That makes `mkfs.erofs` of a mounted pack's `/<hex>/`, with the
member's SOURCE_DATE_EPOCH and UUID, give back the member's erofs file byte for byte (`regenerate`).
Every member is checked so before the pack is published; one that does not verify stays loose.

Building one (`make_pack`), timed by phase:
  hash    every member mounted read-only; every file hashed (sha256), its inode keyed
  copy    the directories made; each pack inode written once, at its first name
  link    every other name hard-linked to it; directories given their modes, xattrs and mtimes
  mkfs    mkfs.erofs with the builder's arguments and the newest member epoch (so nothing is clamped)
  verify  the pack mounted; each member regenerated from it and its sha256 compared with its digest

Mounting needs root, as the sandbox runner does.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from catalog.build import Phases, mkfs_command, remove_tree
from catalog.store import ImageMeta, ImageStore, PackMember, PackMeta

Progress = Callable[[str], object]
WORKERS = os.cpu_count() or 1  # hashing and verifying run this many at once


class PackError(RuntimeError):
    """A pack could not be made or an image not regenerated; the message says which step and why."""


def pack_key(digests: Sequence[str]) -> str:
    """The name of the pack of exactly these images (in any order)."""
    return hashlib.sha256("\n".join(sorted(set(digests))).encode()).hexdigest()


def pack_current(store: ImageStore, ids: Sequence[str], progress: Progress = print) -> PackMeta | None:
    """Pack the current images of `ids`, unless a pack of exactly those exists; then drop the loose
    files of the packed images and the packs that no longer serve any image. None when there is
    nothing to pack (fewer than two images built)."""
    metas = [meta for meta in map(store.current, ids) if meta is not None]
    if len(metas) < 2:
        progress("pack: fewer than two images are built, nothing to pack")
        return None
    with store.pack_lock():
        existing = store.packs().get(pack_key([meta.digest for meta in metas]))
        if existing is not None:
            progress(f"pack: up to date ({existing.key[:12]}, {existing.size / 1e6:.1f} MB)")
            return existing
        pack = make_pack(store, metas, progress)
        dropped = store.drop_copies(pack.members)
        superseded = store.unserved_packs()
        for old in superseded:
            store.remove_pack(old)
        freed = sum(meta.size for meta in dropped) + sum(old.size for old in superseded)
        removed = f"{len(dropped)} loose images and {len(superseded)} old packs"
        progress(f"pack: removed {removed}, {freed / 1e6:.1f} MB")
        return pack


def make_pack(
    store: ImageStore, metas: Sequence[ImageMeta], progress: Progress = print, *, publish: bool = True
) -> PackMeta:
    """Build and verify the pack of `metas` (images in `store`, loose or packed) and add it to the
    store (or, without `publish`, only measure it: `pe bench pack`). Members that do not verify are
    left out of its metadata (and stay loose)."""
    metas = sorted({meta.digest: meta for meta in metas}.values(), key=lambda meta: meta.digest)
    key = pack_key([meta.digest for meta in metas])
    epoch = max(meta.epoch for meta in metas)
    phases = Phases("pack", progress)
    work = Path(tempfile.mkdtemp(prefix="pack.", dir=store.scratch()))
    try:
        tree, output = work / "tree", work / "pack.erofs"
        with contextlib.ExitStack() as mounts:
            roots = _mount_members(store, metas, mounts)
            with phases("hash", f"{len(metas)} images"):
                members = [_scan(roots[meta.digest]) for meta in metas]
            with phases("copy"):
                links = _copy(tree, zip(metas, members, strict=True), epoch)
            with phases("link"):
                for existing, name in links:
                    os.link(existing, name, follow_symlinks=False)
                for meta, member in zip(metas, members, strict=True):
                    _set_directories(tree / _root(meta.digest), member)
        with phases("mkfs"):
            # The builder's exclusions are anchored at the root, where a pack has only <hex>
            # directories: they leave the pack whole.
            _run(mkfs_command(output, tree, key), epoch)
        remove_tree(tree)
        with phases("verify"):
            failures = _verify(output, metas)
        for digest, why in failures.items():
            progress(f"pack: {digest} does not regenerate from the pack and stays loose: {why}")
        pack = PackMeta(
            key=key,
            size=output.stat().st_size,
            built_at=time.time(),
            epoch=epoch,
            members={meta.digest: _member(meta) for meta in metas if meta.digest not in failures},
            unverified=failures,
            phases=phases.seconds,
        )
        if publish and pack.members:  # a pack that serves nothing is not kept
            store.add_pack(output, pack)
    finally:
        remove_tree(work)
    loose = sum(meta.size for meta in metas) / 1e6
    progress(
        f"pack: built {key[:12]} ({pack.size / 1e6:.1f} MB for {len(pack.members)} images of {loose:.1f} MB)"
    )
    return pack


def regenerate(pack_file: Path, digest: str, member: PackMember, output: Path) -> None:
    """Write the member's own erofs file to `output` from the pack; PackError unless its sha256 is
    `digest`."""
    with mounted(pack_file) as root:
        got = _mkfs_member(root / member.root, member, output)
    if got != digest:
        output.unlink(missing_ok=True)
        raise PackError(f"{pack_file.name}: {member.root} regenerates to {got}, not {digest}")


@contextlib.contextmanager
def mounted(image: Path) -> Iterator[Path]:
    """An erofs file mounted read-only on a temporary directory (needs root)."""
    with tempfile.TemporaryDirectory(prefix="pe-erofs-") as point:
        done = subprocess.run(
            ["mount", "-t", "erofs", "-o", "loop,ro", str(image), point], capture_output=True, text=True
        )
        if done.returncode:
            raise PackError(f"cannot mount {image}: {done.stderr.strip()}")
        try:
            yield Path(point)
        finally:
            subprocess.run(["umount", point], check=True)


# ---- the tree --------------------------------------------------------------------------------------


Xattrs = tuple[tuple[str, bytes], ...]


@dataclass
class _Inode:
    """A non-directory of a member: its names and what it must equal to share a pack inode."""

    source: str  # one of its paths on the mounted member
    info: os.stat_result
    xattrs: Xattrs
    names: list[str]  # relative to the member's root, sorted
    key: tuple = ()  # (type and mode, mtime, xattrs, content, slot); set by `_scan`


@dataclass
class _Member:
    root: str  # the mounted member's root
    directories: list[tuple[str, os.stat_result, Xattrs]]  # parents first; "" is the root
    inodes: list[_Inode]


def _mount_members(
    store: ImageStore, metas: Sequence[ImageMeta], mounts: contextlib.ExitStack
) -> dict[str, Path]:
    """digest -> the member's root on a read-only mount (each erofs file, loose or pack, mounted once)."""
    points: dict[Path, Path] = {}
    roots = {}
    for meta in metas:
        location = store.locate(meta.digest)
        if location.file not in points:
            points[location.file] = mounts.enter_context(mounted(location.file))
        roots[meta.digest] = points[location.file] / location.root
    return roots


def _scan(root: Path) -> _Member:
    """Every entry of a mounted member, its regular files hashed."""
    directories = [("", os.lstat(root), _xattrs(str(root)))]
    by_inode: dict[int, _Inode] = {}
    for folder, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, root)
            info = os.lstat(path)
            if stat.S_ISDIR(info.st_mode):
                directories.append((relative, info, _xattrs(path)))
            elif info.st_ino in by_inode:
                by_inode[info.st_ino].names.append(relative)
            else:
                by_inode[info.st_ino] = _Inode(path, info, _xattrs(path), [relative])
    inodes = sorted(by_inode.values(), key=lambda inode: min(inode.names))
    with ThreadPoolExecutor(WORKERS) as pool:
        contents = pool.map(_content, inodes)
    slots: dict[tuple, int] = {}
    for inode, content in zip(inodes, contents, strict=True):
        inode.names.sort()
        same = (inode.info.st_mode, inode.info.st_mtime_ns, inode.xattrs, content)
        slots[same] = slot = slots.get(same, -1) + 1
        inode.key = (*same, slot)
    return _Member(str(root), directories, inodes)


def _content(inode: _Inode) -> tuple:
    mode = inode.info.st_mode
    if stat.S_ISREG(mode):
        with open(inode.source, "rb") as handle:
            return inode.info.st_size, hashlib.file_digest(handle, "sha256").hexdigest()
    if stat.S_ISLNK(mode):
        return (os.readlink(inode.source),)
    return (inode.info.st_rdev,)  # devices, FIFOs, sockets


def _copy(tree: Path, members: Iterator[tuple[ImageMeta, _Member]], epoch: int) -> list[tuple[Path, Path]]:
    """Make the directories and write each pack inode once; returns the hard links still to make
    (existing name, new name)."""
    tree.mkdir()
    first: dict[tuple, Path] = {}  # pack inode key -> its first name in the tree
    links = []
    for meta, member in members:
        top = tree / _root(meta.digest)
        for relative, _, _ in member.directories:
            (top / relative).mkdir()
        for inode in member.inodes:
            names = [top / name for name in inode.names]
            if inode.key not in first:
                _write(inode, names[0])
                first[inode.key] = names.pop(0)
            links += [(first[inode.key], name) for name in names]
    tree.chmod(0o755)
    os.utime(tree, (epoch, epoch))
    return links


def _write(inode: _Inode, target: Path) -> None:
    info = inode.info
    if stat.S_ISREG(info.st_mode):
        shutil.copyfile(inode.source, target)
    elif stat.S_ISLNK(info.st_mode):
        os.symlink(os.readlink(inode.source), target)
    else:
        os.mknod(target, info.st_mode, info.st_rdev)
    _set_metadata(target, info, inode.xattrs)


def _set_directories(top: Path, member: _Member) -> None:
    """Directory metadata, children before parents: adding entries would change a parent's mtime."""
    for relative, info, xattrs in reversed(member.directories):
        _set_metadata(top / relative, info, xattrs)


def _set_metadata(path: Path, info: os.stat_result, xattrs: Xattrs) -> None:
    """Mode, xattrs and mtime as in the member (owners are root: mkfs runs with --all-root)."""
    link = stat.S_ISLNK(info.st_mode)
    if not link:
        os.chmod(path, stat.S_IMODE(info.st_mode))
    for name, value in xattrs:
        os.setxattr(path, name, value, follow_symlinks=False)
    os.utime(path, ns=(info.st_mtime_ns, info.st_mtime_ns), follow_symlinks=not link)


def _xattrs(path: str) -> Xattrs:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:  # a filesystem without xattrs
        return ()
    return tuple(sorted((name, os.getxattr(path, name, follow_symlinks=False)) for name in names))


def _root(digest: str) -> str:
    return digest.removeprefix("sha256:")


def _member(meta: ImageMeta) -> PackMember:
    return PackMember(meta.id, _root(meta.digest), meta.epoch, meta.input_key, meta.size)


# ---- mkfs and verification -------------------------------------------------------------------------


def _verify(pack_file: Path, metas: Sequence[ImageMeta]) -> dict[str, str]:
    """digest -> why, for each member whose regenerated erofs is not its own."""
    with mounted(pack_file) as root, ThreadPoolExecutor(WORKERS) as pool:
        reasons = pool.map(lambda meta: _check(root, meta, pack_file.parent), metas)
        return {meta.digest: why for meta, why in zip(metas, reasons, strict=True) if why}


def _check(pack_root: Path, meta: ImageMeta, scratch: Path) -> str | None:
    """Why the member does not regenerate to its digest, or None when it does."""
    output = scratch / f"verify-{_root(meta.digest)}.erofs"
    try:
        got = _mkfs_member(pack_root / _root(meta.digest), _member(meta), output)
    except PackError as error:
        return str(error)
    finally:
        output.unlink(missing_ok=True)
    return None if got == meta.digest else f"regenerated as {got}"


def _mkfs_member(tree: Path, member: PackMember, output: Path) -> str:
    """mkfs.erofs of a member's tree as the builder ran it; the digest of the result."""
    _run(mkfs_command(output, tree, member.input_key), member.epoch)
    with output.open("rb") as handle:
        return "sha256:" + hashlib.file_digest(handle, "sha256").hexdigest()


def _run(command: list[str], epoch: int) -> None:
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch), "LC_ALL": "C.UTF-8", "TZ": "UTC"}
    done = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if done.returncode:
        raise PackError(f"{' '.join(command)} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
