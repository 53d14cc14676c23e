"""The sandbox runner's own duties: status decoding, the bare primitive, clean start-up and shut-down."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.images import FixedImages
from wire.result import Status
from wire.spec import Limits, parse_spec
from worker.cgroups import Usage, detect_layout
from worker.process import Captured, Stop
from worker.runner import Job
from worker.sandbox import SandboxRunner, _decode_status, _output
from worker.workdir import Outputs

DEAD_PID = (1 << 22) + 1  # above any pid_max


def job(argv: list[str], digest: str = "sha256:" + "0" * 64, **spec) -> Job:
    parsed = parse_spec({"image": "busybox", "argv": argv, **spec})
    return Job("id", parsed, parsed.argv, "busybox", digest, "sandbox")


def captured(returncode: int, stopped: Stop | None = None) -> Captured:
    return Captured(returncode, b"", b"", False, False, 12.5, stopped, "stdout" if stopped else "")


@pytest.mark.parametrize(
    ("code", "expected"),
    [(0, (0, None)), (3, (3, None)), (128, (128, None)), (137, (None, 9)), (139, (None, 11)),
     (192, (None, 64)), (193, (193, None)), (-9, (None, 9))],
)  # fmt: skip
def test_decode_status(code: int, expected: tuple) -> None:
    assert _decode_status(code) == expected


@pytest.mark.parametrize(
    ("cap", "oom", "log", "status"),
    [
        (captured(0), 0, "", Status.OK),
        (captured(2), 0, "", Status.EXIT),
        (captured(139), 0, "", Status.SIGNAL),
        (captured(137), 1, "", Status.OOM),
        (captured(0), 1, "", Status.OOM),  # a child was killed; the program went on
        (captured(137, Stop.TIMEOUT), 1, "", Status.TIMEOUT),
        (captured(137, Stop.OUTPUT_LIMIT), 0, "", Status.OUTPUT_LIMIT),
        (captured(1), 0, "mount `/x`: Permission denied", Status.ERROR),
        (captured(0), 0, "a warning", Status.OK),
    ],
)
def test_status_precedence(cap: Captured, oom: int, log: str, status: Status) -> None:
    out = _output(job(["true"]), cap, Usage(1.0, 100, oom), Outputs(), log)
    assert out.result.status is status
    assert (status is Status.ERROR) == ("crun failed" in out.result.message)


needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("crun") is None, reason="needs root and crun (mounts, cgroups)"
)


@pytest.fixture
def image(tmp_path: Path) -> tuple[Path, str]:
    """A minimal image: a static busybox and the mount points."""
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox-static is not installed")
    root = tmp_path / "root"
    for directory in ("bin", "work", "tmp", "proc", "dev", "sys"):
        (root / directory).mkdir(parents=True)
    shutil.copy(busybox, root / "bin/busybox")
    path = tmp_path / "image.erofs"
    subprocess.run(["mkfs.erofs", "--quiet", "--all-root", str(path), str(root)], check=True)
    return path, "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A runtime directory other users can traverse (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="pe-test-", dir="/run"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path)


def mounts_under(directory: Path) -> list[str]:
    return [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if str(directory) in line
    ]


def loops_backed_by(path: Path) -> list[str]:
    found = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        if backing.read_text().strip() == str(path):
            found.append(backing.parent.parent.name)
    return found


@pytest.mark.sandbox
@needs_root
def test_primitive_command_and_clean_close(tmp_path: Path, run_dir: Path, image: tuple[Path, str]) -> None:
    runner = SandboxRunner(FixedImages({image[1]: image[0]}), slots=1, run_dir=run_dir)

    async def main() -> tuple[Path, list[str]]:
        return await runner.primitive_command(image[1], ["/bin/busybox", "echo", "bare"], Limits())

    loop = asyncio.new_event_loop()
    try:
        bundle, command = loop.run_until_complete(main())
        assert command[-4:] == ["run", "--bundle", str(bundle), bundle.name]
        for _ in range(2):  # the same command again and again, as a benchmark loop runs it
            done = subprocess.run(command, capture_output=True, timeout=30)
            assert (done.returncode, done.stdout, done.stderr) == (0, b"bare\n", b"")
        state = bundle.parents[2]
        assert mounts_under(state) and loops_backed_by(image[0])
        loop.run_until_complete(runner.close())
    finally:
        loop.close()
    assert mounts_under(state) == []
    assert loops_backed_by(image[0]) == []
    assert not state.exists()
    assert all(not (h / "pe" / state.name).exists() for h in detect_layout().hierarchies)


@pytest.mark.sandbox
@needs_root
def test_start_sweeps_what_a_dead_runner_left(tmp_path: Path, run_dir: Path, image: tuple[Path, str]) -> None:
    stale = run_dir / "sandbox" / f"{DEAD_PID}-0"
    (stale / "mnt").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "stale", str(stale / "mnt")], check=True)
    layout = detect_layout()
    cgroup = layout.hierarchies[0] / "pe" / stale.name / "leftover"
    cgroup.mkdir(parents=True)
    runner = SandboxRunner(FixedImages({image[1]: image[0]}), slots=1, run_dir=run_dir)

    async def main() -> Status:
        try:
            await runner.start()
            return (await runner.run(job(["/bin/busybox", "true"], image[1]))).result.status
        finally:
            await runner.close()

    assert asyncio.run(main()) is Status.OK
    assert mounts_under(stale) == [] and not stale.exists()
    assert not cgroup.parent.exists()


@pytest.mark.sandbox
@needs_root
def test_infrastructure_failures_are_error_results(
    tmp_path: Path, run_dir: Path, image: tuple[Path, str]
) -> None:
    async def main() -> list:
        images = FixedImages({image[1]: image[0], "sha256:" + "1" * 64: tmp_path / "missing.erofs"})
        good = SandboxRunner(images, slots=1, run_dir=run_dir)
        broken = SandboxRunner(images, slots=1, run_dir=run_dir, init=tmp_path / "no-init")
        try:
            return [
                await good.run(job(["true"], "sha256:" + "1" * 64)),
                await broken.run(job(["true"], image[1])),
            ]
        finally:
            await good.close()
            await broken.close()

    missing, broken = asyncio.run(main())
    assert missing.result.status is Status.ERROR and "missing.erofs" in missing.result.message
    assert broken.result.status is Status.ERROR and "no-init" in broken.result.message


@pytest.mark.sandbox
@needs_root
def test_two_runners_on_one_host_run_programs_as_different_host_uids(
    run_dir: Path, image: tuple[Path, str]
) -> None:
    """Like a `pe serve` and a `pe worker` on one host: each runner claims its own uid block."""

    async def main() -> list[bytes]:
        images = FixedImages({image[1]: image[0]})
        runners = [SandboxRunner(images, slots=1, run_dir=run_dir) for _ in range(2)]
        try:
            read_map = job(["/bin/busybox", "cat", "/proc/self/uid_map"], image[1])
            return [(await runner.run(read_map)).stdout for runner in runners]
        finally:
            for runner in runners:
                await runner.close()

    maps = asyncio.run(main())
    (inside, first, count), (_, second, _) = (uid_map.split() for uid_map in maps)
    assert inside == b"0" and count == b"65536"
    assert int(first) >= 200_000 and abs(int(second) - int(first)) >= int(count)
