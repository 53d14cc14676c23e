"""Build the microVM guest: a kernel with its drivers built in (guest/kernel.py) and our initramfs,
cached by their inputs.

The initramfs holds crun built statically from Debian's source package (guest/crun.py), tini-static
and our init (guest/init.c, built static with gcc: the whole run, with no shell or other program
besides crun). No modules: the kernel has what the guest needs built in. It is an uncompressed newc
cpio: under TCG decompressing costs more than copying.

Builds live in `<cache_dir>/guest/<key>/`, the key hashing every input (the kernel's inputs, package
versions, the init), so a second build with the same inputs only computes the key.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from guest import crun, kernel
from guest.debian import GuestBuildError, installed_version, run
from guest.oci import ID_COUNT, oci_config
from wire.spec import DEFAULT_LIMITS

INIT_SOURCE = Path(__file__).with_name("init.c")  # built static as /init
PROGRAMS = {"tini": "/usr/bin/tini-static"}  # besides crun
DIRECTORIES = ("bin", "dev", "etc", "mnt/image", "newroot", "proc", "run", "sys", "tmp")
BUILD_FORMAT = 5  # bump when the layout of a build changes


WARMUP_BUNDLE = "/etc/pe-warmup"  # a pool guest runs this container once before it waits (init.c)


@dataclass(frozen=True)
class Guest:
    key: str
    kernel: Path
    initrd: Path


def inputs() -> dict:
    """Everything a build depends on; its hash is the build's key."""
    return {
        "format": BUILD_FORMAT,
        "kernel": kernel.inputs(),
        "packages": {package: installed_version(package) for package in PROGRAMS},
        "crun": crun.inputs(),
        "init": hashlib.sha256(INIT_SOURCE.read_bytes()).hexdigest(),
        "init_build": {package: installed_version(package) for package in ("gcc", "libc6-dev")},
        "warmup": hashlib.sha256(json.dumps(warmup_config(), sort_keys=True).encode()).hexdigest(),
    }


def warmup_config() -> dict:
    """A container like a job's (namespaces, mounts, seccomp, tini) in an empty root on the guest's
    /run, outside the job's cgroup: running it once before a pool guest waits takes the first
    container's one-off costs in the guest kernel and crun out of the job's time. Its program does
    not exist: everything up to tini's exec runs, then it fails."""
    return oci_config(
        root="/run/warm/root",
        argv=["/bin/true"],
        env=[],
        limits=DEFAULT_LIMITS,
        work_source="/run/warm/work",
        id_base=ID_COUNT,
        init_source="/bin/tini-static",
        cgroups_path="/warm",
        network_namespace=False,
    )


def guest_key(described: dict) -> str:
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


def ensure_guest(cache_dir: Path, progress: Callable[[str], None] = lambda line: None) -> Guest:
    """The guest for the current inputs, built first if it is not in the cache."""
    described = inputs()
    key = guest_key(described)
    final = cache_dir / "guest" / key
    guest = Guest(key, final / "vmlinuz", final / "initrd.cpio")
    if guest.kernel.is_file() and guest.initrd.is_file():
        return guest
    final.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(final.parent, 0o755)  # QEMU runs as an unprivileged uid and opens the kernel and initrd
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".build-") as scratch:
        work = Path(scratch)
        out = work / "out"
        out.mkdir()
        bzimage = kernel.ensure_kernel(cache_dir, described["kernel"], progress)
        crun_binary = crun.build_crun(work, progress)
        root = work / "root"
        make_root(root, crun_binary)
        progress("writing the initramfs")
        with (out / "initrd.cpio").open("wb") as initrd:
            listing = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True).stdout
            subprocess.run(
                ["cpio", "--quiet", "-o", "-H", "newc", "--owner", "0:0", "--reproducible"],
                cwd=root, input=listing, stdout=initrd, check=True,
            )  # fmt: skip
        shutil.copyfile(bzimage, out / "vmlinuz")
        (out / "inputs.json").write_text(json.dumps(described, indent=1) + "\n")
        for path in out.iterdir():
            path.chmod(0o644)
        out.chmod(0o755)
        if final.exists():  # a concurrent build finished first
            shutil.rmtree(final)
        out.rename(final)
    initrd_kib, kernel_kib = guest.initrd.stat().st_size >> 10, guest.kernel.stat().st_size >> 10
    progress(f"guest {key}: {initrd_kib} KiB initramfs, {kernel_kib} KiB kernel")
    return guest


def make_root(root: Path, crun_binary: Path) -> None:
    """The initramfs tree: programs, their libraries (none: all are static), the init and a console node."""
    for directory in DIRECTORIES:
        (root / directory).mkdir(parents=True, exist_ok=True)
    os.mknod(root / "dev/console", 0o600 | 0o020000, os.makedev(5, 1))
    for package, path in PROGRAMS.items():
        if path not in run("dpkg", "-L", package).split():
            raise GuestBuildError(f"{package} does not ship {path}")
    for path in [*PROGRAMS.values(), str(crun_binary)]:
        shutil.copy(path, root / "bin" / Path(path).name)
        for library in _libraries(path):
            target = root / library.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(library, target)
    (root / WARMUP_BUNDLE.lstrip("/")).mkdir(parents=True)
    (root / WARMUP_BUNDLE.lstrip("/") / "config.json").write_text(json.dumps(warmup_config()))
    run("gcc", "-static", "-Os", "-Wall", "-Werror", "-o", str(root / "init"), str(INIT_SOURCE))
    run("strip", str(root / "init"))


def _libraries(program: str) -> list[str]:
    """The shared objects `program` loads (ldd), the dynamic loader included; none when static."""
    done = subprocess.run(["ldd", program], capture_output=True, text=True)
    if done.returncode != 0:  # "not a dynamic executable"
        return []
    found = re.findall(r"(/\S+) \(0x", done.stdout)
    return [path for path in found if os.path.isfile(path)]
