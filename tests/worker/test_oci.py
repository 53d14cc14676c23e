"""The OCI config generator: what goes into crun's config.json (no root needed)."""

from __future__ import annotations

import errno

import pytest

from guest.oci import (
    DEFAULT_ENV,
    DENIED_SYSCALLS,
    ID_COUNT,
    INIT_PATH,
    NAMESPACE_CLONE_FLAGS,
    oci_config,
    process_env,
    seccomp_profile,
)
from wire.spec import Limits

LIMITS = Limits(wall_ms=1000, memory_mib=96, pids=20, stream_bytes=1000, output_bytes=2000, file_bytes=3000)


def make(**overrides: object) -> dict:
    args: dict = dict(
        root="/images/abc", argv=["python3", "main.py"], env=[("A", "1")], limits=LIMITS,
        work_source="/run/pe/x/work", id_base=265536,
    )  # fmt: skip
    args.update(overrides)
    return oci_config(**args)


def mount(config: dict, destination: str) -> dict:
    [found] = [m for m in config["mounts"] if m["destination"] == destination]
    return found


def test_namespaces_and_id_mapping() -> None:
    linux = make()["linux"]
    assert {n["type"] for n in linux["namespaces"]} == {
        "pid",
        "network",
        "ipc",
        "uts",
        "mount",
        "user",
        "cgroup",
    }
    assert all("path" not in n for n in linux["namespaces"]), "fresh namespaces, never joined ones"
    expected = [{"containerID": 0, "hostID": 265536, "size": ID_COUNT}]
    assert linux["uidMappings"] == linux["gidMappings"] == expected


def test_the_vm_guest_keeps_its_network_namespace_and_nothing_else() -> None:
    """network_namespace=False (the VM guest's config) leaves out that namespace alone."""
    default, guest = make(), make(network_namespace=False)
    assert [n["type"] for n in guest["linux"]["namespaces"]] == [
        n["type"] for n in default["linux"]["namespaces"] if n["type"] != "network"
    ]
    del default["linux"]["namespaces"], guest["linux"]["namespaces"]
    assert guest == default


def test_no_privileges() -> None:
    process = make()["process"]
    assert process["noNewPrivileges"] is True
    assert set(process["capabilities"]) == {"bounding", "effective", "inheritable", "permitted", "ambient"}
    assert all(caps == [] for caps in process["capabilities"].values())
    assert process["user"] == {"uid": 0, "gid": 0}  # container root, an unprivileged uid on the host
    assert process["terminal"] is False


def test_rlimits_come_from_limits() -> None:
    rlimits = {r["type"]: (r["soft"], r["hard"]) for r in make()["process"]["rlimits"]}
    assert rlimits["RLIMIT_FSIZE"] == (3000, 3000)
    assert rlimits["RLIMIT_CORE"] == (0, 0), "no core files appear in /work"
    assert rlimits["RLIMIT_NOFILE"][0] > 0


def test_root_is_read_only_and_work_and_tmp_are_writable() -> None:
    config = make()
    assert config["root"] == {"path": "/images/abc", "readonly": True}
    work = mount(config, "/work")
    assert (work["type"], work["source"]) == ("bind", "/run/pe/x/work")
    assert "ro" not in work["options"] and {"nosuid", "nodev"} <= set(work["options"])
    tmp = mount(config, "/tmp")
    assert tmp["type"] == "tmpfs" and "size=96m" in tmp["options"]
    assert config["process"]["cwd"] == "/work"
    assert not any(m["destination"].startswith("/sys") for m in config["mounts"])


def test_init_wraps_argv() -> None:
    plain = make()
    assert plain["process"]["args"] == ["python3", "main.py"]
    assert all(m["destination"] != INIT_PATH for m in plain["mounts"])
    wrapped = make(init_source="/usr/bin/tini-static", argv=["-x", "y"])
    assert wrapped["process"]["args"] == [INIT_PATH, "--", "-x", "y"]
    init = mount(wrapped, INIT_PATH)
    assert init["source"] == "/usr/bin/tini-static" and "ro" in init["options"]


def test_env_is_exact_plus_documented_defaults() -> None:
    assert process_env([("A", "1"), ("B", "x=y")]) == [f"{k}={v}" for k, v in DEFAULT_ENV.items()] + [
        "A=1",
        "B=x=y",
    ]
    assert process_env([("PATH", "/bin"), ("HOME", "/work")]) == ["PATH=/bin", "HOME=/work"]
    assert make()["process"]["env"] == process_env([("A", "1")])


def test_cgroups_path_only_when_given() -> None:
    assert "cgroupsPath" not in make()["linux"]
    assert make(cgroups_path="/pe/t/run/c")["linux"]["cgroupsPath"] == "/pe/t/run/c"
    assert "resources" not in make()["linux"], "limits live in the caller's parent cgroup"


def test_seccomp_denies_dangerous_calls_on_every_abi() -> None:
    profile = make()["linux"]["seccomp"]
    assert profile == seccomp_profile()
    assert profile["defaultAction"] == "SCMP_ACT_ALLOW"
    assert seccomp_profile("x86_64")["architectures"] == [
        "SCMP_ARCH_X86_64",
        "SCMP_ARCH_X86",
        "SCMP_ARCH_X32",
    ]
    assert seccomp_profile("aarch64")["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    denied = {name for rule in profile["syscalls"] if "args" not in rule for name in rule["names"]}
    expected = (
        "mount umount2 pivot_root ptrace kexec_load init_module bpf keyctl perf_event_open unshare setns"
    )
    assert set(expected.split()) <= denied
    assert {"userfaultfd", "open_by_handle_at", "reboot", "swapon", "add_key", "iopl"} <= denied
    assert set(DENIED_SYSCALLS) <= denied
    [clone3] = [rule for rule in profile["syscalls"] if rule["names"] == ["clone3"]]
    assert clone3["errnoRet"] == errno.ENOSYS, "so the C library falls back to clone, which can be filtered"


def test_seccomp_refuses_namespace_clones() -> None:
    rules = [r for r in seccomp_profile("x86_64")["syscalls"] if r["names"] == ["clone"]]
    flags = {rule["args"][0]["value"] for rule in rules}
    assert flags == set(NAMESPACE_CLONE_FLAGS.values())
    for rule in rules:
        [arg] = rule["args"]
        assert arg["op"] == "SCMP_CMP_MASKED_EQ" and arg["index"] == 0 and arg["valueTwo"] == arg["value"]
        assert (rule["action"], rule["errnoRet"]) == ("SCMP_ACT_ERRNO", errno.EPERM)


def test_seccomp_unknown_machine() -> None:
    with pytest.raises(ValueError, match="riscv"):
        seccomp_profile("riscv128")
