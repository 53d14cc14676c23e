"""The `vm` runner: each run in a fresh QEMU microvm guest, which runs the program with crun.

Per run: a directory holding the input device (a newc cpio: run.env, config.json from guest/oci.py,
stdin, work/...) and a sparse output device the guest init writes a cpio to; QEMU gets them, the
image's erofs, the kernel and the initramfs as inherited file descriptors, and runs as an
unprivileged uid in its own namespaces with `-sandbox on`, no network and no default devices.
The guest's console is read as it comes: "pe-init: running" starts the run's host-side deadline
(the wall limit itself is enforced inside the guest from the program's start, so boot is not
charged); before it, a boot deadline applies. See docs/vm.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import shutil
import signal
import tempfile
import time
from asyncio import FIRST_COMPLETED
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from catalog.store import ImageLocation
from guest.build import Guest, ensure_guest
from guest.oci import ID_COUNT, oci_config, seccomp_profile
from wire.cpio import CpioError, CpioReader, Entry, EntryData, EntryEnd, EntryStart, file_entry, iter_archive
from wire.errors import WireError
from wire.paths import normalize_path
from wire.result import RunOutput
from wire.spec import DEFAULT_LIMITS, MAX_FILES, MAX_INPUT_BYTES, MAX_LIMITS, Limits
from worker.cgroups import Usage
from worker.mounts import pid_alive
from worker.process import Captured, Stop
from worker.runner import ImageLocator, Job, StartOnce, error_output
from worker.sandbox import _output
from worker.uids import UidBlock, UidRegion, claim_block
from worker.vmpool import VmPool
from worker.workdir import collect_outputs

log = logging.getLogger("pe.worker.vm")

RUN_DIR = Path("/run/pe/vm")
QEMU_UID_BASE = 190_000  # the first block of QEMU_UIDS (below the sandbox's, worker/uids.py)
GUEST_ID_BASE = 100_000  # slot N's container root is guest uid GUEST_ID_BASE + N * 65536
GUEST_MIB = 160  # guest memory beyond the run's limit: kernel, initramfs, crun, page cache
BOOT_TIMEOUT_S = 30.0  # from QEMU's start to "pe-init: running" (TCG boots in about 1.5 s)
TEARDOWN_S = 10.0  # after the wall limit, for the guest to kill, pack and power off
PROBE_TIMEOUT_S = 5.0  # a KVM boot takes well under a second; nested KVM can hang
KILL_WAIT_S = 10.0  # for a killed QEMU to exit (freeing guest memory takes a moment)
CONSOLE_BYTES = 16 << 10  # the console tail kept for error messages
RUNNING = b"pe-init: running"
DONE = b"pe-init: done"  # the output device is written and synced: QEMU need not wait for poweroff
READY = b"pe-init: ready"  # a guest started with pe.wait is waiting for its job
INIT_SOURCE = "/bin/tini-static"  # in the initramfs (guest/build.py)
SECTOR = 512
POOL_LIMITS = DEFAULT_LIMITS  # what the warm pool's guests are booted for; bigger jobs boot cold
POOL_INPUT_BYTES = MAX_INPUT_BYTES + (1 << 20)  # the input device of a pooled guest: inputs + config
POOL_WAIT_S = 600  # a pooled guest powers off after waiting this long (guest/init.c: JOB_WAIT_MS)
POOL_UIDS = 1000  # pooled guests' QEMU run as uid_base + POOL_UIDS + n % POOL_UIDS
# Each runner claims a block of host uids for its QEMU processes (slot N's as base + N, the pool's
# above), so two vm runners on one host never run QEMU as the same uid.
QEMU_UIDS = UidRegion(QEMU_UID_BASE, 2 * POOL_UIDS, 5, Path("/run/pe/qemu-uid-blocks"), "running vm runners")
_accel_probe: dict[str, str] = {}


@dataclass
class _Started:
    guest: Guest
    accel: str
    seccomp: dict
    uid_base: int  # slot N's QEMU runs as uid_base + N
    uids: UidBlock | None  # the block claimed for uid_base (None when the caller chose it)


@dataclass
class _Console:
    text: bytearray
    running: bool = False

    def line_with(self, text: str) -> str:
        return next(line for line in self.text.decode(errors="replace").splitlines() if text in line).strip()

    def tail(self, lines: int = 12) -> str:
        shown = self.text.decode(errors="replace").replace("\r", "").strip().splitlines()
        return " | ".join(shown[-lines:])


class VmRunner:
    name = "vm"

    def __init__(
        self,
        images: ImageLocator,
        slots: int,
        *,
        cache_dir: Path,
        accel: str = "auto",
        run_dir: Path = RUN_DIR,
        qemu: str = "qemu-system-x86_64",
        boot_timeout_s: float = BOOT_TIMEOUT_S,
        uid_base: int | None = None,
        guest: Guest | None = None,
        pool_mib: int = 0,
    ) -> None:
        """`accel` is "kvm", "tcg" or "auto" (KVM when a bounded probe boot works, else TCG).
        The guest (kernel + initramfs) is built into `cache_dir` on first use, unless given.
        `pool_mib` bounds the memory of the warm pool's guests (0: no pool). QEMU runs as host uids
        from `uid_base`, by default a block of QEMU_UIDS claimed at start."""
        if slots > POOL_UIDS:
            raise ValueError(f"a vm runner has at most {POOL_UIDS} slots ({slots} asked)")
        self.images = images
        self.cache_dir = Path(cache_dir)
        self.accel = accel
        self.run_dir = Path(run_dir)
        self.qemu = qemu
        self.boot_timeout_s = boot_timeout_s
        self.uid_base = uid_base
        self.guest = guest
        self._slots = asyncio.Semaphore(slots)
        self._free = list(range(slots))
        self._start = StartOnce(self._setup)
        pool_size = pool_mib // (POOL_LIMITS.memory_mib + GUEST_MIB)
        self._pool = VmPool(self._boot_pooled, pool_size) if pool_size else None
        self._pool_uids = itertools.count()

    async def start(self) -> None:
        """Build or find the guest and choose the accelerator; raises when the host cannot run VMs."""
        await self._start.get()

    async def _setup(self) -> _Started:
        missing = [tool for tool in (self.qemu, "unshare", "setpriv") if shutil.which(tool) is None]
        if missing:
            raise RuntimeError(f"missing on this host: {', '.join(missing)} (Debian: qemu-system-x86)")
        if os.geteuid() != 0:
            raise RuntimeError("the vm runner needs root (it drops QEMU to an unprivileged uid)")
        guest = self.guest or await asyncio.to_thread(
            ensure_guest, self.cache_dir, lambda line: log.info("guest: %s", line)
        )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        _sweep_stale(self.run_dir)
        uids, uid_base = None, self.uid_base
        if uid_base is None:
            uids = claim_block(QEMU_UIDS)
            uid_base = uids.base
        try:
            accel = self.accel if self.accel != "auto" else await self._probe_accel(guest, uid_base)
        except BaseException:
            if uids is not None:
                uids.release()
            raise
        log.info("vm runner started: guest %s, accel %s, QEMU uids from %d", guest.key, accel, uid_base)
        return _Started(guest, accel, seccomp_profile(), uid_base, uids)

    async def chosen_accel(self) -> str:
        """The accelerator the runs use ("kvm" or "tcg"), probed once when `accel` is "auto"."""
        return (await self._start.get()).accel

    async def _probe_accel(self, guest: Guest, uid: int) -> str:
        """ "kvm" when a KVM guest boots as far as our init within PROBE_TIMEOUT_S, else "tcg".
        Without devices the init stops at once ("no pe-image block device") and powers off."""
        if guest.key in _accel_probe:
            return _accel_probe[guest.key]
        accel = "tcg"
        if os.access("/dev/kvm", os.R_OK | os.W_OK):
            with tempfile.TemporaryDirectory(dir=self.run_dir) as scratch:
                vm = await self._spawn(guest, "kvm", Path(scratch), 256, [], uid, 2 * PROBE_TIMEOUT_S)
                await vm.finish(PROBE_TIMEOUT_S, PROBE_TIMEOUT_S)
            if b"pe-init:" in vm.console.text:
                accel = "kvm"
            else:
                log.warning("/dev/kvm is there but a KVM guest did not boot: using TCG")
        _accel_probe[guest.key] = accel
        return accel

    async def close(self) -> None:
        """Discard the warm pool's guests and free the uid block; runs still going end on their own
        deadlines."""
        if self._pool is not None:
            await self._pool.close()
        state = await self._start.reset()
        if state is not None and state.uids is not None:
            state.uids.release()

    async def run(self, job: Job) -> RunOutput:
        try:
            state = await self._start.get()
        except Exception as error:
            log.error("vm runner cannot start: %s", error, extra={"run_id": job.id})
            return error_output(job, f"the vm runner cannot start: {error}")
        if not job.argv:
            return error_output(job, "nothing to run: the spec has no argv and the image no command")
        async with self._slots:
            slot = self._free.pop()
            scratch = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-run-", dir=self.run_dir))
            try:
                return await self._run(state, job, slot, scratch)
            except Exception as error:
                log.exception("vm run failed: %s", error, extra={"run_id": job.id})
                return error_output(job, f"the vm failed: {error}")
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
                self._free.append(slot)

    async def _run(self, state: _Started, job: Job, slot: int, scratch: Path) -> RunOutput:
        limits = job.spec.limits
        try:
            location = self.images.locate(job.image_digest)
        except LookupError as error:
            return error_output(job, str(error))
        archive = b"".join(iter_archive(self._input_entries(state, job, location, slot)))
        run_timeout_s = limits.wall_ms / 1000 + TEARDOWN_S
        pooled = self._pool.take(location.file) if self._pool and _fits_pool(limits, archive) else None
        if pooled is not None:
            try:
                with pooled.input_path.open("r+b") as device:
                    device.write(archive)
                await pooled.vm.go(self.boot_timeout_s)
                returncode = await pooled.vm.finish(self.boot_timeout_s, run_timeout_s)
                return _result(job, pooled.output_path, scratch / "outputs", returncode, pooled.vm.console)
            finally:
                await pooled.discard()
        input_path = scratch / "input.img"
        _make_device(input_path, len(archive), archive)
        output_path = scratch / "output.img"
        _make_device(output_path, _output_device_bytes(limits))
        devices = [
            ("pe-image", location.file, True),
            ("pe-input", input_path, True),
            ("pe-output", output_path, False),
        ]
        memory_mib = limits.memory_mib + GUEST_MIB
        lifetime_s = self.boot_timeout_s + run_timeout_s + KILL_WAIT_S
        vm = await self._spawn(
            state.guest, state.accel, scratch, memory_mib, devices, state.uid_base + slot, lifetime_s
        )
        returncode = await vm.finish(self.boot_timeout_s, run_timeout_s)
        return _result(job, output_path, scratch / "outputs", returncode, vm.console)

    async def _boot_pooled(self, image: Path) -> _PooledGuest:
        """A guest for the warm pool: devices sized for `POOL_LIMITS`, waiting for its job."""
        state = await self._start.get()
        scratch = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-pool-", dir=self.run_dir))
        guest = _PooledGuest(scratch)
        try:
            _make_device(guest.input_path, POOL_INPUT_BYTES)
            _make_device(guest.output_path, _output_device_bytes(POOL_LIMITS))
            devices = [
                ("pe-image", image, True),
                ("pe-input", guest.input_path, True),
                ("pe-output", guest.output_path, False),
            ]
            uid = state.uid_base + POOL_UIDS + next(self._pool_uids) % POOL_UIDS
            memory_mib = POOL_LIMITS.memory_mib + GUEST_MIB
            lifetime_s = POOL_WAIT_S + 2 * self.boot_timeout_s + MAX_LIMITS.wall_ms / 1000 + TEARDOWN_S
            guest.vm = await self._spawn(
                state.guest, state.accel, scratch, memory_mib, devices, uid, lifetime_s, wait=True
            )
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        return guest

    async def warm(self, digest: str) -> None:
        """Fill the warm pool for this image now (it otherwise fills after the image's first run)."""
        if self._pool is not None:
            await self._pool.fill(self.images.locate(digest).file)

    def _input_entries(self, state: _Started, job: Job, location: ImageLocation, slot: int) -> list:
        limits = job.spec.limits
        id_base = GUEST_ID_BASE + slot * ID_COUNT
        config = oci_config(
            root="/mnt/image/" + location.root if location.root else "/mnt/image",
            argv=job.argv,
            env=job.spec.env,
            limits=limits,
            work_source="/run/out/work",
            id_base=id_base,
            init_source=INIT_SOURCE,
            cgroups_path="/pe/run",
            seccomp=state.seccomp,
            network_namespace=False,  # the guest has no interface but lo: docs/vm.md
        )
        env = {
            "PE_WALL_S": f"{limits.wall_ms / 1000:.3f}",
            "PE_STREAM_BYTES": limits.stream_bytes,
            "PE_MEMORY_BYTES": limits.memory_mib << 20,
            "PE_WORK_BYTES": limits.memory_mib << 20,
            "PE_PIDS": limits.pids,
            "PE_UID": id_base,
        }
        entries = [
            file_entry("run.env", "".join(f"{k}={v}\n" for k, v in env.items()).encode()),
            file_entry("config.json", json.dumps(config).encode()),
            file_entry("stdin", job.spec.stdin),
        ]
        entries += [file_entry(f"work/{path}", data) for path, data in job.spec.files]
        return entries

    async def _spawn(
        self,
        guest: Guest,
        accel: str,
        scratch: Path,
        memory_mib: int,
        devices: Sequence[tuple[str, Path, bool]],
        uid: int,
        lifetime_s: float,
        wait: bool = False,
    ) -> _Vm:
        """Start QEMU. With `wait` the guest boots, prints "pe-init: ready" and waits for a line on
        its console before it reads its input device (the warm pool's guests). `timeout` kills
        QEMU after `lifetime_s` even if this process is gone (a crashed worker leaves no guest)."""
        files = [os.open(guest.kernel, os.O_RDONLY), os.open(guest.initrd, os.O_RDONLY)]
        args = [
            "-M", "microvm,isa-serial=on", "-accel", accel, "-cpu", "host" if accel == "kvm" else "max",
            "-smp", "1", "-m", str(memory_mib), "-nodefaults", "-no-user-config", "-display", "none",
            "-serial", "stdio", "-monitor", "none", "-no-reboot", "-sandbox", "on",
            "-kernel", f"/proc/self/fd/{files[0]}", "-initrd", f"/proc/self/fd/{files[1]}",
            "-append", kernel_command_line(accel) + " pe.wait" * wait,
        ]  # fmt: skip
        try:
            for number, (serial, path, readonly) in enumerate(devices, start=1):
                # QEMU also opens a writable device read-only (for its lock): the set holds both.
                for mode in (os.O_RDONLY,) if readonly else (os.O_RDONLY, os.O_RDWR):
                    files.append(os.open(path, mode))
                    args += ["-add-fd", f"fd={files[-1]},set={number}"]
                drive = f"file=/dev/fdset/{number},if=none,id={serial},format=raw"
                args += ["-drive", drive + (",readonly=on" if readonly else "")]
                args += ["-device", f"virtio-blk-device,drive={serial},serial={serial}"]
            command = [
                "unshare", "--net", "--ipc", "--uts", "--mount", "--pid", "--fork",
                "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
                "timeout", "--foreground", "--signal=KILL", f"{lifetime_s:.0f}", self.qemu, *args,
            ]  # fmt: skip
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                pass_fds=files,
                start_new_session=True,
                cwd=scratch,
            )
        finally:
            for fd in files:
                os.close(fd)
        return _Vm(process)


class _Vm:
    """One QEMU process; its console is read in the background."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.console = _Console(bytearray())
        self.ready = asyncio.Event()
        self.running = asyncio.Event()
        self.done = asyncio.Event()
        self.started_at = time.monotonic()
        self.ready_at: float | None = None  # when "pe-init: ready" came
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while chunk := await self.process.stdout.read(4096):
            text = self.console.text
            text += chunk
            del text[:-CONSOLE_BYTES]
            if not self.ready.is_set() and READY in text:
                self.ready_at = time.monotonic()
                self.ready.set()
            if not self.running.is_set() and RUNNING in text:
                self.running.set()
                self.console.running = True
            if self.running.is_set() and DONE in text:
                self.done.set()
                return

    @property
    def alive(self) -> bool:
        return not self.reader.done()

    async def go(self, boot_timeout_s: float) -> None:
        """Let a waiting guest read its input device, once it is ready to hear it (a line sent
        earlier could arrive before anything reads the console, and be lost)."""
        assert self.process.stdin is not None
        if await self._within(self.ready, boot_timeout_s) and self.ready.is_set():
            self.process.stdin.write(b"go\n")

    async def _within(self, event: asyncio.Event, timeout_s: float) -> bool:
        """Whether `event` is set, or the console ends, within `timeout_s`."""
        waiter = asyncio.ensure_future(event.wait())
        done, _ = await asyncio.wait({waiter, self.reader}, timeout=timeout_s, return_when=FIRST_COMPLETED)
        waiter.cancel()
        return bool(done)

    async def finish(self, boot_timeout_s: float, run_timeout_s: float) -> int | None:
        """Wait for the run to start (within `boot_timeout_s`) and for the guest to be done (within
        `run_timeout_s` of the start); 0 when the guest said it was done, else QEMU's exit status,
        or None when it had to be killed."""
        try:
            started = await self._within(self.running, boot_timeout_s)
            if started and (await asyncio.wait({self.reader}, timeout=run_timeout_s))[0]:
                return 0 if self.done.is_set() else await self.process.wait()
            return None
        finally:
            await self.kill()

    async def kill(self) -> None:
        """Kill QEMU first (the innermost process: unshare → timeout → qemu), so that its parents
        reap it and exit in turn; then anything left in the process group. Killing a parent first
        would leave QEMU a zombie for the host's init to reap."""
        process = self.process
        deadline = time.monotonic() + KILL_WAIT_S
        while process.returncode is None and time.monotonic() < deadline:
            for leaf in _leaves(process.pid):  # none yet if unshare has not forked
                with contextlib.suppress(ProcessLookupError):
                    os.kill(leaf, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 0.1)
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # timeout --foreground keeps QEMU in the group
            await process.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.reader, KILL_WAIT_S)


def _sweep_stale(run_dir: Path) -> None:
    """Remove the run directories of runners whose process is gone (named `<pid>-run-…`); their
    QEMU processes end by themselves (`timeout` in `_spawn`)."""
    for entry in run_dir.iterdir():
        pid = entry.name.partition("-")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            log.warning("removing the run directory of a vm runner that is gone: %s", entry)
            shutil.rmtree(entry, ignore_errors=True)


def _leaves(pid: int) -> list[int]:
    """The descendants of `pid` that have no children themselves."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [leaf for child in children for leaf in (_leaves(int(child)) or [int(child)])]


def kernel_command_line(accel: str) -> str:
    """`rootfstype=ramfs`: the initramfs is unpacked into ramfs rather than tmpfs, so crun (run from
    it, read-only) can tell it needs no sealed copy of itself (guest/init.c, docs/vm.md).
    Under TCG the guest kernel's TSC calibration against the emulated PIT fails when the host is
    busy, and the boot then hangs; TCG's TSC is the host's, so its frequency is given instead."""
    line = "console=ttyS0 quiet panic=-1 rootfstype=ramfs"
    if accel == "tcg":
        mhz = host_cpu_mhz()
        if mhz:
            line += f" tsc_early_khz={round(mhz * 1000)}"
    return line


def host_cpu_mhz() -> float | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.partition(":")[2])
    return None


def _output_device_bytes(limits: Limits) -> int:
    """Room for all of /work (a tmpfs of the memory limit), both capped streams and the headers."""
    return (limits.memory_mib << 20) + 2 * (limits.stream_bytes + 1) + (4 << 20)


def _round_up(n: int, unit: int) -> int:
    return -(-n // unit) * unit


def _make_device(path: Path, size: int, data: bytes = b"") -> None:
    """A raw device image of `size` bytes rounded up to whole sectors, starting with `data`; sparse."""
    with path.open("wb") as device:
        device.write(data)
        device.truncate(_round_up(size, SECTOR))


def _fits_pool(limits: Limits, archive: bytes) -> bool:
    """Whether a pooled guest (booted for `POOL_LIMITS`) can run a job with these limits and input."""
    return (
        limits.memory_mib <= POOL_LIMITS.memory_mib
        and _output_device_bytes(limits) <= _output_device_bytes(POOL_LIMITS)
        and len(archive) <= POOL_INPUT_BYTES
    )


@dataclass
class _PooledGuest:
    scratch: Path
    vm: _Vm | None = None

    @property
    def input_path(self) -> Path:
        return self.scratch / "input.img"

    @property
    def output_path(self) -> Path:
        return self.scratch / "output.img"

    @property
    def alive(self) -> bool:
        """Still waiting, and not so long that it may stop waiting before its job reaches it."""
        vm = self.vm
        return vm is not None and vm.alive and time.monotonic() - vm.started_at < POOL_WAIT_S - 60

    async def discard(self) -> None:
        if self.vm is not None:
            await self.vm.kill()
        shutil.rmtree(self.scratch, ignore_errors=True)


@dataclass
class _GuestReport:
    status: dict[str, str]
    stdout: bytes
    stderr: bytes
    crun_log: str
    notes: list[str]


def _read_output_device(path: Path, work: Path, file_cap: int) -> _GuestReport:
    """The guest's archive: its status, streams and log, and /work extracted under `work` (regular
    files and directories with valid names only; collect_outputs then reads them like the sandbox's).
    Past `file_cap` bytes a file's content is not copied, only its size kept (sparse)."""
    report = _GuestReport({}, b"", b"", "", [])
    work.mkdir()
    reader = CpioReader(max_entry_bytes=1 << 40)  # streamed: sizes are bounded by the device
    name, size, parts, sink = "", 0, [], None
    try:
        with path.open("rb") as device:
            while chunk := device.read(1 << 20):
                for event in reader.feed(chunk):
                    if isinstance(event, EntryStart):
                        name, size, parts = event.entry.name, event.size, []
                        sink = _extract(work, event.entry, report.notes)
                    elif isinstance(event, EntryData):
                        if sink is not None:
                            sink.write(event.data[: max(0, file_cap - sink.tell())])
                        elif name in _GUEST_FILES:
                            parts.append(event.data)
                    elif isinstance(event, EntryEnd):
                        if sink is not None:
                            sink.truncate(size)
                            sink.close()
                            sink = None
                        elif name in _GUEST_FILES:
                            _GUEST_FILES[name](report, b"".join(parts))
                    else:
                        return report
        report.notes.append("the guest's output archive has no end")
    except CpioError as error:
        report.notes.append(f"the guest's output archive is cut short ({error.message})")
    finally:
        if sink is not None:
            sink.close()
    return report


def _set_status(report: _GuestReport, data: bytes) -> None:
    report.status = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)


_GUEST_FILES = {
    "status": _set_status,
    "stdout": lambda report, data: setattr(report, "stdout", data),
    "stderr": lambda report, data: setattr(report, "stderr", data),
    "crun.log": lambda report, data: setattr(
        report, "crun_log", data[:4096].decode(errors="replace").strip()
    ),
}


def _extract(work: Path, entry: Entry, notes: list[str]) -> BinaryIO | None:
    """Make `entry` under `work` if it is a directory or a file of /work; the open file to fill."""
    if entry.name == "work" or not entry.name.startswith("work/"):
        return None
    name = entry.name.removeprefix("work/")
    try:
        target = work / normalize_path(name)
    except WireError:
        notes.append(f"left out an output with an invalid name: {name!r}")
        return None
    if entry.is_dir:
        target.mkdir(parents=True, exist_ok=True)
    elif entry.is_file:
        target.parent.mkdir(parents=True, exist_ok=True)
        return target.open("wb")
    else:
        notes.append(f"left out {name!r}: not a regular file")
    return None


def _result(job: Job, device: Path, work: Path, returncode: int | None, console: _Console) -> RunOutput:
    limits = job.spec.limits
    report = _read_output_device(device, work, limits.output_bytes + MAX_INPUT_BYTES + 1)
    status = report.status
    if "returncode" not in status:
        if returncode is None and not console.running:
            why = f"the guest did not boot within its deadline; console: {console.tail()}"
        elif returncode is None:
            why = (
                f"the guest did not finish within {limits.wall_ms} ms plus {TEARDOWN_S:.0f} s; "
                f"console: {console.tail()}"
            )
        elif b"Kernel panic" in console.text:
            why = f"the guest kernel panicked: {console.line_with('Kernel panic')}"
        else:
            why = f"the guest stopped before the run finished (QEMU exit {returncode}): {console.tail()}"
        log.warning("vm run failed: %s", why, extra={"run_id": job.id})
        return error_output(job, why)
    cap = limits.stream_bytes
    overflow = next((name for name in ("stdout", "stderr") if len(getattr(report, name)) > cap), "")
    stopped = Stop.TIMEOUT if status.get("timedout") == "1" else Stop.OUTPUT_LIMIT if overflow else None
    captured = Captured(
        returncode=int(status["returncode"]),
        stdout=report.stdout[:cap],
        stderr=report.stderr[:cap],
        stdout_truncated=len(report.stdout) > cap,
        stderr_truncated=len(report.stderr) > cap,
        wall_ms=(float(status["ended"]) - float(status["started"])) * 1000,
        stopped=stopped,
        overflow=overflow,
    )
    usage = Usage(
        cpu_ms=int(status.get("cpu_usec") or 0) / 1000,
        peak_kib=int(status.get("peak_bytes") or 0) >> 10,
        oom_events=int(status.get("oom_kill") or 0),
    )
    inputs = dict(job.spec.files)
    outputs = collect_outputs(
        work, inputs, total_bytes=limits.output_bytes, max_files=MAX_FILES, globs=job.outputs
    )
    outputs.notes.extend(report.notes)
    return _output(job, captured, usage, outputs, report.crun_log)
