"""What every runner must do with real programs, asserted on real results (DESIGN.md, "Inside the sandbox").

The file is parametrised by runner: `RUNNERS` maps a name to a factory, and each case runs once per
runner against the busybox image (the catalogue's, or one made here from busybox-static) and, where
built, the python3 image.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import pytest

from catalog.store import ImageLocation, ImageStore
from pe.settings import load_settings
from tests.support.images import FixedImages
from wire.result import RunOutput, Status
from wire.spec import parse_spec
from worker.runner import ImageLocator, Job, Runner

pytestmark = pytest.mark.sandbox

SIGKILL, SIGSEGV, SIGXFSZ = 9, 11, 25


def _sandbox_runner(images: ImageLocator) -> Runner:
    from worker.sandbox import SandboxRunner

    return SandboxRunner(images, slots=2)


def _sandbox_missing() -> str | None:
    if os.geteuid() != 0:
        return "the sandbox runner needs root (mounts, cgroups, uid mappings)"
    if shutil.which("crun") is None:
        return "crun is not installed"
    return None


def _vm_runner(images: ImageLocator) -> Runner:
    from guest.build import ensure_guest
    from worker.vm import VmRunner

    cache_dir = load_settings().cache_dir
    guest = ensure_guest(cache_dir)  # here, not in the first run: a fresh machine compiles a kernel
    return VmRunner(images, slots=2, cache_dir=cache_dir, pool_mib=1024, guest=guest)


def _vm_missing() -> str | None:
    if os.geteuid() != 0:
        return "the vm runner needs root (it drops QEMU to an unprivileged uid)"
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86 is not installed"
    return None


@dataclass(frozen=True)
class RunnerKind:
    factory: Callable[[ImageLocator], Runner]
    missing: Callable[[], str | None]  # why this host cannot test it, or None
    host_visible: bool  # the program's processes are processes of this host
    startup_s: float = 0.0  # what a run may take before its program starts (a VM boots)
    cpu_scale: float = 1.0  # how much slower CPU-bound work runs (a VM under TCG: about 25x)


RUNNERS = {
    "sandbox": RunnerKind(_sandbox_runner, _sandbox_missing, host_visible=True),
    "vm": RunnerKind(_vm_runner, _vm_missing, host_visible=False, startup_s=10.0, cpu_scale=4.0),
}


@dataclass(frozen=True)
class Image:
    id: str
    digest: str
    location: ImageLocation


def _store_image(image_id: str) -> Image | None:
    """The store's current image of `image_id`, where the service would run it (loose, or in a pack)."""
    store = ImageStore(load_settings().images_dir)
    meta = store.current(image_id)
    return None if meta is None else Image(image_id, meta.digest, store.locate(meta.digest))


def _busybox_image(tmp: Path) -> Image:
    """The catalogue's busybox image, or the same made here: busybox-static and its applet links."""
    built = _store_image("busybox")
    if built is not None:
        return built
    busybox = shutil.which("busybox")
    if busybox is None or shutil.which("mkfs.erofs") is None:
        pytest.skip("no busybox image is built and busybox-static or erofs-utils is missing to make one")
    root = tmp / "rootfs"
    for directory in ("bin", "work", "tmp", "proc", "dev", "sys"):
        (root / directory).mkdir(parents=True)
    shutil.copy(busybox, root / "bin/busybox")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    image = tmp / "busybox.erofs"
    subprocess.run(["mkfs.erofs", "--quiet", "--all-root", str(image), str(root)], check=True)
    return Image("busybox", "sha256:" + hashlib.sha256(image.read_bytes()).hexdigest(), ImageLocation(image))


class Harness:
    """A runner with its own event loop in a background thread, so a test can look at the host while
    a run goes on."""

    def __init__(self, name: str, kind: RunnerKind, runner: Runner, images: dict[str, Image]) -> None:
        self.name, self.kind, self.runner, self.images = name, kind, runner, images
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=f"{name}-loop", daemon=True)
        self.thread.start()

    def job(self, argv: list[str], *, image: str = "busybox", **spec: object) -> Job:
        if image not in self.images:
            pytest.skip(f"the {image} image is not built (`pe images build {image}`)")
        parsed = parse_spec({"image": image, "argv": argv, "runner": self.name, **spec})
        found = self.images[image]
        return Job(
            id=uuid.uuid4().hex, spec=parsed, argv=parsed.argv, image_id=found.id, image_digest=found.digest,
            runner=self.name,
        )  # fmt: skip

    def start(self, argv: list[str], **spec: object) -> Future[RunOutput]:
        return asyncio.run_coroutine_threadsafe(self.runner.run(self.job(argv, **spec)), self.loop)

    def run(self, argv: list[str], **spec: object) -> RunOutput:
        return self.start(argv, **spec).result(timeout=60)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.close(), self.loop).result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


@pytest.fixture(scope="module", params=sorted(RUNNERS))
def runner(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    kind = RUNNERS[request.param]
    reason = kind.missing()
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp(request.param)
    images = {"busybox": _busybox_image(tmp)}
    python = _store_image("python3")
    if python is not None:
        images["python3"] = python
    locator = FixedImages({image.digest: image.location for image in images.values()})
    harness = Harness(request.param, kind, kind.factory(locator), images)
    yield harness
    harness.close()


def b64(data: bytes) -> dict[str, str]:
    return {"base64": base64.b64encode(data).decode()}


def lines(data: bytes) -> list[str]:
    return data.decode().splitlines()


def test_echo(runner: Harness) -> None:
    out = runner.run(["echo", "hello", "world"])
    assert out.result.status == Status.OK, out.result
    assert (out.result.exit_code, out.result.signal) == (0, None)
    assert out.stdout == b"hello world\n"
    assert out.stderr == b""
    assert out.result.files == [] and out.files == {}
    assert out.result.runner == runner.name
    assert 0 < out.result.wall_ms < 5000
    assert out.result.max_rss_kib > 0


def test_argv_is_kept_exactly(runner: Harness) -> None:
    args = ["two words", 'it\'s "quoted"', "ünïcødé ✓ 日本", "", "$HOME", "*", "a\\b", "-n"]
    script = 'for a in "$@"; do printf "[%s]\\n" "$a"; done'
    out = runner.run(["sh", "-c", script, "sh", *args])
    assert out.result.status == Status.OK, out.result
    assert lines(out.stdout) == [f"[{a}]" for a in args]


def test_env_is_only_what_is_given(runner: Harness) -> None:
    os.environ["PE_CONFORMANCE_HOST_ONLY"] = "leak"
    try:
        given = runner.run(["env"], env={"GREETING": "hi there", "PATH": "/usr/bin:/bin", "EMPTY": ""})
        default = runner.run(["env"])
    finally:
        del os.environ["PE_CONFORMANCE_HOST_ONLY"]
    # documented defaults: PATH when not given, HOME=/tmp (a writable home)
    assert sorted(lines(given.stdout)) == ["EMPTY=", "GREETING=hi there", "HOME=/tmp", "PATH=/usr/bin:/bin"]
    assert sorted(lines(default.stdout)) == [
        "HOME=/tmp",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ]


def test_stdin(runner: Harness) -> None:
    data = b"line one\nline two\n\x00\xff binary tail"
    out = runner.run(["cat"], stdin=b64(data))
    assert out.stdout == data
    big = runner.run(["wc", "-c"], stdin={"text": "x" * (3 << 20)})  # far over a pipe's buffer
    assert big.stdout.split() == [str(3 << 20).encode()]


def test_nested_input_files_are_readable_and_not_returned(runner: Harness) -> None:
    files = {"a/b/c.txt": {"text": "deep\n"}, "top.txt": {"text": "top\n"}}
    out = runner.run(["sh", "-c", "cat a/b/c.txt top.txt; pwd; ls -R"], files=files)
    assert out.result.status == Status.OK, out.result
    assert lines(out.stdout)[:3] == ["deep", "top", "/work"]
    assert out.result.files == [], "unchanged inputs are not outputs"


def test_output_files_come_back_byte_identical(runner: Harness) -> None:
    blob = bytes(range(256)) * 64
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(200))
    files = {"in.bin": b64(blob), "pic": b64(png), "notes.txt": {"text": "v1\n"}}
    script = (
        "mkdir -p out/deeper && cp in.bin out/deeper/copy.bin && cp pic out/pic.png && echo v2 >> notes.txt"
    )
    out = runner.run(["sh", "-c", script], files=files)
    assert out.result.status == Status.OK, out.result
    assert out.files == {"notes.txt": b"v1\nv2\n", "out/deeper/copy.bin": blob, "out/pic.png": png}
    infos = {f.path: f for f in out.result.files}
    assert [f.path for f in out.result.files] == sorted(infos)
    assert infos["out/pic.png"].mime == "image/png"
    assert infos["out/deeper/copy.bin"].mime == "application/octet-stream"
    assert infos["notes.txt"].mime.startswith("text/plain")
    assert all(f.size == len(out.files[f.path]) and not f.truncated for f in out.result.files)


def test_exit_code(runner: Harness) -> None:
    out = runner.run(["sh", "-c", "echo partial; exit 3"])
    assert out.result.status == Status.EXIT
    assert (out.result.exit_code, out.result.signal) == (3, None)
    assert out.stdout == b"partial\n"


@pytest.mark.parametrize(("script", "number"), [("kill -SEGV $$", SIGSEGV), ("kill -9 $$", SIGKILL)])
def test_death_by_signal(runner: Harness, script: str, number: int) -> None:
    out = runner.run(["sh", "-c", script])
    assert out.result.status == Status.SIGNAL, out.result
    assert (out.result.exit_code, out.result.signal) == (None, number)


def test_timeout_keeps_earlier_output(runner: Harness) -> None:
    started = time.monotonic()
    out = runner.run(["sh", "-c", "echo before; sleep 10; echo after"], limits={"wall_ms": 1000})
    elapsed = time.monotonic() - started
    assert out.result.status == Status.TIMEOUT, out.result
    assert out.stdout == b"before\n"
    assert "1000 ms" in out.result.message and "kept" in out.result.message
    assert 1.0 <= elapsed < 4.0 + runner.kind.startup_s
    assert 1000 <= out.result.wall_ms < 4000


def test_fork_bomb_is_contained(runner: Harness) -> None:
    # The program's own shell forks once, for the bomb, and then execs `sleep`: a fork that fails
    # once the bomb holds every pid ends sh with status 2, a plain exit. (With `f; exec sleep 30` it
    # forked twice, for the pipeline's two sides, and the second fork lost that race now and then.)
    bomb = "f() { f | f & }; f & exec sleep 30"
    pending = runner.start(["sh", "-c", bomb], limits={"wall_ms": 2000, "pids": 32})
    slowest = 0.0
    while not pending.done():
        started = time.monotonic()
        subprocess.run(["true"], check=True, timeout=5)
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.05)
    out = pending.result()
    assert out.result.status == Status.TIMEOUT, out.result
    assert out.result.wall_ms < 5000
    assert slowest < 1.0, f"a host process took {slowest:.2f} s to run during the fork bomb"
    assert b"fork" in out.stderr, "the pids limit made forks fail"


def test_memory_hog_is_oom(runner: Harness) -> None:
    out = runner.run(["dd", "if=/dev/zero", "of=/dev/null", "bs=400M", "count=1"], limits={"memory_mib": 64})
    assert out.result.status == Status.OOM, out.result
    assert "64 MiB" in out.result.message
    assert out.result.max_rss_kib <= 64 << 10


def test_python_memory_hog_is_oom(runner: Harness) -> None:
    ok = runner.run(["python3", "-c", "print(sum(range(10)))"], image="python3")
    assert (ok.result.status, ok.stdout) == (Status.OK, b"45\n"), ok.result
    out = runner.run(["python3", "-c", "x = b'x' * (400 << 20)"], image="python3", limits={"memory_mib": 128})
    assert out.result.status == Status.OOM, out.result


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_runaway_output_is_truncated(runner: Harness, stream: str) -> None:
    cap = 100_000
    argv = ["yes"] if stream == "stdout" else ["sh", "-c", "yes >&2"]
    out = runner.run(argv, limits={"stream_bytes": cap, "wall_ms": 10_000})
    assert out.result.status == Status.OUTPUT_LIMIT, out.result
    info = getattr(out.result, stream)
    assert (info.bytes, info.truncated) == (cap, True)
    assert getattr(out, stream) == b"y\n" * (cap // 2)
    assert out.result.wall_ms < 5000, "the run was killed, not left to its wall limit"


def test_file_size_is_bounded(runner: Harness) -> None:
    """With the default limits: 16 MiB per written file, 8 MiB of output files."""
    script = (
        "dd if=/dev/zero of=/tmp/big bs=1M count=40 2>/dev/null; wc -c < /tmp/big;"
        " dd if=/dev/zero of=/work/big bs=1M count=40 2>/dev/null; wc -c < /work/big"
    )
    out = runner.run(["sh", "-c", script])
    assert out.result.status == Status.OK, out.result
    assert lines(out.stdout) == [str(16 << 20)] * 2, "writes stop at file_bytes (RLIMIT_FSIZE)"
    [big] = out.result.files
    assert (big.path, big.size, big.truncated) == ("big", 8 << 20, True), "output files stop at output_bytes"
    assert out.files["big"] == bytes(8 << 20)
    direct = runner.run(
        ["dd", "if=/dev/zero", "of=big", "bs=1M", "count=40"], limits={"output_bytes": 1 << 20}
    )
    assert (direct.result.status, direct.result.signal) == (Status.SIGNAL, SIGXFSZ), direct.result
    assert "size limit" in direct.result.message


def test_disk_fill_is_bounded_by_memory(runner: Harness) -> None:
    script = "for i in $(seq 30); do dd if=/dev/zero of=f$i bs=1M count=8 2>/dev/null; done; du -sk ."
    wall_ms = round(5000 * runner.kind.cpu_scale)
    out = runner.run(
        ["sh", "-c", script], limits={"memory_mib": 64, "output_bytes": 1 << 20, "wall_ms": wall_ms}
    )
    assert out.result.status in (Status.OOM, Status.EXIT), out.result
    written = sum(f.size for f in out.result.files)
    assert written <= 1 << 20
    assert out.result.max_rss_kib <= 64 << 10
    assert subprocess.run(["true"], timeout=5).returncode == 0


def test_no_network(runner: Harness) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        script = f"cat /proc/net/dev; ip -o link; nc -w 2 127.0.0.1 {port} </dev/null && echo CONNECTED"
        out = runner.run(["sh", "-c", script])
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()
    text = out.stdout.decode()
    interfaces = [line.split(":")[0].strip() for line in text.splitlines() if ":" in line and "|" not in line]
    assert {name for name in interfaces if not name.isdigit()} == {"lo"}, text
    assert "CONNECTED" not in text


def test_nothing_persists_between_runs(runner: Harness) -> None:
    marker = uuid.uuid4().hex
    first = runner.run(["sh", "-c", f"echo {marker} > /tmp/{marker}; echo {marker} > /work/{marker}"])
    assert first.result.status == Status.OK and list(first.files) == [marker]
    second = runner.run(["sh", "-c", "ls -a /tmp /work; cat /tmp/* /work/* 2>/dev/null; true"])
    assert marker.encode() not in second.stdout


def test_host_is_invisible(runner: Harness) -> None:
    ps = runner.run(["ps", "-o", "pid,comm"])
    processes = [line.split(None, 1) for line in lines(ps.stdout)[1:]]
    assert len(processes) <= 3 and [pid for pid, _ in processes if pid == "1"] == ["1"], processes  # init, ps
    assert not any("py" in command for _, command in processes), processes
    secret = f"pe-conformance-{uuid.uuid4().hex}"
    planted = [Path("/tmp") / secret, Path.home() / secret]
    for path in planted:
        path.write_text("host secret\n")
    try:
        out = runner.run(["sh", "-c", f"ls -a / /tmp /root; cat /tmp/{secret} /root/{secret}; true"])
    finally:
        for path in planted:
            path.unlink()
    assert b"host secret" not in out.stdout
    assert secret.encode() not in out.stdout, "a host file shows in a listing"


def test_confinement(runner: Harness) -> None:
    out = runner.run(
        ["sh", "-c", "grep -E '^(Seccomp|NoNewPrivs|CapEff|CapPrm|CapBnd):' /proc/self/status; id -u"]
    )
    fields = dict(line.split(":\t") for line in lines(out.stdout)[:-1])
    assert fields["Seccomp"] == "2"
    assert fields["NoNewPrivs"] == "1"
    assert int(fields["CapEff"], 16) == int(fields["CapPrm"], 16) == int(fields["CapBnd"], 16) == 0
    denied = runner.run(
        ["sh", "-c", "unshare -U true; echo unshare=$?; mount -t tmpfs none /tmp; echo mount=$?"]
    )
    assert "unshare=0" not in denied.stdout.decode() and "mount=0" not in denied.stdout.decode()


def test_runs_as_an_unprivileged_host_uid(runner: Harness) -> None:
    token = f"{7 + uuid.uuid4().int % 1000 / 1000:.3f}"  # a sleep duration no other process uses
    pending = runner.start(
        ["sh", "-c", f"cat /proc/self/uid_map; exec sleep {token}"], limits={"wall_ms": 1500}
    )
    uids: list[str] = []
    deadline = time.monotonic() + 1.4
    while runner.kind.host_visible and not uids and time.monotonic() < deadline:
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and (proc / "cmdline").read_bytes() == f"sleep\0{token}\0".encode():
                    status = (proc / "status").read_text().splitlines()
                    uids = next(line for line in status if line.startswith("Uid:")).split()[1:]
            except OSError:
                continue
        time.sleep(0.02)
    out = pending.result()
    assert out.result.status == Status.TIMEOUT, out.result
    container, host, count = (int(n) for n in out.stdout.split())
    assert container == 0 and host > 0 and count > 0, "container root is not host root"
    if runner.kind.host_visible:
        assert uids, "the sleeping program was not found among the host's processes"
        assert uids == [str(host)] * 4, f"real, effective, saved and fs uid are {uids}, not {host}"


def test_concurrent_runs_are_apart(runner: Harness) -> None:
    script = "echo $1 > mine; sleep 0.3; ls; cat /proc/self/uid_map"
    pending = [
        runner.start(["sh", "-c", script, "sh", name], files={f"{name}.in": {"text": name}}) for name in "ab"
    ]
    outs = [p.result() for p in pending]
    for name, out in zip("ab", outs, strict=True):
        assert out.result.status == Status.OK, out.result
        listed = lines(out.stdout)[:-1]
        assert listed == [f"{name}.in", "mine"], listed
        assert out.files == {"mine": f"{name}\n".encode()}
    assert outs[0].stdout.splitlines()[-1] != outs[1].stdout.splitlines()[-1], (
        "each slot has its own host uids"
    )
