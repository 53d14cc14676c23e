"""The site's browser code: npm packages installed from web/package-lock.json into a cache keyed by the
lockfile's hash, and bundled by esbuild (docs/web.md, "Build")."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

WEB = Path(__file__).resolve().parent
LOCKFILE = WEB / "package-lock.json"
# Entry points bundled into <site>/assets/<name>.js.
ENTRY_POINTS = {"playground": WEB / "editor" / "main.js", "catalog": WEB / "editor" / "catalog.js"}


class AssetError(Exception):
    """npm or esbuild failed; the message carries their output."""


def lock_hash() -> str:
    return hashlib.sha256(LOCKFILE.read_bytes()).hexdigest()[:16]


def node_modules(cache_dir: Path) -> Path:
    """`<cache>/npm/<lockfile hash>/node_modules`, installed by `npm ci` when missing (atomically: a
    failed or interrupted install leaves nothing behind)."""
    target = Path(cache_dir) / "npm" / lock_hash()
    if (target / "node_modules").is_dir():
        return target / "node_modules"
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".install-", dir=target.parent))
    try:
        shutil.copy(WEB / "package.json", work)
        shutil.copy(LOCKFILE, work)
        _run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=work)
        with contextlib.suppress(OSError):  # when another process installed it first
            work.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target / "node_modules"


def bundle(modules: Path, out_dir: Path) -> None:
    """Bundle each entry point with its npm imports into `out_dir/<name>.js` (minified ES modules)."""
    esbuild = modules / ".bin" / "esbuild"
    outputs = [f"{name}={path}" for name, path in ENTRY_POINTS.items()]
    command = [
        str(esbuild),
        *outputs,
        "--bundle",
        "--splitting",
        "--minify",
        "--format=esm",
        "--target=es2020",
    ]
    command += ["--chunk-names=chunks/[name]-[hash]"]  # language modes, loaded when needed
    command += ["--log-level=warning", f"--outdir={out_dir}"]
    # Imports resolve from the cached node_modules, not from a node_modules beside the sources.
    _run(command, cwd=WEB, env={**os.environ, "NODE_PATH": str(modules)})


def _run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    try:
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise AssetError(f"{command[0]}: {error}") from None
    if done.returncode != 0:
        raise AssetError(f"{' '.join(command[:2])} failed ({done.returncode}):\n{done.stderr}{done.stdout}")
