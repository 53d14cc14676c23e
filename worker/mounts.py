"""The sandbox runner's host state: its directory, the mount namespace crun runs in, the /work tmpfs and
the image mounts.

Layout, under `/run/pe/sandbox/<token>/` (a private bind mount of itself; every directory above it must
be traversable by other users, which rules out ~/.cache under /root):
  mntns          the persistent mount namespace for crun, on hybrid-cgroup hosts only
  crun/          crun's state (`crun --root`)
  mnt/           a shared bind mount, so mounts made under it later reach the namespace
    work/        one tmpfs for all per-run directories
    images/<n>   each erofs file (an image, or a pack of images), mounted read-only once and kept
                 until `teardown`
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import shutil
import stat
import subprocess
from pathlib import Path

from catalog.store import ImageLocation
from worker.cgroups import MOUNTINFO, parse_mountinfo

log = logging.getLogger("pe.worker.mounts")


class SetupError(RuntimeError):
    """A host command the runner needs failed; the message names it and says why."""


async def run_command(*argv: str) -> None:
    """Run a host command (mount, unshare, …); SetupError with its stderr when it fails."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
    except OSError as error:
        raise SetupError(f"{argv[0]} could not be started: {error}") from error
    _, err = await proc.communicate()
    if proc.returncode:
        message = err.decode(errors="replace").strip()
        raise SetupError(f"`{' '.join(argv)}` failed with exit code {proc.returncode}: {message}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def unmount_under(directory: Path) -> None:
    """Detach every mount at or below `directory`, deepest first (lazily: nothing can keep it busy)."""
    prefix = str(directory)
    points = [
        p
        for p, _, _ in parse_mountinfo(MOUNTINFO.read_text())
        if str(p) == prefix or str(p).startswith(prefix + "/")
    ]
    for point in sorted(set(points), key=lambda p: -len(p.parts)):
        try:
            await run_command("umount", "--lazy", str(point))
        except SetupError as error:
            log.warning("unmount failed: %s", error)


class RunnerMounts:
    def __init__(self, state: Path) -> None:
        self.state = state
        self.ns = state / "mntns"
        self.crun_root = state / "crun"
        self.shared = state / "mnt"
        self.work = self.shared / "work"
        self.images = self.shared / "images"
        self.prefix: list[str] = []  # what runs crun inside the namespace (`nsenter …`), when there is one
        self._mounted: dict[str, asyncio.Task[Path]] = {}  # erofs file -> its mount point
        self._mount_points = itertools.count()

    async def setup(self, work_bytes: int, unmount_in_ns: Path | None) -> None:
        """Make the state directory and its mounts. With `unmount_in_ns`, also a mount namespace
        without that mount (the hybrid host's cgroup2), which crun then runs in."""
        self.state.mkdir(mode=0o711, parents=True)
        self.state.chmod(0o711)
        # crun resolves the root path as container root, an unprivileged uid on the host
        closed = [str(p) for p in self.state.parents if not p.stat().st_mode & stat.S_IXOTH]
        if closed:
            raise SetupError(f"{self.state} is not reachable for other users: {', '.join(closed)} lack o+x")
        await run_command("mount", "--bind", str(self.state), str(self.state))
        await run_command("mount", "--make-private", str(self.state))
        self.shared.mkdir(mode=0o711)
        self.crun_root.mkdir(mode=0o700)
        await run_command("mount", "--bind", str(self.shared), str(self.shared))
        await run_command("mount", "--make-shared", str(self.shared))
        for directory in (self.work, self.images):
            directory.mkdir(mode=0o711)
        inodes = max(work_bytes >> 12, 16384)
        options = f"size={work_bytes},nr_inodes={inodes},mode=0711,nosuid,nodev"
        await run_command("mount", "-t", "tmpfs", "-o", options, "pe-work", str(self.work))
        if unmount_in_ns is not None:
            self.ns.touch()
            await run_command(
                "unshare", f"--mount={self.ns}", "--propagation", "slave", "umount", str(unmount_in_ns)
            )
            self.prefix = ["nsenter", f"--mount={self.ns}"]

    async def image(self, location: ImageLocation) -> Path:
        """The read-only root of an image: its erofs file (or the pack holding it) is mounted on first
        use (concurrent first uses share the mount) and kept until `teardown`."""
        key = str(location.file)
        task = self._mounted.get(key)
        if task is None:
            task = asyncio.ensure_future(self._mount(location.file))
            self._mounted[key] = task
        try:
            mounted = await asyncio.shield(task)
        except Exception:
            if self._mounted.get(key) is task:
                del self._mounted[key]
            raise
        root = mounted / location.root if location.root else mounted
        if not root.is_dir():
            raise SetupError(f"{location.file} has no image directory {location.root!r}")
        return root

    async def _mount(self, file: Path) -> Path:
        if not file.is_file():
            raise SetupError(f"no erofs file at {file}")
        target = self.images / str(next(self._mount_points))
        target.mkdir()
        options = "loop,ro,nosuid,nodev"
        await run_command("mount", "-t", "erofs", "-o", options, str(file), str(target))
        log.info("image mounted: %s at %s", file, target)
        return target

    async def teardown(self) -> None:
        """Unmount everything (the namespace first, so the image loop devices are released) and
        remove the state directory."""
        for task in self._mounted.values():
            task.cancel()
        self._mounted.clear()
        await unmount_under(self.state)
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.state)
