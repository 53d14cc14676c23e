"""Build the microVM guest: Debian's cloud kernel and our initramfs, cached by their inputs.

The kernel comes from its .deb (`apt-get download` + `dpkg -x`, never installed into the host's
/boot). The initramfs holds busybox-static (with its applet links), crun built statically from
Debian's source package (guest/crun.py), tini-static, our init (guest/preinit.c, built static with
gcc: it makes the mounts and execs guest/init.sh) and the kernel modules the guest needs, resolved
with their dependencies through the `modules.dep` that `depmod -b` writes (a copy limited to them
goes in too, so that one `modprobe -a` loads them all: one process, not one per module). It is an
uncompressed newc cpio: under TCG decompressing costs more than copying.

Builds live in `<cache_dir>/guest/<key>/`, the key hashing every input (package versions, the init
script, the module list), so a second build with the same inputs only computes the key.
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

from guest import crun
from guest.debian import GuestBuildError, installed_version, run
from guest.oci import ID_COUNT, oci_config
from wire.spec import DEFAULT_LIMITS

INIT_SCRIPT = Path(__file__).with_name("init.sh")  # installed as /etc/pe-init.sh
PREINIT_SOURCE = Path(__file__).with_name("preinit.c")  # built static as /init, execs the script
KERNEL_META = "linux-image-cloud-amd64"  # depends on the current linux-image-<version>-cloud-amd64
# What the init needs beyond the kernel's built-ins; dependencies (virtio, virtio_ring, ...) are added.
MODULES = ("virtio_mmio", "virtio_blk", "erofs")
PROGRAMS = {"busybox-static": "/bin/busybox", "tini": "/usr/bin/tini-static"}  # besides crun
DIRECTORIES = ("bin", "dev", "etc", "mnt/image", "newroot", "proc", "run", "sys", "tmp")
BUILD_FORMAT = 4  # bump when the layout of a build changes
SIGNATURE_MAGIC = b"~Module signature appended~\n"  # the kernel's MODULE_SIG_STRING
SIGNATURE_INFO_BYTES = 12  # struct module_signature, before the magic; its last field is the length


WARMUP_BUNDLE = "/etc/pe-warmup"  # a pool guest runs this container once before it waits (init.sh)


@dataclass(frozen=True)
class Guest:
    key: str
    kernel: Path
    initrd: Path


def kernel_package() -> tuple[str, str]:
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


def inputs() -> dict:
    """Everything a build depends on; its hash is the build's key."""
    return {
        "format": BUILD_FORMAT,
        "kernel": kernel_package(),
        "packages": {package: installed_version(package) for package in PROGRAMS},
        "crun": crun.inputs(),
        "init": hashlib.sha256(INIT_SCRIPT.read_bytes()).hexdigest(),
        "preinit": hashlib.sha256(PREINIT_SOURCE.read_bytes()).hexdigest(),
        "preinit_build": {package: installed_version(package) for package in ("gcc", "libc6-dev")},
        "modules": MODULES,
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
        name, version = described["kernel"]
        progress(f"downloading {name} {version}")
        run("apt-get", "download", f"{name}={version}", cwd=work)
        [deb] = work.glob("linux-image-*.deb")
        progress(f"unpacking {deb.name}")
        kernel_root = work / "kernel"
        run("dpkg", "-x", str(deb), str(kernel_root))
        [vmlinuz] = (kernel_root / "boot").glob("vmlinuz-*")
        release = vmlinuz.name.removeprefix("vmlinuz-")
        run("depmod", "-b", str(kernel_root), release)
        module_dir = kernel_root / "lib/modules" / release
        modules = resolve_modules(module_dir, MODULES)
        progress(f"kernel {release}; modules in load order: {', '.join(m.stem for m in modules)}")
        crun_binary = crun.build_crun(work, progress)
        root = work / "root"
        make_root(root, release, modules, module_dependencies(module_dir, modules), crun_binary)
        progress("writing the initramfs")
        with (out / "initrd.cpio").open("wb") as initrd:
            listing = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True).stdout
            subprocess.run(
                ["cpio", "--quiet", "-o", "-H", "newc", "--owner", "0:0", "--reproducible"],
                cwd=root, input=listing, stdout=initrd, check=True,
            )  # fmt: skip
        shutil.copyfile(vmlinuz, out / "vmlinuz")
        (out / "inputs.json").write_text(json.dumps(described, indent=1) + "\n")
        for path in out.iterdir():
            path.chmod(0o644)
        out.chmod(0o755)
        if final.exists():  # a concurrent build finished first
            shutil.rmtree(final)
        out.rename(final)
    progress(f"guest {key}: {guest.initrd.stat().st_size >> 10} KiB initramfs, kernel {release}")
    return guest


def resolve_modules(module_dir: Path, wanted: tuple[str, ...]) -> list[Path]:
    """The .ko files of `wanted` and their dependencies, each after the modules it needs;
    modules built into the kernel are left out."""
    depends: dict[str, list[str]] = {}
    for line in (module_dir / "modules.dep").read_text().splitlines():
        path, _, needs = line.partition(":")
        depends[path] = needs.split()
    by_name = {_module_name(path): path for path in depends}
    builtin = {_module_name(p) for p in (module_dir / "modules.builtin").read_text().split()}
    ordered: list[str] = []

    def add(path: str) -> None:
        if path in ordered:
            return
        for need in reversed(depends[path]):  # modules.dep lists the deepest dependency last
            add(need)
        ordered.append(path)

    for name in wanted:
        if name in builtin:
            continue
        if name not in by_name:
            raise GuestBuildError(f"the kernel has no module {name}")
        add(by_name[name])
    return [module_dir / path for path in ordered]


def module_dependencies(module_dir: Path, modules: list[Path]) -> str:
    """A modules.dep for `modules` alone, all in one directory (as make_root places them)."""
    chosen = {str(module.relative_to(module_dir)) for module in modules}
    lines = []
    for line in (module_dir / "modules.dep").read_text().splitlines():
        path, _, needs = line.partition(":")
        if path in chosen:
            lines.append(f"{Path(path).name}:" + "".join(f" {Path(need).name}" for need in needs.split()))
    return "".join(f"{line}\n" for line in lines)


def _module_name(path: str) -> str:
    return Path(path).name.split(".ko")[0].replace("-", "_")


def make_root(root: Path, release: str, modules: list[Path], dependencies: str, crun_binary: Path) -> None:
    """The initramfs tree: programs, their libraries (none: all are static), modules (where busybox
    modprobe looks for them: /lib/modules/<release>/), the init and a console node."""
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
    applets = run(str(root / "bin/busybox"), "--list").split()
    for applet in applets:
        if not (root / "bin" / applet).exists():
            (root / "bin" / applet).symlink_to("busybox")
    module_root = root / "lib/modules" / release
    module_root.mkdir(parents=True)
    for module in modules:
        (module_root / module.name).write_bytes(unsigned_module(module.read_bytes()))
    (module_root / "modules.dep").write_text(dependencies)
    (root / "etc/pe-modules").write_text(" ".join(MODULES) + "\n")
    (root / WARMUP_BUNDLE.lstrip("/")).mkdir(parents=True)
    (root / WARMUP_BUNDLE.lstrip("/") / "config.json").write_text(json.dumps(warmup_config()))
    shutil.copy(INIT_SCRIPT, root / "etc/pe-init.sh")
    run("gcc", "-static", "-Os", "-Wall", "-Werror", "-o", str(root / "init"), str(PREINIT_SOURCE))
    run("strip", str(root / "init"))


def unsigned_module(data: bytes) -> bytes:
    """The module without its appended signature. Checking it costs the guest ~15-40 ms of TCG time
    per module and proves nothing there: the modules come from the apt-verified kernel package into
    our initramfs, beside the init and kernel they would have to be trusted with anyway; the init
    then sets kernel.modules_disabled (docs/vm.md)."""
    if not data.endswith(SIGNATURE_MAGIC):
        return data
    signature_bytes = int.from_bytes(data[-len(SIGNATURE_MAGIC) - 4 : -len(SIGNATURE_MAGIC)], "big")
    return data[: -len(SIGNATURE_MAGIC) - SIGNATURE_INFO_BYTES - signature_bytes]


def _libraries(program: str) -> list[str]:
    """The shared objects `program` loads (ldd), the dynamic loader included; none when static."""
    done = subprocess.run(["ldd", program], capture_output=True, text=True)
    if done.returncode != 0:  # "not a dynamic executable"
        return []
    found = re.findall(r"(/\S+) \(0x", done.stdout)
    return [path for path in found if os.path.isfile(path)]
