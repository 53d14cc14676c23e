"""`pe bench vm`: a `/bin/true` run on the vm runner, cold and from the warm pool, against a bare boot.

Three sides, in rounds so the shared machine's load falls on all alike:

- bare: `qemu-system-x86_64 -M microvm` with the same kernel, accelerator and flags, and an initramfs
  of busybox whose /init powers off at once; timed around the process;
- cold: `VmRunner.run` of `/bin/true` in the busybox image without a pool: boot, run, teardown;
- bare and cold take turns at going first: the side that runs right after another VM's exit ran
  ~0.1 s slower here, which a fixed order charged to one side alone (the two orders' cold/bare are
  printed apart too);
- pool: the same run given to a pooled guest that has booted and waits (the pool is filled and the
  guest ready before the clock starts), so it times what a run costs when the pool keeps up. Each
  round has a pool of its own, started after the bare and cold sides and closed after its run, so
  that no other guest is alive while bare and cold are timed.

Also printed: boot-to-ready of the pooled guests (QEMU start to "pe-init: ready"), the ratios
taken within each round (median, min, max), which the shared machine's load moves less, and the CPU
time the bare and cold sides' processes used (QEMU, mostly: under TCG the guest's work is QEMU's
CPU time), which a loaded machine stretches far less than elapsed time.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path

from catalog.store import ImageStore
from guest.build import Guest, ensure_guest
from pe.settings import Settings
from wire.result import Status
from wire.spec import parse_spec
from worker.runner import Job
from worker.vm import GUEST_MIB, POOL_LIMITS, VmRunner, kernel_command_line


def bare_initrd(directory: Path) -> Path:
    """An initramfs of busybox whose /init powers off at once."""
    root = directory / "root"
    (root / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin/busybox")
    (root / "init").write_text("#!/bin/busybox sh\n/bin/busybox poweroff -f\n")
    (root / "init").chmod(0o755)
    listing = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True).stdout
    initrd = directory / "bare.cpio"
    with initrd.open("wb") as out:
        subprocess.run(
            ["cpio", "--quiet", "-o", "-H", "newc"], cwd=root, input=listing, stdout=out, check=True
        )
    return initrd


def time_bare(guest: Guest, initrd: Path, accel: str) -> float:
    memory = str(POOL_LIMITS.memory_mib + GUEST_MIB)
    command = [
        "qemu-system-x86_64", "-M", "microvm,isa-serial=on", "-accel", accel,
        "-cpu", "host" if accel == "kvm" else "max", "-smp", "1", "-m", memory,
        "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-monitor", "none",
        "-no-reboot", "-kernel", str(guest.kernel), "-initrd", str(initrd),
        "-append", kernel_command_line(accel),
    ]  # fmt: skip
    started = time.monotonic()
    subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, check=True, timeout=60)
    return (time.monotonic() - started) * 1000


def children_cpu_ms() -> float:
    """CPU time of this process's children that have been waited for (QEMU and its wrappers)."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (used.ru_utime + used.ru_stime) * 1000


def true_job(image: str, digest: str) -> Job:
    spec = parse_spec({"image": image, "argv": ["true"], "runner": "vm"})
    return Job(uuid.uuid4().hex, spec, spec.argv, image, digest, "vm")


async def time_run(runner: VmRunner, job: Job) -> float:
    started = time.monotonic()
    out = await runner.run(job)
    elapsed = (time.monotonic() - started) * 1000
    if out.result.status != Status.OK:
        raise SystemExit(f"pe bench vm: the run failed: {out.result.message}")
    return elapsed


async def pooled_ready(pooled: VmRunner, digest: str) -> float:
    """Fill the pool and wait for its guest to be ready; that guest's boot-to-ready in ms."""
    await pooled.warm(digest)
    assert pooled._pool is not None
    [guest] = pooled._pool._idle
    assert guest.vm is not None
    await guest.vm.ready.wait()
    assert guest.vm.ready_at is not None
    return (guest.vm.ready_at - guest.vm.started_at) * 1000


async def with_cpu(step: Awaitable[float]) -> tuple[float, float]:
    """The step's own figure (ms) and the CPU time (ms) its child processes used."""
    before = children_cpu_ms()
    elapsed = await step
    return elapsed, children_cpu_ms() - before


async def measure(
    settings: Settings, image: str, rounds: int
) -> tuple[str, dict[str, list[float]], list[bool]]:
    """The accelerator, each side's figures per counted round, and whether bare went first in each."""
    store = ImageStore(settings.images_dir)
    meta = store.current(image)
    if meta is None:
        raise SystemExit(f"pe bench vm: the {image} image is not built (`pe images build {image}`)")
    guest = await asyncio.to_thread(ensure_guest, settings.cache_dir, print)
    one_guest = POOL_LIMITS.memory_mib + GUEST_MIB
    cold = VmRunner(store, 1, cache_dir=settings.cache_dir, accel=settings.vm_accel, guest=guest)
    accel = await cold.chosen_accel()
    times: dict[str, list[float]] = {
        "bare": [], "cold": [], "pool": [], "pool boot-to-ready": [], "bare cpu": [], "cold cpu": [],
    }  # fmt: skip
    bare_first_in: list[bool] = []
    with tempfile.TemporaryDirectory() as scratch:
        initrd = bare_initrd(Path(scratch))
        try:
            for number in range(rounds + 1):  # round 0 warms caches and is not counted
                # Bare and cold run with no other guest alive: a guest booting beside them, or even
                # one idling in the pool, slows them under TCG (unevenly: an idle pool guest made the
                # bare side ~0.2 s slower and the cold side ~0.1 s, which flattered cold/bare).
                bare_first = number % 2 == 1
                steps = {
                    "bare": lambda: asyncio.to_thread(time_bare, guest, initrd, accel),
                    "cold": lambda: time_run(cold, true_job(image, meta.digest)),
                }
                order = ("bare", "cold") if bare_first else ("cold", "bare")
                measured = {side: await with_cpu(steps[side]()) for side in order}
                (bare, bare_cpu), (cold_ms, cold_cpu) = measured["bare"], measured["cold"]
                # A pool of its own each round, closed after its run, so that its refill guest does
                # not boot into the next round.
                pooled = VmRunner(
                    store, 1, cache_dir=settings.cache_dir, accel=accel, guest=guest, pool_mib=one_guest
                )
                try:
                    ready_ms = await pooled_ready(pooled, meta.digest)
                    pool_ms = await time_run(pooled, true_job(image, meta.digest))
                finally:
                    await pooled.close()
                if number:
                    values = (bare, cold_ms, pool_ms, ready_ms, bare_cpu, cold_cpu)
                    for side, value in zip(times, values, strict=True):
                        times[side].append(value)
                    bare_first_in.append(bare_first)
                first = "bare" if bare_first else "cold"
                sides = f"bare {bare:.0f} ms, cold {cold_ms:.0f} ms, pool {pool_ms:.0f} ms"
                print(f"round {number} ({first} first): {sides}")
        finally:
            await cold.close()
    return accel, times, bare_first_in


def bench_vm(args: argparse.Namespace) -> int:
    from pe.cli import settings_from

    accel, times, bare_first_in = asyncio.run(measure(settings_from(args), args.image, args.rounds))
    medians = {side: statistics.median(values) for side, values in times.items()}
    for side, values in times.items():
        print(
            f"{side}: median {medians[side]:.0f} ms, min {min(values):.0f}, max {max(values):.0f} ({accel})"
        )
    cold, bare, pool = medians["cold"], medians["bare"], medians["pool"]
    print(f"cold/bare {cold / bare:.2f}; cold/pool {cold / pool:.2f}; pool/bare {pool / bare:.2f}")
    # Each round's sides ran back to back, under much the same load: their ratios spread less.
    pairs = (
        ("cold/bare", "cold", "bare"),
        ("cold/pool", "cold", "pool"),
        ("cpu cold/bare", "cold cpu", "bare cpu"),
    )
    for name, top, bottom in pairs:
        ratios = [a / b for a, b in zip(times[top], times[bottom], strict=True)]
        print(
            f"per-round {name}: median {statistics.median(ratios):.2f}, "
            f"min {min(ratios):.2f}, max {max(ratios):.2f}"
        )
    # The same, apart by which side went first, to show what the order does.
    for first in (True, False):
        ratios = [
            c / b for c, b, f in zip(times["cold"], times["bare"], bare_first_in, strict=True) if f == first
        ]
        if ratios:
            name = "bare" if first else "cold"
            median = statistics.median(ratios)
            print(f"per-round cold/bare, {name} first ({len(ratios)} rounds): median {median:.2f}")
    return 0
