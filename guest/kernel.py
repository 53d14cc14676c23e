"""Build the guest's kernel: Debian's source of the cloud kernel with the cloud kernel's own config,
but the drivers the guest needs built in and no module support at all.

The cloud kernel has virtio_mmio, virtio_blk and erofs as modules: loading them and their
dependencies cost every cold boot ~55 ms of the single TCG vCPU (docs/vm.md, "The kernel"). Here
they are built in; every other module of the cloud config is left out, and so is module support
(`CONFIG_MODULES`: no module can ever be loaded into a guest), debug info and BTF, which only
lengthen the build. Everything else is the cloud kernel's configuration, `make olddefconfig`
resolving what the changes imply, so a bare boot is as fast as the cloud kernel's.

The source is `linux-source-<major.minor>` at the cloud kernel's own version and the config the
`boot/config-*` of the cloud kernel's .deb, both by `apt-get download` (checked by apt against the
archive's signed index; nothing is installed). Compiling takes ~20 CPU-minutes (~10 min on two
idle cores), so the kernel is cached on its own, in `<cache_dir>/kernel/<key>/bzImage`: a change
to the initramfs does not rebuild it. The key hashes the package versions, the build tools' and the
config changes.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from guest.debian import GuestBuildError, installed_version, run

KERNEL_META = "linux-image-cloud-amd64"  # depends on the current linux-image-<version>-cloud-amd64
BUILT_IN = ("VIRTIO", "VIRTIO_MMIO", "VIRTIO_BLK", "EROFS_FS")  # and what they select (LIBCRC32C...)
CONFIG_CHANGES = {
    "MODULES": "n",  # every driver the guest needs is built in
    "DEBUG_INFO_NONE": "y",  # no debug info, hence no BTF either
    "DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT": "n",
}
# What `make bzImage` runs besides the compiler: kconfig's parser, objtool, timeconst, extract-cert.
BUILD_DEPENDS = ("gcc", "make", "bc", "flex", "bison", "libelf-dev", "libssl-dev", "xz-utils")
PROGRESS_EVERY = 250  # objects between two progress lines (a build compiles ~2,200)


def cloud_kernel() -> tuple[str, str]:
    """(name, candidate version) of the cloud kernel package the metapackage points at now."""
    depends = run("apt-cache", "depends", KERNEL_META)
    found = re.search(r"Depends: (linux-image-\S+-cloud-amd64)", depends)
    if found is None:
        raise GuestBuildError(f"no kernel package found behind {KERNEL_META} (run apt-get update)")
    name = found.group(1)
    policy = run("apt-cache", "policy", name)
    version = re.search(r"Candidate: (\S+)", policy)
    if version is None or version.group(1) == "(none)":
        raise GuestBuildError(f"{name} has no installable version")
    return name, version.group(1)


def source_package(version: str) -> str:
    """Debian's package of the kernel source for a kernel package's version (6.1.192-2: linux-source-6.1)."""
    return "linux-source-" + ".".join(version.split(".")[:2])


def inputs() -> dict:
    """Everything the kernel depends on; its hash is the kernel's key."""
    return {
        "cloud_kernel": cloud_kernel(),
        "built_in": BUILT_IN,
        "config_changes": CONFIG_CHANGES,
        "build_depends": {package: installed_version(package) for package in BUILD_DEPENDS},
    }


def ensure_kernel(cache_dir: Path, described: dict, progress: Callable[[str], None]) -> Path:
    """The bzImage for `described` (from `inputs()`), built first if it is not in the cache. Two
    processes asking at once (two workers starting, say) build it once: the second waits."""
    key = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]
    final = cache_dir / "kernel" / key
    if not (final / "bzImage").is_file():
        final.parent.mkdir(parents=True, exist_ok=True)
        with _build_lock(final.parent / f".{key}.lock", progress):
            if not (final / "bzImage").is_file():
                _build(final, described, progress)
    return final / "bzImage"


@contextlib.contextmanager
def _build_lock(path: Path, progress: Callable[[str], None]) -> Iterator[None]:
    with path.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress("another process is building this kernel; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def _build(final: Path, described: dict, progress: Callable[[str], None]) -> None:
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".build-") as scratch:
        work = Path(scratch)
        name, version = described["cloud_kernel"]
        source = source_package(version)
        progress(f"downloading {name} and {source} {version}")
        run("apt-get", "download", f"{name}={version}", f"{source}={version}", cwd=work)
        for deb in work.glob("*.deb"):
            run("dpkg", "-x", str(deb), str(work / "unpacked"))
        [tarball] = (work / "unpacked/usr/src").glob("linux-source-*.tar.xz")
        progress(f"unpacking {tarball.name}")
        run("tar", "-xf", str(tarball), "-C", str(work))
        tree = work / tarball.name.removesuffix(".tar.xz")
        [cloud_config] = (work / "unpacked/boot").glob("config-*")
        (tree / ".config").write_text(guest_config(cloud_config.read_text()))
        run("make", "olddefconfig", cwd=tree)
        check_config((tree / ".config").read_text())
        compile_kernel(tree, progress)
        out = work / "out"
        out.mkdir()
        shutil.copyfile(tree / "arch/x86/boot/bzImage", out / "bzImage")
        shutil.copyfile(tree / ".config", out / "config")
        (out / "inputs.json").write_text(json.dumps(described, indent=1) + "\n")
        for path in out.iterdir():
            path.chmod(0o644)
        out.chmod(0o755)
        out.rename(final)
    progress(f"kernel {final.name}: bzImage of {(final / 'bzImage').stat().st_size >> 10} KiB")


def guest_config(cloud: str) -> str:
    """The cloud kernel's .config with our changes: BUILT_IN =y, other modules not set, CONFIG_CHANGES."""
    lines = []
    for line in cloud.splitlines():
        found = re.fullmatch(r"(?:# )?CONFIG_(\w+)(?:=(.*)| is not set)", line)
        if found is not None:
            name, value = found.group(1), found.group(2) or "n"
            if name in CONFIG_CHANGES:
                value = CONFIG_CHANGES[name]
            elif name in BUILT_IN:
                value = "y"
            elif value == "m":
                value = "n"
            line = _config_line(name, value)
        lines.append(line)
    return "".join(f"{line}\n" for line in lines)


def check_config(config: str) -> None:
    """Fail when `make olddefconfig` undid one of our changes (a dependency it could not meet)."""
    lines = config.splitlines()
    for name, value in ({name: "y" for name in BUILT_IN} | CONFIG_CHANGES).items():
        if _config_line(name, value) not in lines:
            raise GuestBuildError(f"the kernel config lost {_config_line(name, value)} (make olddefconfig)")
    if re.search(r"^CONFIG_\w+=m$", config, re.MULTILINE):
        raise GuestBuildError("the kernel config still builds modules")


def _config_line(name: str, value: str) -> str:
    return f"# CONFIG_{name} is not set" if value == "n" else f"CONFIG_{name}={value}"


def compile_kernel(tree: Path, progress: Callable[[str], None]) -> None:
    """`make bzImage` on every CPU, with a progress line every PROGRESS_EVERY objects compiled."""
    jobs = os.cpu_count() or 1
    progress(f"compiling the kernel with make -j{jobs} (~10 min on two idle cores; cached after)")
    tail: collections.deque[str] = collections.deque(maxlen=30)
    compiled = 0
    command = ["make", f"-j{jobs}", "bzImage"]
    with subprocess.Popen(
        command, cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as make:
        assert make.stdout is not None
        for line in make.stdout:
            tail.append(line.rstrip())
            if line.startswith("  CC "):
                compiled += 1
                if compiled % PROGRESS_EVERY == 0:
                    progress(f"kernel: {compiled} objects compiled")
    if make.returncode != 0:
        raise GuestBuildError("make bzImage failed:\n" + "\n".join(tail))
    progress(f"kernel: {compiled} objects compiled, bzImage linked")
