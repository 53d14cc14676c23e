"""The OCI runtime config (crun's config.json) for one run; shared by the sandbox runner and the VM guest.

What the program gets: the image as a read-only root, `/work` (a bind of the caller's per-run directory,
its cwd) and `/tmp` writable, a fresh user, pid, mount, network (only `lo`), ipc, uts and cgroup
namespace, no capabilities, no new privileges, a deny-list seccomp filter and rlimits from `Limits`.
The VM guest leaves out the network namespace: its kernel's only interface is already `lo`
(`network_namespace`; docs/vm.md, docs/security.md).
Memory and pids limits are not in here: the caller puts crun's cgroup (`cgroups_path`) under a parent
cgroup whose limits it sets and whose counters it reads (see docs/sandbox.md).
"""

from __future__ import annotations

import errno
import platform
from collections.abc import Iterable, Sequence

from wire.spec import Limits

INIT_PATH = "/dev/.pe-init"  # where `init_source` (a static tini) is bound, so the program is not PID 1
DEFAULT_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/tmp"}
ID_COUNT = 65536  # uids and gids mapped into the user namespace, from `id_base`
HOSTNAME = "pe"
NOFILE = 1024

# System calls no program in the catalogue needs and that are kernel attack surface or host-wide
# state; they fail with EPERM. Names unknown on an architecture are skipped by crun.
DENIED_SYSCALLS = (
    "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module", "delete_module",
    "fanotify_init", "finit_module", "fsconfig", "fsmount", "fsopen", "fspick", "get_kernel_syms",
    "init_module", "io_uring_enter", "io_uring_register", "io_uring_setup", "ioperm", "iopl",
    "kexec_file_load", "kexec_load", "keyctl", "lookup_dcookie", "mount", "mount_setattr", "move_mount",
    "name_to_handle_at", "nfsservctl", "open_by_handle_at", "open_tree", "perf_event_open", "pivot_root",
    "process_vm_readv", "process_vm_writev", "ptrace", "query_module", "quotactl", "quotactl_fd", "reboot",
    "request_key", "setdomainname", "sethostname", "setns", "settimeofday", "stime", "swapoff", "swapon",
    "_sysctl", "syslog", "umount", "umount2", "unshare", "uselib", "userfaultfd", "ustat", "vhangup",
    "vm86", "vm86old",
)  # fmt: skip
# clone() with any of these flags would make new namespaces (nested user namespaces are the usual
# way into kernel bugs); clone3 passes its flags in memory a filter cannot read, so it answers ENOSYS
# and the C library falls back to clone.
NAMESPACE_CLONE_FLAGS = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
SECCOMP_ARCHES = {
    "x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
}
MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/sched_debug",
    "/proc/scsi", "/proc/timer_list", "/proc/timer_stats", "/sys/firmware",
)  # fmt: skip
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


def seccomp_profile(machine: str | None = None) -> dict:
    """Default allow; `DENIED_SYSCALLS` and namespace-making clones fail. Every ABI of the machine is
    listed, so a 32-bit or x32 entry point cannot skip the rules."""
    machine = machine or platform.machine()
    if machine not in SECCOMP_ARCHES:
        raise ValueError(f"no seccomp architecture list for {machine!r}")
    rules: list[dict] = [
        {"names": list(DENIED_SYSCALLS), "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM},
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS},
    ]
    rules += [
        {
            "names": ["clone"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": errno.EPERM,
            "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
        }
        for flag in NAMESPACE_CLONE_FLAGS.values()
    ]
    return {"defaultAction": "SCMP_ACT_ALLOW", "architectures": SECCOMP_ARCHES[machine], "syscalls": rules}


def process_env(env: Iterable[tuple[str, str]]) -> list[str]:
    """The run's env exactly, plus `DEFAULT_ENV` for the keys it does not set."""
    given = dict(env)
    return [f"{key}={value}" for key, value in {**DEFAULT_ENV, **given}.items()]


def _rlimit(name: str, value: int) -> dict:
    return {"type": name, "soft": value, "hard": value}


def oci_config(
    *,
    root: str,
    argv: Sequence[str],
    env: Iterable[tuple[str, str]],
    limits: Limits,
    work_source: str,
    id_base: int,
    init_source: str | None = None,
    cgroups_path: str | None = None,
    seccomp: dict | None = None,
    network_namespace: bool = True,
) -> dict:
    """The config.json for running `argv` in the image mounted at `root`.

    `id_base` is the unprivileged host uid (and gid) that container root maps to; `work_source` must be
    owned by it. With `init_source` (a static init such as tini) the program runs as its child, so it
    gets ordinary signal semantics instead of those of a namespace's PID 1. `seccomp` defaults to
    `seccomp_profile()`; pass a precomputed one to save the work per run. `network_namespace=False`
    keeps the runtime's network namespace: only for a single-use VM whose only interface is an `lo`
    its init brought up, where a fresh namespace would hold the same and cost the run ~50 ms of TCG.
    """
    args = [INIT_PATH, "--", *argv] if init_source else list(argv)
    mounts: list[dict] = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/work",
            "type": "bind",
            "source": work_source,
            "options": ["bind", "nosuid", "nodev"],
        },
        {
            "destination": "/tmp",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777", f"size={limits.memory_mib}m"],
        },
    ]
    if init_source:
        mounts.append(
            {
                "destination": INIT_PATH,
                "type": "bind",
                "source": init_source,
                "options": ["bind", "ro", "nosuid", "nodev"],
            }
        )
    linux: dict = {
        "namespaces": [
            {"type": kind}
            for kind in ("pid", "network", "ipc", "uts", "mount", "user", "cgroup")
            if network_namespace or kind != "network"
        ],
        "uidMappings": [{"containerID": 0, "hostID": id_base, "size": ID_COUNT}],
        "gidMappings": [{"containerID": 0, "hostID": id_base, "size": ID_COUNT}],
        "seccomp": seccomp if seccomp is not None else seccomp_profile(),
        "maskedPaths": list(MASKED_PATHS),
        "readonlyPaths": list(READONLY_PATHS),
    }
    if cgroups_path:
        linux["cgroupsPath"] = cgroups_path
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": process_env(env),
            "cwd": "/work",
            "capabilities": {
                name: [] for name in ("bounding", "effective", "inheritable", "permitted", "ambient")
            },
            "rlimits": [
                _rlimit("RLIMIT_FSIZE", limits.file_bytes),
                _rlimit("RLIMIT_CORE", 0),
                _rlimit("RLIMIT_NOFILE", NOFILE),
            ],
            "noNewPrivileges": True,
        },
        "root": {"path": root, "readonly": True},
        "hostname": HOSTNAME,
        "mounts": mounts,
        "linux": linux,
    }
