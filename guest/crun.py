"""Build the guest's crun: Debian's source package of the installed crun, linked statically and
without systemd.

Debian's crun loads ten shared libraries, six of them only for libsystemd, which the guest never
uses (no systemd, the cgroupfs manager); under TCG each exec of it spent ~40 ms in the dynamic
loader and its libraries were 5.8 MiB of the initramfs. Built from the same source with the same
features otherwise (seccomp, capabilities, eBPF device filter, SELinux/AppArmor labels, yajl), it is
one static file of 1.7 MiB. docs/vm.md has the measurements.

The source comes through apt with a private configuration (a deb-src line for the archive the
installed crun came from, its own lists directory): the host's apt configuration is not changed.
apt checks the source files against the archive's signed index.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from guest.debian import GuestBuildError, installed_version, run

PACKAGE = "crun"
# Static libraries crun links (libyajl-dev names its archive libyajl_s.a) and the tools to build it.
BUILD_DEPENDS = ("libseccomp-dev", "libcap-dev", "libyajl-dev", "gcc", "make", "dpkg-dev", "pkg-config")
# As Debian builds it (its crun needs no libgcrypt), minus systemd; static libraries only.
CONFIGURE = (
    "--disable-systemd", "--disable-criu", "--disable-shared", "--enable-static",
    "ac_cv_search_gcry_check_version=no",
)  # fmt: skip


def inputs() -> dict:
    """What the build depends on, for the guest's cache key."""
    return {
        "source": installed_version(PACKAGE),
        "build_depends": {package: installed_version(package) for package in BUILD_DEPENDS},
        "configure": CONFIGURE,
    }


def source_line(version: str) -> str:
    """A deb-src line for the archive the installed crun `version` came from (`apt-cache policy`)."""
    policy = run("apt-cache", "policy", PACKAGE)
    table = policy.partition(f" {version} ")[2]
    found = re.search(r"^\s+\d+ (\S+) (\S+)/(\S+) \S+ Packages$", table, re.MULTILINE)
    if found is None:
        raise GuestBuildError(f"no archive offers crun {version} (apt-cache policy crun)")
    url, suite, component = found.groups()
    return f"deb-src {url} {suite} {component}\n"


def build_crun(work: Path, progress: Callable[[str], None]) -> Path:
    """Download, unpack (with Debian's patches) and build crun in `work`; the stripped binary."""
    version = installed_version(PACKAGE)
    apt = work / "apt"
    (apt / "lists/partial").mkdir(parents=True)
    (apt / "sources.list").write_text(source_line(version))
    private = [
        "-o", f"Dir::Etc::SourceList={apt / 'sources.list'}", "-o", "Dir::Etc::SourceParts=/dev/null",
        "-o", f"Dir::State::Lists={apt / 'lists'}",
    ]  # fmt: skip
    progress(f"downloading the source of crun {version}")
    run("apt-get", *private, "update")
    run("apt-get", *private, "source", "--download-only", f"{PACKAGE}={version}", cwd=work)
    [dsc] = work.glob(f"{PACKAGE}_*.dsc")
    source = work / "crun-source"
    run("dpkg-source", "-x", str(dsc), str(source))
    static_libs = work / "static-libs"
    static_libs.mkdir()
    (static_libs / "libyajl.a").symlink_to(_yajl_archive())
    env = {**os.environ, "DEB_BUILD_MAINT_OPTIONS": "hardening=+all"}
    flags = {name: run("dpkg-buildflags", "--get", name, env=env).strip() for name in ("CFLAGS", "CPPFLAGS")}
    progress("building crun (static, without systemd)")
    run("./configure", *CONFIGURE, *(f"{k}={v}" for k, v in flags.items()), cwd=source)
    # libtool links fully statically only with -all-static (plain -static keeps shared libraries).
    ldflags = f"LDFLAGS=-all-static -L{static_libs}"
    run("make", f"-j{os.cpu_count() or 1}", ldflags, cwd=source)
    binary = source / "crun"
    run("strip", str(binary))
    return binary


def _yajl_archive() -> Path:
    for path in run("dpkg", "-L", "libyajl-dev").split():
        if path.endswith("/libyajl_s.a"):
            return Path(path)
    raise GuestBuildError("libyajl-dev ships no libyajl_s.a")
