"""The `sandbox` runner: each run in crun, on the host, in its own namespaces and cgroup.

Per run: a directory on the runner's tmpfs holding config.json and the /work bind source (owned by
the slot's host uid, in the runner's own uid block: worker/uids.py), a cgroup with the run's limits,
then one process, `[nsenter --mount=NS] crun run`.
crun kill and crun delete are spawned only when a run is stopped or crun leaves state behind.
See docs/sandbox.md for the mechanisms and the measured costs.
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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from catalog.store import ImageLocation
from guest.oci import oci_config, seccomp_profile
from wire.result import Result, RunOutput, Status, StreamInfo
from wire.spec import DEFAULT_LIMITS, MAX_FILES, MAX_INPUT_BYTES, MAX_LIMITS, Limits
from worker.cgroups import CgroupLayout, CgroupMode, Cgroups, RunCgroup, Usage, detect_layout
from worker.mounts import RunnerMounts, SetupError, pid_alive, run_command, unmount_under
from worker.process import Captured, Stop, run_capped
from worker.runner import ImageLocator, Job, StartOnce, error_output
from worker.uids import UidBlock, claim_uid_block
from worker.workdir import Outputs, collect_outputs, write_inputs

log = logging.getLogger("pe.worker.sandbox")

RUN_DIR = Path("/run/pe")  # runtime state: mounts, crun's state, per-run directories
INIT = Path("/usr/bin/tini-static")  # Debian's `tini` package
CLEANUP_DELAY_S = 0.005  # after a run, when its directory and cgroup are removed
CRUN_LOG_LIMIT = 4096  # bytes of crun's own error log quoted in a result
_tokens = itertools.count()


@dataclass
class _Started:
    token: str
    mounts: RunnerMounts
    cgroups: Cgroups
    crun: list[str]  # the command up to the crun subcommand
    seccomp: dict
    uids: UidBlock


class SandboxRunner:
    name = "sandbox"

    def __init__(
        self,
        images: ImageLocator,
        slots: int,
        *,
        run_dir: Path = RUN_DIR,
        crun: str = "crun",
        init: Path = INIT,
    ) -> None:
        """`images` finds each job's image (normally the ImageStore). The runner's own state lives
        under `run_dir`, as its mounts must be reachable by unprivileged uids (see `worker.mounts`)."""
        self.images = images
        self.state_base = Path(run_dir) / "sandbox"
        self.slots = slots
        self.crun = crun
        self.init = init
        self._slots = asyncio.Semaphore(slots)
        self._free = list(range(slots))
        self._start = StartOnce(self._setup)
        self._runs = itertools.count(1)
        self._cleanups: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        """Prepare the host side (idempotent; `run` calls it). Raises SetupError or CgroupError when
        the host cannot run sandboxes."""
        await self._start.get()

    async def _setup(self) -> _Started:
        if os.geteuid() != 0:
            raise SetupError("the sandbox runner needs root (mounts, cgroups, uid mappings)")
        crun = shutil.which(self.crun)
        missing = [tool for tool in ("nsenter", "unshare", "mount") if shutil.which(tool) is None]
        if crun is None or missing or not self.init.is_file():
            absent = [self.crun] * (crun is None) + missing + [str(self.init)] * (not self.init.is_file())
            raise SetupError(f"missing on this host: {', '.join(absent)} (Debian: crun, util-linux, tini)")
        layout = detect_layout()
        await sweep_stale(self.state_base, layout)
        token = f"{os.getpid()}-{next(_tokens)}"
        mounts = RunnerMounts(self.state_base / token)
        cgroups = Cgroups(layout, token)
        hybrid = layout.unified if layout.mode is CgroupMode.HYBRID else None
        uids = claim_uid_block(self.slots)
        try:
            work_bytes = self.slots * (MAX_LIMITS.memory_mib << 20) + MAX_INPUT_BYTES
            await mounts.setup(work_bytes, unmount_in_ns=hybrid)
            cgroups.setup()
        except BaseException:
            cgroups.destroy()
            await mounts.teardown()
            uids.release()
            raise
        log.info(
            "sandbox runner started: state %s, cgroups %s%s, %d slots, host uids from %d",
            mounts.state,
            layout.mode,
            " (crun in a mount namespace without cgroup2)" if hybrid else "",
            self.slots,
            uids.base,
        )
        crun_command = [*mounts.prefix, crun, "--root", str(mounts.crun_root)]
        return _Started(token, mounts, cgroups, crun_command, seccomp_profile(), uids)

    async def close(self) -> None:
        """Kill anything left, unmount the images and the tmpfs, drop the namespace and cgroups."""
        state = await self._start.reset()
        if state is None:
            return
        await asyncio.gather(*self._cleanups)
        state.cgroups.destroy()
        await state.mounts.teardown()
        state.uids.release()

    async def run(self, job: Job) -> RunOutput:
        try:
            state = await self._start.get()
        except Exception as error:
            log.error("sandbox runner cannot start: %s", error, extra={"run_id": job.id})
            return error_output(job, f"the sandbox runner cannot start: {error}")
        if not job.argv:
            return error_output(job, "nothing to run: the spec has no argv and the image no command")
        async with self._slots:
            slot = self._free.pop()
            try:
                return await self._run(state, job, slot)
            except Exception as error:
                log.exception(
                    "sandbox run failed: %s", error, extra={"run_id": job.id, "image": job.image_digest}
                )
                return error_output(job, f"the sandbox failed: {error}")
            finally:
                self._free.append(slot)

    def _bundle(
        self,
        state: _Started,
        bundle: Path,
        root: Path,
        argv: Sequence[str],
        env: Iterable[tuple[str, str]],
        limits: Limits,
        uid: int,
        cgroup: RunCgroup,
    ) -> list[str]:
        """Write the bundle's config.json; the crun command line that runs it."""
        config = oci_config(
            root=str(root),
            argv=argv,
            env=env,
            limits=limits,
            work_source=str(bundle / "work"),
            id_base=uid,
            init_source=str(self.init),
            cgroups_path=cgroup.crun_path,
            seccomp=state.seccomp,
        )
        (bundle / "config.json").write_text(json.dumps(config))
        return [*state.crun, f"--log={bundle / 'crun.log'}", "run", "--bundle", str(bundle), bundle.name]

    @staticmethod
    def _make_bundle(state: _Started, name: str, uid: int) -> Path:
        bundle = state.mounts.work / name
        bundle.mkdir(mode=0o700)
        (bundle / "work").mkdir(mode=0o700)
        os.chown(bundle / "work", uid, uid)
        return bundle

    async def _run(self, state: _Started, job: Job, slot: int) -> RunOutput:
        limits = job.spec.limits
        name = f"pe-{state.token}-{next(self._runs)}"  # the container id and the cgroup's name
        uid = state.uids.slot_uid(slot)
        root = await state.mounts.image(self._locate(job.image_digest))
        bundle = self._make_bundle(state, name, uid)
        cgroup: RunCgroup | None = None
        try:
            write_inputs(bundle / "work", job.spec.files, uid)
            cgroup = state.cgroups.create(name, limits)
            command = self._bundle(state, bundle, root, job.argv, job.spec.env, limits, uid, cgroup)
            captured = await run_capped(
                command,
                stdin=job.spec.stdin,
                stream_bytes=limits.stream_bytes,
                timeout_s=limits.wall_ms / 1000,
                stop=lambda: self._crun(state, "kill", name, "KILL"),
            )
            if (state.mounts.crun_root / name).exists():
                await self._crun(state, "delete", "-f", name)
            usage = cgroup.usage()
            crun_log = _head(bundle / "crun.log")
            outputs = collect_outputs(
                bundle / "work",
                dict(job.spec.files),
                total_bytes=limits.output_bytes,
                max_files=MAX_FILES,
                globs=job.outputs,
            )
        finally:
            self._clean_up_later(bundle, cgroup)
        return _output(job, captured, usage, outputs, crun_log)

    def _clean_up_later(self, bundle: Path, cgroup: RunCgroup | None) -> None:
        """Remove a finished run's directory and cgroup (about 0.7 ms, most of it rmdir of cgroups) a
        moment later, on the event loop: by then the result is on its way, and the loop is usually
        idle, waiting for other runs' processes. (A thread measured slower: it competes with the
        loop for the GIL and for this machine's two cores.)"""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def clean_up() -> None:
            try:
                _remove(bundle, cgroup)
            finally:
                done.set_result(None)

        loop.call_later(CLEANUP_DELAY_S, clean_up)
        self._cleanups.add(done)
        done.add_done_callback(self._cleanups.discard)

    def _locate(self, digest: str) -> ImageLocation:
        try:
            return self.images.locate(digest)
        except LookupError as error:
            raise SetupError(str(error)) from None

    async def _crun(self, state: _Started, *args: str) -> None:
        try:
            await run_command(*state.crun, *args)
        except SetupError as error:
            log.warning("crun %s failed: %s", args[0], error, extra={"container": args[-1]})

    async def primitive_command(
        self, digest: str, argv: Sequence[str], limits: Limits = DEFAULT_LIMITS
    ) -> tuple[Path, list[str]]:
        """The bare crun invocation of a run, for `pe bench` to time from a shell loop: a bundle made
        once (no input files) and the command line a run would spawn. Runs of it must not overlap;
        the bundle and its cgroup last until `close`."""
        state = await self._start.get()
        name = f"pe-{state.token}-bench{next(self._runs)}"
        root = await state.mounts.image(self._locate(digest))
        uid = state.uids.slot_uid(0)
        bundle = self._make_bundle(state, name, uid)
        cgroup = state.cgroups.create(name, limits)
        return bundle, self._bundle(state, bundle, root, argv, (), limits, uid, cgroup)


def _remove(bundle: Path, cgroup: RunCgroup | None) -> None:
    if cgroup is not None:
        cgroup.remove()
    shutil.rmtree(bundle, ignore_errors=True)


def _head(path: Path) -> str:
    try:
        with path.open("rb") as f:
            return f.read(CRUN_LOG_LIMIT).decode(errors="replace").strip()
    except FileNotFoundError:
        return ""


def _decode_status(returncode: int) -> tuple[int | None, int | None]:
    """(exit code, signal) from crun's exit status: crun (and tini) exit with 128+N when the program
    died of signal N; negative when crun itself was killed."""
    if returncode < 0:
        return None, -returncode
    if 128 < returncode <= 128 + 64:
        return None, returncode - 128
    return returncode, None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _status(
    job: Job, cap: Captured, usage: Usage, exit_code: int | None, sig: int | None, crun_log: str
) -> tuple[Status, str]:
    limits = job.spec.limits
    if crun_log and cap.returncode != 0 and cap.stopped is None:
        return Status.ERROR, f"crun failed (exit code {cap.returncode}): {crun_log}"
    if cap.stopped is Stop.TIMEOUT:
        return (
            Status.TIMEOUT,
            f"killed at the wall-clock limit of {limits.wall_ms} ms; the output written before is kept",
        )
    if cap.stopped is Stop.OUTPUT_LIMIT:
        return Status.OUTPUT_LIMIT, (
            f"{cap.overflow} passed its limit of {limits.stream_bytes} bytes; the run was killed and "
            f"the first {limits.stream_bytes} bytes are kept"
        )
    if usage.oom_events:
        return (
            Status.OOM,
            f"out of memory: the {limits.memory_mib} MiB limit was reached and the kernel killed a process",
        )
    if sig is not None:
        message = f"killed by {_signal_name(sig)}"
        if sig == signal.SIGXFSZ:
            message += f": a file reached the size limit of {limits.file_bytes} bytes"
        return Status.SIGNAL, message
    return (Status.OK, "") if exit_code == 0 else (Status.EXIT, "")


def _output(job: Job, cap: Captured, usage: Usage, outputs: Outputs, crun_log: str) -> RunOutput:
    exit_code, sig = _decode_status(cap.returncode)
    status, message = _status(job, cap, usage, exit_code, sig, crun_log)
    if crun_log and status is not Status.ERROR:
        log.warning("crun reported: %s", crun_log, extra={"run_id": job.id})
    result = Result(
        id=job.id,
        image_id=job.image_id,
        image_digest=job.image_digest,
        status=status,
        exit_code=exit_code,
        signal=sig,
        wall_ms=round(cap.wall_ms, 3),
        cpu_ms=round(usage.cpu_ms, 3),
        max_rss_kib=usage.peak_kib,
        stdout=StreamInfo(len(cap.stdout), cap.stdout_truncated),
        stderr=StreamInfo(len(cap.stderr), cap.stderr_truncated),
        files=outputs.files,
        limits=job.spec.limits,
        runner=job.runner,
        message="; ".join(filter(None, [message, *outputs.notes])),
    )
    return RunOutput(result, cap.stdout, cap.stderr, outputs.data)


async def sweep_stale(base: Path, layout: CgroupLayout) -> None:
    """Clean up after runners whose process is gone (a crash leaves mounts, loop devices and cgroups,
    maybe with processes still in them): state directories are named `<pid>-<n>`."""
    if not base.is_dir():
        return
    for entry in base.iterdir():
        pid = entry.name.partition("-")[0]
        if not pid.isdigit() or pid_alive(int(pid)):
            continue
        log.warning("cleaning up after a sandbox runner that is gone: %s", entry)
        Cgroups(layout, entry.name).destroy()
        await unmount_under(entry)
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(entry)
