"""The vm runner when the guest goes wrong: a kernel panic, a boot that hangs, an output archive cut
short. Each gives a clear `error` result, the runner goes on to run the next job, and no QEMU process
or run directory is left behind."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from catalog.store import ImageLocation
from guest.build import Guest, ensure_guest
from guest.debian import GuestBuildError
from guest.kernel import check_config, guest_config
from pe.settings import load_settings
from tests.support.images import FixedImages
from wire.cpio import file_entry, write_archive
from wire.result import Status
from wire.spec import parse_spec
from worker.runner import Job
from worker.vm import POOL_UIDS, QEMU_UID_BASE, QEMU_UIDS, VmRunner, _read_output_device

pytestmark = pytest.mark.sandbox

DIGEST = "sha256:" + "0" * 64


@pytest.fixture(scope="module")
def guest() -> Guest:
    if os.geteuid() != 0 or shutil.which("qemu-system-x86_64") is None:
        pytest.skip("the vm runner needs root and qemu-system-x86")
    return ensure_guest(load_settings().cache_dir)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A loose busybox erofs (the runner's other case besides a directory in a pack)."""
    root = tmp_path_factory.mktemp("image") / "root"
    for directory in ("bin", "work", "tmp", "proc", "dev", "sys"):
        (root / directory).mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin/busybox")
    for applet in ("sh", "echo", "cat"):
        (root / "bin" / applet).symlink_to("busybox")
    path = root.parent / "busybox.erofs"
    subprocess.run(["mkfs.erofs", "--quiet", "--all-root", str(path), str(root)], check=True)
    return path


def broken_guest(guest: Guest, tmp: Path, init: str) -> Guest:
    """The real kernel with an initramfs whose /init is `init` (a busybox sh script)."""
    root = tmp / "root"
    (root / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin/busybox")
    (root / "init").write_text("#!/bin/busybox sh\n" + init)
    (root / "init").chmod(0o755)
    return Guest("broken", guest.kernel, packed(root))


def packed(root: Path) -> Path:
    """`root` as an initramfs beside it, readable by QEMU's unprivileged uid."""
    initrd = root.parent / "initrd.cpio"
    listing = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True).stdout
    with initrd.open("wb") as out:
        subprocess.run(
            ["cpio", "--quiet", "-o", "-H", "newc"], cwd=root, input=listing, stdout=out, check=True
        )
    initrd.chmod(0o644)
    root.parent.chmod(0o755)
    return initrd


def job(argv: list[str]) -> Job:
    spec = parse_spec({"image": "busybox", "argv": argv, "runner": "vm"})
    return Job(uuid.uuid4().hex, spec, spec.argv, "busybox", DIGEST, "vm")


def run(runner: VmRunner, *jobs: Job) -> list:
    async def go() -> list:
        try:
            return [await runner.run(j) for j in jobs]
        finally:
            await runner.close()

    return asyncio.run(go())


# This test run's QEMU uids: a range of its own, so that VMs of another test run on the same machine
# (another checkout's CI, a developer's suite) are not taken for leftovers of this one. Below the
# service's QEMU_UID_BASE and the sandbox's uids.
UID_BASE = QEMU_UID_BASE - 70_000 + (os.getpid() % 30) * 2 * POOL_UIDS
UID_END = UID_BASE + 2 * POOL_UIDS


def our_qemus() -> list[str]:
    ps = subprocess.run(["ps", "-eo", "uid=,comm="], capture_output=True, text=True, check=True).stdout
    return [line for line in ps.splitlines() if "qemu" in line and UID_BASE <= int(line.split()[0]) < UID_END]


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "vm"
    yield path
    assert our_qemus() == [], "a QEMU process outlived its run"
    assert not path.exists() or list(path.iterdir()) == [], "a run directory was left behind"


def runner_with(guest: Guest, image: Path, run_dir: Path, **options: object) -> VmRunner:
    images = FixedImages({DIGEST: ImageLocation(image)})
    return VmRunner(
        images, 1, cache_dir=run_dir, accel="tcg", run_dir=run_dir, guest=guest, uid_base=UID_BASE, **options
    )


def test_a_kernel_panic_is_an_error_result(guest: Guest, image: Path, run_dir: Path, tmp_path: Path) -> None:
    panicking = broken_guest(guest, tmp_path / "guest", "exit 1\n")  # init exits: the kernel panics
    [out] = run(runner_with(panicking, image, run_dir), job(["echo", "hi"]))
    assert out.result.status == Status.ERROR
    assert "panicked" in out.result.message and "Attempted to kill init" in out.result.message


def test_a_boot_that_hangs_is_cut_off(guest: Guest, image: Path, run_dir: Path, tmp_path: Path) -> None:
    hanging = broken_guest(guest, tmp_path / "guest", "echo stuck; /bin/busybox sleep 1000\n")
    [out] = run(
        runner_with(hanging, image, run_dir, boot_timeout_s=8), job(["echo", "hi"])
    )  # 4 s: too short at load 13
    assert out.result.status == Status.ERROR
    assert "did not boot" in out.result.message and "stuck" in out.result.message


def test_an_init_that_cannot_make_its_mounts_says_which(
    guest: Guest, image: Path, run_dir: Path, tmp_path: Path
) -> None:
    """The guest's /init (guest/init.c) in the real initramfs, without the directory it binds the
    root on: it names what failed and powers off, and the run is an error saying so."""
    root = tmp_path / "guest" / "root"
    root.mkdir(parents=True)
    with guest.initrd.open("rb") as initrd:
        subprocess.run(["cpio", "--quiet", "-i", "-d"], cwd=root, stdin=initrd, check=True)
    (root / "newroot").rmdir()
    rootless = Guest("no-newroot", guest.kernel, packed(root))
    [out] = run(runner_with(rootless, image, run_dir), job(["echo", "hi"]))
    assert out.result.status == Status.ERROR
    assert "pe-init: error: /newroot: No such file or directory" in out.result.message, out.result.message


def test_the_runner_goes_on_after_a_failed_run(guest: Guest, image: Path, run_dir: Path) -> None:
    """A job whose image is not on this host fails; the next one on the loose erofs runs."""
    runner = runner_with(guest, image, run_dir)
    missing = job(["echo", "lost"])
    missing = Job(missing.id, missing.spec, missing.argv, "busybox", "sha256:" + "1" * 64, "vm")
    lost, found = run(runner, missing, job(["sh", "-c", "echo hi; echo made > out.txt"]))
    assert lost.result.status == Status.ERROR and "not among" in lost.result.message
    assert (found.result.status, found.stdout, found.files) == (Status.OK, b"hi\n", {"out.txt": b"made\n"})


def test_a_file_linked_under_two_names_comes_back_whole_under_both(
    guest: Guest, image: Path, run_dir: Path
) -> None:
    """The guest's /init archives every name with its data (`find | cpio -o` stored a hard link's data
    with its last name only, and the first came back empty)."""
    [out] = run(runner_with(guest, image, run_dir), job(["sh", "-c", "echo data > a; busybox ln a b"]))
    assert (out.result.status, out.files) == (Status.OK, {"a": b"data\n", "b": b"data\n"}), out.result


def test_an_output_archive_cut_short_keeps_what_arrived(tmp_path: Path) -> None:
    """What a guest that filled its output device leaves: the archive stops mid-file, without a trailer."""
    archive = write_archive(
        [
            file_entry("status", b"returncode=0\nstarted=1.00\nended=1.50\n"),
            file_entry("stdout", b"hello\n"),
            file_entry("work/whole.txt", b"all of it\n"),
            file_entry("work/cut.bin", bytes(4096)),
        ]
    )
    device = tmp_path / "output.img"
    device.write_bytes(archive[: archive.index(b"cut.bin") + 100])
    report = _read_output_device(device, tmp_path / "work", 1 << 20)
    assert report.status["returncode"] == "0" and report.stdout == b"hello\n"
    assert (tmp_path / "work/whole.txt").read_bytes() == b"all of it\n"
    assert any("no end" in note or "cut short" in note for note in report.notes), report.notes


def test_the_warm_pool_gives_each_run_a_fresh_guest(guest: Guest, image: Path, run_dir: Path) -> None:
    runner = runner_with(guest, image, run_dir, pool_mib=2 * 416)
    script = "cat /tmp/mark 2>/dev/null; echo $1 > /tmp/mark; cat in.txt; echo $1 > out.txt"

    async def go() -> list:
        try:
            await runner.warm(DIGEST)
            outs = []
            for name in ("a", "b", "c"):
                spec = parse_spec(
                    {
                        "image": "busybox",
                        "argv": ["sh", "-c", script, "sh", name],
                        "files": {"in.txt": {"text": name}},
                    }
                )
                outs.append(await runner.run(Job(uuid.uuid4().hex, spec, spec.argv, "busybox", DIGEST, "vm")))
            return outs
        finally:
            assert runner._pool is not None
            hits = runner._pool.hits
            await runner.close()
            assert hits >= 2, "the runs after the warm-up were served from the pool"

    for name, out in zip("abc", asyncio.run(go()), strict=True):
        assert out.result.status == Status.OK, out.result
        assert out.stdout == name.encode(), "nothing is left from an earlier run in a pooled guest"
        assert out.files == {"out.txt": f"{name}\n".encode()}


def test_a_pooled_guest_that_died_is_passed_over(guest: Guest, image: Path, run_dir: Path) -> None:
    runner = runner_with(guest, image, run_dir, pool_mib=416)

    async def go():
        try:
            await runner.warm(DIGEST)
            assert runner._pool is not None
            [waiting] = runner._pool._idle
            assert waiting.vm is not None
            await waiting.vm.kill()
            return await runner.run(job(["echo", "still here"]))
        finally:
            await runner.close()

    out = asyncio.run(go())
    assert (out.result.status, out.stdout) == (Status.OK, b"still here\n"), out.result


def test_two_runners_on_one_host_run_qemu_as_different_uids(guest: Guest, image: Path, run_dir: Path) -> None:
    """Without a uid_base each runner claims a block of QEMU_UIDS; a closed runner's block is free again."""
    images = FixedImages({DIGEST: ImageLocation(image)})

    def runner() -> VmRunner:
        return VmRunner(images, 2, cache_dir=run_dir, accel="tcg", run_dir=run_dir, guest=guest)

    async def bases(*runners: VmRunner) -> list[int]:
        return [(await each._start.get()).uid_base for each in runners]

    async def go() -> None:
        first, second = runner(), runner()
        try:
            one, two = await bases(first, second)
            assert one != two
            block = range(QEMU_UIDS.first, QEMU_UIDS.first + QEMU_UIDS.blocks * QEMU_UIDS.block_uids)
            assert one in block and two in block and abs(one - two) >= QEMU_UIDS.block_uids
            await first.close()
            third = runner()
            assert await bases(third) == [one]  # the closed runner's block, the first free one
            await third.close()
        finally:
            await first.close()
            await second.close()

    asyncio.run(go())


def test_the_guest_kernel_config_builds_the_drivers_in_and_nothing_as_a_module() -> None:
    cloud = (
        "CONFIG_MODULES=y\nCONFIG_VIRTIO=m\nCONFIG_VIRTIO_MMIO=m\nCONFIG_VIRTIO_BLK=m\n"
        "CONFIG_EROFS_FS=m\nCONFIG_EXT4_FS=m\nCONFIG_TMPFS=y\n# CONFIG_DEBUG_INFO_NONE is not set\n"
        "CONFIG_DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT=y\n# a comment\n"
    )
    config = guest_config(cloud)
    assert config.splitlines() == [
        "# CONFIG_MODULES is not set",
        "CONFIG_VIRTIO=y",
        "CONFIG_VIRTIO_MMIO=y",
        "CONFIG_VIRTIO_BLK=y",
        "CONFIG_EROFS_FS=y",
        "# CONFIG_EXT4_FS is not set",
        "CONFIG_TMPFS=y",
        "CONFIG_DEBUG_INFO_NONE=y",
        "# CONFIG_DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT is not set",
        "# a comment",
    ]
    check_config(config)
    with pytest.raises(GuestBuildError, match="lost CONFIG_EROFS_FS=y"):
        check_config(config.replace("CONFIG_EROFS_FS=y", "# CONFIG_EROFS_FS is not set"))
    with pytest.raises(GuestBuildError, match="still builds modules"):
        check_config(config + "CONFIG_EXT4_FS=m\n")


def test_the_guest_kernel_has_erofs_built_in_and_no_module_support(
    guest: Guest, image: Path, run_dir: Path
) -> None:
    """guest/kernel.py: the drivers are in the kernel (no modules to load at boot) and no module can
    ever be loaded: the guest's kernel has no /proc/modules."""
    [out] = run(runner_with(guest, image, run_dir), job(["sh", "-c", "cat /proc/filesystems /proc/modules"]))
    assert out.result.status == Status.EXIT and out.result.exit_code == 1
    assert b"\terofs\n" in out.stdout
    assert b"can't open '/proc/modules': No such file or directory" in out.stderr


def _features(crun: str) -> set[str]:
    version = subprocess.run([crun, "--version"], capture_output=True, text=True, check=True).stdout
    return set(version.splitlines()[-1].split())


def test_the_guest_crun_has_the_features_of_debians_but_systemd(guest: Guest, tmp_path: Path) -> None:
    """guest/crun.py builds crun statically without systemd; seccomp, capabilities and the eBPF
    device filter (what isolates the program) must stay."""
    with guest.initrd.open("rb") as initrd:
        extract = ["cpio", "-i", "-d", "--quiet", "-D", str(tmp_path), "bin/crun"]
        subprocess.run(extract, stdin=initrd, check=True)
    crun = tmp_path / "bin/crun"
    assert _features(str(crun)) == _features("/usr/bin/crun") - {"+SYSTEMD"}
    assert {"+SECCOMP", "+CAP", "+EBPF"} <= _features(str(crun))
    linking = subprocess.run(["ldd", str(crun)], capture_output=True, text=True)
    assert "not a dynamic executable" in linking.stdout + linking.stderr
