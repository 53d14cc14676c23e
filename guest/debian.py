"""Commands and package versions for building the guest from Debian packages."""

from __future__ import annotations

import subprocess
from pathlib import Path


class GuestBuildError(Exception):
    pass


def run(*command: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """The command's stdout; a GuestBuildError with the end of its output when it fails."""
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip()
        raise GuestBuildError(f"{' '.join(command)} failed: {output[-800:]}")
    return done.stdout


def installed_version(package: str) -> str:
    done = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    if done.returncode != 0 or not done.stdout:
        raise GuestBuildError(f"the Debian package {package} is not installed (scripts/install installs it)")
    return done.stdout
