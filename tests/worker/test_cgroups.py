"""cgroup layout detection and the per-run cgroups, on fake cgroup trees and (as root) on this host."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wire.spec import Limits
from worker.cgroups import (
    CRUN_LEAF,
    CgroupError,
    CgroupLayout,
    CgroupMode,
    Cgroups,
    detect_layout,
    parse_mountinfo,
)

LIMITS = Limits(memory_mib=96, pids=20)


def v1_line(n: int, point: str, options: str) -> str:
    return f"{n} 20 0:{n} / {point} rw,nosuid,nodev,noexec,relatime shared:{n} - cgroup cgroup rw,{options}"


def mountinfo(unified: Path | None, v1: dict[str, str]) -> str:
    lines = ["20 1 8:1 / / rw,relatime - ext4 /dev/vda rw"]
    lines += [v1_line(30 + i, point, options) for i, (point, options) in enumerate(v1.items())]
    if unified is not None:
        lines.append(f"40 20 0:40 / {unified} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate")
    return "\n".join(lines) + "\n"


def unified_with(tmp_path: Path, controllers: str) -> Path:
    unified = tmp_path / "unified"
    unified.mkdir()
    (unified / "cgroup.controllers").write_text(controllers + "\n")
    return unified


def test_parse_mountinfo_unescapes_and_reads_super_options() -> None:
    text = "36 25 0:31 / /sys/fs/cgroup/with\\040space rw shared:9 - cgroup cgroup rw,cpu,cpuacct\n"
    assert parse_mountinfo(text) == [(Path("/sys/fs/cgroup/with space"), "cgroup", ["rw", "cpu", "cpuacct"])]


def test_detect_pure_v2(tmp_path: Path) -> None:
    unified = unified_with(tmp_path, "cpu io memory pids")
    assert detect_layout(mountinfo(unified, {})) == CgroupLayout(CgroupMode.V2, unified, {})


def test_detect_hybrid_when_cgroup2_has_controllers(tmp_path: Path) -> None:
    unified = unified_with(tmp_path, "hugetlb")
    text = mountinfo(
        unified, {"/c/memory": "memory", "/c/cpu,cpuacct": "cpu,cpuacct", "/c/systemd": "xattr,name=systemd"}
    )
    layout = detect_layout(text)
    assert layout.mode is CgroupMode.HYBRID and layout.unified == unified
    assert layout.v1 == {
        "memory": Path("/c/memory"), "cpu": Path("/c/cpu,cpuacct"), "cpuacct": Path("/c/cpu,cpuacct"),
        "name=systemd": Path("/c/systemd"),
    }  # fmt: skip
    assert layout.hierarchies == [Path("/c/memory"), Path("/c/cpu,cpuacct"), Path("/c/systemd")]


def test_detect_v1_with_an_empty_cgroup2(tmp_path: Path) -> None:
    unified = unified_with(tmp_path, "")
    layout = detect_layout(mountinfo(unified, {"/c/memory": "memory"}))
    assert layout.mode is CgroupMode.V1
    assert layout.hierarchies == [Path("/c/memory"), unified], "crun may make its cgroup in cgroup2 too"
    assert detect_layout(mountinfo(None, {"/c/memory": "memory"})).mode is CgroupMode.V1


def test_detect_nothing_mounted() -> None:
    with pytest.raises(CgroupError):
        detect_layout(mountinfo(None, {}))


def fake_v2(tmp_path: Path) -> CgroupLayout:
    unified = unified_with(tmp_path, "cpu memory pids")
    (unified / "cgroup.subtree_control").write_text("memory\n")
    return CgroupLayout(CgroupMode.V2, unified, {})


def test_v2_run_cgroup(tmp_path: Path) -> None:
    layout = fake_v2(tmp_path)
    cgroups = Cgroups(layout, "123-0")
    cgroups.setup()
    assert (layout.unified / "cgroup.subtree_control").read_text() == "+pids", "only what is not enabled yet"
    assert (layout.unified / "pe/123-0/cgroup.subtree_control").read_text() == "+memory +pids"
    run = cgroups.create("r1", LIMITS)
    path = layout.unified / "pe/123-0/r1"
    assert run.crun_path == f"/pe/123-0/r1/{CRUN_LEAF}"
    assert (path / "memory.max").read_text() == str(96 << 20)
    assert (path / "pids.max").read_text() == "20"
    (path / "cpu.stat").write_text("usage_usec 2500\nuser_usec 2000\n")
    (path / "memory.peak").write_text(str(5 << 20) + "\n")
    (path / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    usage = run.usage()
    assert (usage.cpu_ms, usage.peak_kib, usage.oom_events) == (2.5, 5 << 10, 1)
    for name in ("cpu.stat", "memory.peak", "memory.events", "memory.max", "pids.max"):
        (path / name).unlink()  # a real cgroup directory has no files to delete
    run.remove()
    assert not path.exists()


def test_v2_missing_controller(tmp_path: Path) -> None:
    layout = CgroupLayout(CgroupMode.V2, unified_with(tmp_path, "cpu io"), {})
    with pytest.raises(CgroupError, match="memory, pids"):
        Cgroups(layout, "1-0").setup()


def test_v1_missing_controller() -> None:
    layout = CgroupLayout(CgroupMode.V1, None, {"memory": Path("/nonexistent")})
    with pytest.raises(CgroupError, match="pids, cpuacct"):
        Cgroups(layout, "1-0").setup()


@pytest.mark.sandbox
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make cgroups")
def test_this_host_run_cgroup_limits_and_cleanup() -> None:
    layout = detect_layout()
    cgroups = Cgroups(layout, f"test-{os.getpid()}")
    cgroups.setup()
    try:
        run = cgroups.create("r1", LIMITS)
        if layout.mode is CgroupMode.V2:
            assert layout.unified is not None
            assert (layout.unified / run.crun_path.strip("/")).parent.joinpath(
                "pids.max"
            ).read_text().strip() == "20"
        else:
            memory = layout.v1["memory"] / run.crun_path.strip("/")
            assert int(memory.parent.joinpath("memory.limit_in_bytes").read_text()) == 96 << 20
            assert (
                layout.v1["pids"]
                .joinpath(run.crun_path.strip("/"))
                .parent.joinpath("pids.max")
                .read_text()
                .strip()
                == "20"
            )
        usage = run.usage()
        assert usage.oom_events == 0 and usage.cpu_ms == 0
        run.remove()
        assert all(not (h / cgroups.base / "r1").exists() for h in layout.hierarchies)
    finally:
        cgroups.destroy()
    assert all(not (h / cgroups.base).exists() for h in layout.hierarchies)
