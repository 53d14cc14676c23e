"""cgroups for sandbox runs: which layout the host has, and one limiting, measuring cgroup per run.

Each run gets `/pe/<token>/<run>` (in the memory, pids and cpuacct hierarchies on cgroup v1, one
directory on v2) holding the run's limits and counters; crun puts the container in the child
`/pe/<token>/<run>/c`, which it removes when the container ends. The parent outlives it, so its
counters (CPU time, peak memory, OOM events) are read after the run, then it is removed too. A fresh
parent per run means no counter has to be reset and no page cache charged by earlier runs inflates
the peak.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from wire.spec import Limits

log = logging.getLogger("pe.worker.cgroups")

MOUNTINFO = Path("/proc/self/mountinfo")
ROOT_NAME = "pe"
CRUN_LEAF = "c"
V1_CONTROLLERS = frozenset(
    ("blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "hugetlb", "memory", "misc", "net_cls",
     "net_prio", "perf_event", "pids", "rdma")
)  # fmt: skip
V1_NEEDED = ("memory", "pids", "cpuacct")
V2_NEEDED = ("memory", "pids")


class CgroupError(RuntimeError):
    """The host's cgroups cannot hold sandbox runs; the message says what is missing."""


class CgroupMode(StrEnum):
    V1 = "v1"  # controllers on cgroup v1 hierarchies (a controller-less cgroup2 mount may sit beside them)
    V2 = "v2"  # the unified hierarchy only
    HYBRID = "hybrid"  # v1 hierarchies and a cgroup2 mount with controllers: crun refuses to start


@dataclass(frozen=True)
class CgroupLayout:
    mode: CgroupMode
    unified: Path | None  # the cgroup2 mount point
    v1: dict[str, Path]  # v1 controller (or "name=…" hierarchy) → its mount point

    @property
    def hierarchies(self) -> list[Path]:
        """Every directory tree a run's cgroup lives in (crun creates it in all v1 hierarchies)."""
        if self.mode is CgroupMode.V2:
            assert self.unified is not None
            return [self.unified]
        v1 = list(dict.fromkeys(self.v1.values()))
        # beside v1, crun may also make its cgroup in a controller-less cgroup2 (not in HYBRID mode:
        # there crun runs where that mount is gone)
        return [*v1, self.unified] if self.mode is CgroupMode.V1 and self.unified is not None else v1


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[tuple[Path, str, list[str]]]:
    """(mount point, filesystem type, super options) of each line of /proc/<pid>/mountinfo."""
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        if "-" not in fields:
            continue
        sep = fields.index("-")
        mounts.append((Path(_unescape(fields[4])), fields[sep + 1], fields[sep + 3].split(",")))
    return mounts


def detect_layout(mountinfo: str | None = None) -> CgroupLayout:
    """The cgroup layout of this process's mount namespace (or of the given mountinfo text)."""
    text = MOUNTINFO.read_text() if mountinfo is None else mountinfo
    unified: Path | None = None
    v1: dict[str, Path] = {}
    for point, fstype, options in parse_mountinfo(text):
        if fstype == "cgroup2":
            unified = point
        elif fstype == "cgroup":
            for option in options:
                if option in V1_CONTROLLERS or option.startswith("name="):
                    v1[option] = point
    if not v1:
        if unified is None:
            raise CgroupError("no cgroup filesystem is mounted")
        return CgroupLayout(CgroupMode.V2, unified, {})
    if unified is not None and _read(unified / "cgroup.controllers").strip():
        return CgroupLayout(CgroupMode.HYBRID, unified, v1)
    return CgroupLayout(CgroupMode.V1, unified, v1)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _write(path: Path, value: str | int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)  # as `echo >` does
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)


def _keyed(text: str) -> dict[str, int]:
    """`key value` lines (cpu.stat, memory.events) as a dict."""
    pairs = (line.split() for line in text.splitlines())
    return {p[0]: int(p[1]) for p in pairs if len(p) == 2 and p[1].isdigit()}


@dataclass(frozen=True)
class Usage:
    cpu_ms: float
    peak_kib: int  # cgroup memory high-water mark: anonymous memory plus files written to tmpfs
    oom_events: int  # times the memory limit made the kernel kill (or try to kill) a process


class RunCgroup(Protocol):
    crun_path: str  # linux.cgroupsPath for crun

    def usage(self) -> Usage: ...

    def remove(self) -> None: ...


class Cgroups:
    """The cgroups of one runner, under `/pe/<token>` in each hierarchy."""

    def __init__(self, layout: CgroupLayout, token: str) -> None:
        self.layout = layout
        self.base = f"{ROOT_NAME}/{token}"
        self.swap_file = ""  # the swap limit file, when the kernel accounts swap

    def setup(self) -> None:
        """Create `/pe/<token>`; check the controllers the limits need are there."""
        if self.layout.mode is CgroupMode.V2:
            self._setup_v2()
        else:
            missing = [name for name in V1_NEEDED if name not in self.layout.v1]
            if missing:
                raise CgroupError(f"cgroup v1 controllers missing: {', '.join(missing)}")
            for name in V1_NEEDED:
                (self.layout.v1[name] / self.base).mkdir(parents=True, exist_ok=True)
            if (self.layout.v1["memory"] / self.base / "memory.memsw.limit_in_bytes").exists():
                self.swap_file = "memory.memsw.limit_in_bytes"

    def _setup_v2(self) -> None:
        assert self.layout.unified is not None
        available = _read(self.layout.unified / "cgroup.controllers").split()
        missing = [name for name in V2_NEEDED if name not in available]
        if missing:
            raise CgroupError(f"cgroup v2 controllers missing at {self.layout.unified}: {', '.join(missing)}")
        directory = self.layout.unified
        for part in self.base.split("/"):
            _enable_v2(directory)
            directory = directory / part
            directory.mkdir(exist_ok=True)
        _enable_v2(directory)
        if (directory / "memory.swap.max").exists():
            self.swap_file = "memory.swap.max"

    def create(self, name: str, limits: Limits) -> RunCgroup:
        """The cgroup of one run, with its memory and pids limits set."""
        if self.layout.mode is CgroupMode.V2:
            return _V2Run(self, name, limits)
        return _V1Run(self, name, limits)

    def destroy(self) -> None:
        """Kill whatever still runs under `/pe/<token>` and remove it from every hierarchy (`/pe`
        stays: another runner may be creating its directory in it)."""
        for hierarchy in self.layout.hierarchies:
            top = hierarchy / self.base
            if not top.is_dir():
                continue
            for directory, _, _ in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
                _kill_members(Path(directory))
                _rmdir(Path(directory))


def _enable_v2(directory: Path) -> None:
    """Enable the needed controllers for the children of `directory` (only those not yet enabled, so
    an already delegated tree needs no write access above it)."""
    enabled = _read(directory / "cgroup.subtree_control").split()
    missing = " ".join(f"+{name}" for name in V2_NEEDED if name not in enabled)
    if missing:
        _write(directory / "cgroup.subtree_control", missing)


def _kill_members(directory: Path) -> None:
    for pid in _read(directory / "cgroup.procs").split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


def _rmdir(directory: Path) -> None:
    """rmdir, retried briefly: a killed process leaves its cgroup a moment after it dies."""
    for attempt in range(100):
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as error:
            if attempt == 99:
                log.warning("cgroup left behind: %s could not be removed: %s", directory, error)
                return
            _kill_members(directory)
            time.sleep(0.005)


class _V1Run:
    def __init__(self, cgroups: Cgroups, name: str, limits: Limits) -> None:
        v1 = cgroups.layout.v1
        self.rel = f"{cgroups.base}/{name}"
        self.crun_path = f"/{self.rel}/{CRUN_LEAF}"
        self._hierarchies = cgroups.layout.hierarchies
        self.memory, self.pids, self.cpu = (v1[c] / self.rel for c in V1_NEEDED)
        self._efd = self._ofd = -1
        try:
            for directory in dict.fromkeys((self.memory, self.pids, self.cpu)):
                directory.mkdir()
            memory = limits.memory_mib << 20
            _write(self.memory / "memory.limit_in_bytes", memory)
            if cgroups.swap_file:
                _write(self.memory / cgroups.swap_file, memory)
            _write(self.pids / "pids.max", limits.pids)
            # v1 counts an OOM kill only in the victim's own cgroup (crun's child, gone when we look),
            # but notifies every eventfd registered on the cgroup whose limit was hit: this one.
            self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._ofd = os.open(self.memory / "memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
            _write(self.memory / "cgroup.event_control", f"{self._efd} {self._ofd}")
        except BaseException:
            self.remove()
            raise

    def usage(self) -> Usage:
        try:
            oom = os.eventfd_read(self._efd)
        except BlockingIOError:
            oom = 0
        return Usage(
            cpu_ms=int(_read(self.cpu / "cpuacct.usage") or 0) / 1e6,
            peak_kib=int(_read(self.memory / "memory.max_usage_in_bytes") or 0) >> 10,
            oom_events=oom,
        )

    def remove(self) -> None:
        for fd in (self._efd, self._ofd):
            if fd >= 0:
                os.close(fd)
        self._efd = self._ofd = -1
        for hierarchy in self._hierarchies:
            _rmdir(hierarchy / self.rel / CRUN_LEAF)
            _rmdir(hierarchy / self.rel)


class _V2Run:
    def __init__(self, cgroups: Cgroups, name: str, limits: Limits) -> None:
        assert cgroups.layout.unified is not None
        rel = f"{cgroups.base}/{name}"
        self.crun_path = f"/{rel}/{CRUN_LEAF}"
        self.path = cgroups.layout.unified / rel
        self.path.mkdir()
        try:
            _write(self.path / "memory.max", limits.memory_mib << 20)
            if cgroups.swap_file:
                _write(self.path / cgroups.swap_file, 0)
            _write(self.path / "pids.max", limits.pids)
        except BaseException:
            self.remove()
            raise

    def usage(self) -> Usage:
        events = _keyed(_read(self.path / "memory.events"))
        return Usage(
            cpu_ms=_keyed(_read(self.path / "cpu.stat")).get("usage_usec", 0) / 1e3,
            peak_kib=int(_read(self.path / "memory.peak") or 0) >> 10,
            # with the memory_localevents mount option only "oom" (limit hit here) is counted here
            oom_events=max(events.get("oom_kill", 0), events.get("oom", 0)),
        )

    def remove(self) -> None:
        _rmdir(self.path / CRUN_LEAF)
        _rmdir(self.path)
