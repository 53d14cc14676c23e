"""Apply image layers (tar streams) to a root filesystem directory without trusting their contents.

- Member names that are absolute or contain `..` are refused.
- Every directory on a member's path is opened relative to its parent with O_NOFOLLOW. A symlink on
  the way is followed as a chroot would (an absolute target starts again at the image's root), so it
  can only lead to a directory inside the rootfs; a relative target that climbs above the root is
  refused as hostile.
- An existing entry is removed before a new one takes its place, and files are created with O_EXCL:
  nothing is written through an existing symlink, or into an inode another hard link shares.
- Whiteouts (`.wh.<name>`) delete an entry of a lower layer; an opaque marker (`.wh..wh..opq`) hides
  everything lower layers put in its directory. Entries of the same layer are never hidden.
- Hard links must name an entry already extracted (this layer or a lower one).
- Device nodes and FIFOs are skipped with a warning (the sandbox mounts its own /dev).
- Modes are kept, setuid/setgid included: images are mounted nosuid and run with no_new_privs.
  Owners are not applied (mkfs.erofs --all-root makes everything root's).
- Budgets: bytes of file data written and entries read, over all layers together.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

from catalog.build import BuildError

MAX_BYTES = 3 << 30  # file data written, all layers together (a file replaced later counts twice)
MAX_FILES = 1_000_000  # tar entries, all layers together
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
MAX_SYMLINK_HOPS = 40  # as Linux's path resolution
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SKIPPED_TYPES = {
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "FIFO",
}


class LayerWriter:
    """Applies layers in order to `root` (an empty directory); use as a context manager."""

    def __init__(
        self,
        root: Path,
        progress: Callable[[str], object],
        *,
        max_bytes: int = MAX_BYTES,
        max_files: int = MAX_FILES,
    ) -> None:
        root.mkdir(exist_ok=True)
        self.progress = progress
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.bytes = 0
        self.entries = 0
        self._root = os.open(root, _DIR_FLAGS)
        self._layer: set[tuple[str, ...]] = set()  # real paths this layer created
        self._skipped: set[tuple[str, ...]] = set()  # real paths of skipped devices and FIFOs
        # Directory modes and times, set at the end (None: a directory no member named; time of now).
        self._dirs: dict[tuple[str, ...], tuple[int, float | None]] = {}
        # The last member's parent directory (name parts, fd, real parts): members come grouped.
        self._cached: tuple[tuple[str, ...], int, tuple[str, ...]] | None = None
        self._stale = False  # something was removed: the cached directory may be another path's now

    def __enter__(self) -> LayerWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._forget()
        os.close(self._root)

    def apply(self, stream: IO[bytes], label: str) -> None:
        """Apply one uncompressed layer tar, read as a stream; `label` names it in messages."""
        self._layer = set()
        tar = _open_tar(stream, label)
        if tar is None:
            return  # an empty layer
        complete = True  # the data of the member before has been read in full
        while True:
            try:
                member = tar.next()
            except _READ_ERRORS as error:
                # umoci 0.4 ends layers right after the last file's data, unpadded (umoci issue #436).
                if str(error) == "unexpected end of data" and complete:
                    break
                raise BuildError(f"{label}: not a valid tar stream: {error}") from None
            if member is None:
                break
            tar.members.clear()  # a streaming TarFile keeps every member it has read
            try:
                complete = self._member(tar, member, label)
            except (BuildError, ValueError, *_READ_ERRORS) as error:
                reason = error.strerror if isinstance(error, OSError) and error.strerror else error
                raise BuildError(f"{label}: {member.name}: {reason}") from None

    def finish(self) -> None:
        """Give directories their modes and times, deepest first (creating entries changed the times)."""
        for real in sorted(self._dirs, key=len, reverse=True):
            mode, mtime = self._dirs[real]
            try:
                with self._opened(real, follow=False) as found:
                    if found is not None:  # else removed or replaced by a later layer
                        os.fchmod(found[0], mode)
                        if mtime is not None:
                            os.utime(found[0], ns=(_ns(mtime),) * 2)
            except BuildError:
                continue  # a file now stands where the directory was

    # ---- members ------------------------------------------------------------------------------------

    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo, label: str) -> bool:
        """Apply one member; True when its data, if any, has been read."""
        self.entries += 1
        if self.entries > self.max_files:
            raise BuildError(f"the image has more than {self.max_files:,} entries (the limit)")
        parts = _parts(member.name)
        if not parts:
            return member.size == 0  # the root itself: the builder sets its mode
        *folders, name = parts
        if name.startswith(WHITEOUT):
            self._whiteout(folders, name, label)
            return member.size == 0
        parent, real_parent = self._parent(folders)
        real = (*real_parent, name)
        if member.isreg():
            self._write(parent, name, tar, member)
        elif member.isdir():
            self._mkdir(parent, name)
            self._dirs[real] = (member.mode & 0o7777, member.mtime)
        elif member.issym():
            self._replace(parent, name)
            os.symlink(member.linkname, name, dir_fd=parent)
            os.utime(name, ns=(_ns(member.mtime),) * 2, dir_fd=parent, follow_symlinks=False)
        elif member.islnk():
            if not self._link(parent, real, member.linkname):
                self._skipped.add(real)
                self.progress(f"warning: {label}: {member.name}: hard link to a skipped entry skipped")
                return member.size == 0
        else:
            kind = _SKIPPED_TYPES.get(member.type, f"entry of type {member.type!r}")
            self._replace(parent, name)  # what lower layers had there is gone all the same
            self._skipped.add(real)
            self.progress(f"warning: {label}: {member.name}: {kind} skipped")
            return member.size == 0
        self._layer.add(real)
        self._skipped.discard(real)
        return True

    def _write(self, parent: int, name: str, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        if self.bytes + member.size > self.max_bytes:
            limit = f"{self.max_bytes:,} bytes ({self.max_bytes / 2**30:.2f} GiB)"
            raise BuildError(f"the unpacked size would exceed the limit of {limit}")
        self.bytes += member.size
        self._replace(parent, name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        data = tar.extractfile(member)
        assert data is not None  # a regular file
        with os.fdopen(os.open(name, flags, 0o600, dir_fd=parent), "wb") as out:
            shutil.copyfileobj(data, out, 1 << 20)
            out.flush()
            os.fchmod(out.fileno(), member.mode & 0o7777)
            os.utime(out.fileno(), ns=(_ns(member.mtime),) * 2)

    def _mkdir(self, parent: int, name: str) -> None:
        """A directory at `name`; one that exists is kept (layers merge into it)."""
        try:
            info = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            info = None
        if info is not None and stat.S_ISDIR(info.st_mode):
            return
        self._replace(parent, name)
        os.mkdir(name, 0o700, dir_fd=parent)  # mode set by finish()

    def _link(self, parent: int, real: tuple[str, ...], linkname: str) -> bool:
        """Hard link `real` to the extracted entry `linkname`; False if that entry was skipped."""
        target = _parts(linkname)
        if not target:
            raise BuildError("hard link to the root directory")
        *folders, name = target
        missing = BuildError(f"hard link target {linkname!r} has not been extracted")
        with self._opened(folders) as found:
            if found is None:
                raise missing
            target_dir, target_real = found[0], (*found[1], name)
            if target_real in self._skipped:
                self._replace(parent, real[-1])
                return False
            try:
                info = os.stat(name, dir_fd=target_dir, follow_symlinks=False)
            except FileNotFoundError:
                raise missing from None
            if stat.S_ISDIR(info.st_mode):
                raise BuildError(f"hard link target {linkname!r} is a directory")
            if target_real != real:
                self._replace(parent, real[-1])
                os.link(name, real[-1], src_dir_fd=target_dir, dst_dir_fd=parent, follow_symlinks=False)
        return True

    def _whiteout(self, folders: list[str], name: str, label: str) -> None:
        with self._opened(folders) as found:
            if found is None:
                return  # nothing below to hide
            parent, real_parent = found
            if name == OPAQUE:
                self._clear_lower(parent, real_parent)
            elif name.startswith(WHITEOUT + WHITEOUT):
                self.progress(f"warning: {label}: {'/'.join((*folders, name))}: unknown whiteout ignored")
            else:
                hidden = name[len(WHITEOUT) :]
                if hidden in ("", ".", ".."):
                    raise BuildError(f"whiteout of {hidden!r} refused")
                if (*real_parent, hidden) not in self._layer:
                    self._replace(parent, hidden)

    def _clear_lower(self, folder: int, real: tuple[str, ...]) -> None:
        """Remove what lower layers put under `folder`, keeping what this layer created."""
        for name in os.listdir(folder):
            path = (*real, name)
            if path not in self._layer:
                self._replace(folder, name)
            elif stat.S_ISDIR(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode):
                child = os.open(name, _DIR_FLAGS, dir_fd=folder)
                try:
                    self._clear_lower(child, path)
                finally:
                    os.close(child)

    def _replace(self, parent: int, name: str) -> None:
        """Make room for a new entry `name`: remove whatever is there, never following a symlink."""
        try:
            info = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(info.st_mode):
            shutil.rmtree(name, dir_fd=parent)  # fd-based: does not follow symlinks inside
        else:
            os.unlink(name, dir_fd=parent)
        self._stale = True

    # ---- path resolution ----------------------------------------------------------------------------

    def _parent(self, folders: list[str]) -> tuple[int, tuple[str, ...]]:
        """The directory `folders` (created as needed) and its real path; the fd stays cached."""
        key = tuple(folders)
        if self._cached is not None and self._cached[0] == key and not self._stale:
            return self._cached[1], self._cached[2]
        self._forget()
        found = self._walk(folders, create=True, follow=True)
        assert found is not None  # created
        self._cached = (key, *found)
        return found

    def _forget(self) -> None:
        if self._cached is not None and self._cached[1] != self._root:
            os.close(self._cached[1])
        self._cached = None
        self._stale = False

    @contextlib.contextmanager
    def _opened(
        self, folders: Sequence[str], *, follow: bool = True
    ) -> Iterator[tuple[int, tuple[str, ...]] | None]:
        """The existing directory `folders` (fd, real path), closed afterwards; None if it is missing
        or, unless `follow`, reached through a symlink."""
        found = self._walk(folders, create=False, follow=follow)
        try:
            yield found
        finally:
            if found is not None and found[0] != self._root:
                os.close(found[0])

    def _walk(
        self, folders: Sequence[str], *, create: bool, follow: bool
    ) -> tuple[int, tuple[str, ...]] | None:
        """Directory `folders` resolved below the root one component at a time, as a chroot would:
        its fd (the caller closes it unless it is the root's) and its real path."""
        stack: list[tuple[int, str]] = []  # directories opened below the root, with their names
        pending = list(reversed(folders))
        hops = 0
        try:
            while pending:
                name = pending.pop()
                if name in ("", "."):
                    continue
                if name == "..":  # only symlink targets get here: member names with ".." are refused
                    if not stack:
                        raise BuildError("a symlink on the path climbs above the image's root")
                    os.close(stack.pop()[0])
                    continue
                here = stack[-1][0] if stack else self._root
                try:
                    mode = os.stat(name, dir_fd=here, follow_symlinks=False).st_mode
                except FileNotFoundError:
                    if not create:
                        return None
                    os.mkdir(name, 0o700, dir_fd=here)  # 0755 given by finish() unless a layer says
                    self._dirs[(*(n for _, n in stack), name)] = (0o755, None)
                    mode = stat.S_IFDIR
                if stat.S_ISLNK(mode):
                    hops += 1
                    if not follow:
                        return None
                    if hops > MAX_SYMLINK_HOPS:
                        raise BuildError("too many levels of symbolic links")
                    target = os.readlink(name, dir_fd=here)
                    if target.startswith("/"):
                        while stack:
                            os.close(stack.pop()[0])
                    pending.extend(reversed(target.split("/")))
                    continue
                if not stat.S_ISDIR(mode):
                    raise BuildError(f"{'/'.join((*(n for _, n in stack), name))} is not a directory")
                stack.append((os.open(name, _DIR_FLAGS, dir_fd=here), name))
            real = tuple(name for _, name in stack)
            return (stack.pop()[0] if stack else self._root), real
        finally:
            for fd, _ in stack:
                os.close(fd)


_READ_ERRORS = (OSError, EOFError, zlib.error, tarfile.TarError)  # what a broken layer stream raises


def _open_tar(stream: IO[bytes], label: str) -> tarfile.TarFile | None:
    """A streaming reader of the tar in `stream`; None if the stream is empty."""
    try:
        return tarfile.open(fileobj=stream, mode="r|")
    except tarfile.ReadError as error:
        if str(error) == "empty file":
            return None
        raise BuildError(f"{label}: not a tar stream: {error}") from None
    except _READ_ERRORS as error:
        raise BuildError(f"{label}: cannot read: {error}") from None


def _parts(name: str) -> list[str]:
    """A member name's components; absolute names, `..` and NUL are refused."""
    if "\0" in name:
        raise BuildError("NUL in the name")
    if name.startswith("/"):
        raise BuildError("absolute path refused")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise BuildError("'..' in the path refused")
    return parts


def _ns(seconds: float) -> int:
    """A tar time as nanoseconds, clamped to what every filesystem and erofs can store."""
    return int(min(max(seconds, 0), 2**34) * 1_000_000_000)
