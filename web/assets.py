"""The site's browser code: npm packages installed from web/package-lock.json into a cache keyed by the
lockfile's hash, and bundled by esbuild; the Pyodide runtime and the `wire` package for the browser's
worker (docs/web.md, "Build" and "The Pyodide worker")."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

WEB = Path(__file__).resolve().parent
LOCKFILE = WEB / "package-lock.json"
# Entry points bundled into <site>/assets/<name>.js (ES modules sharing chunks).
ENTRY_POINTS = {
    "playground": WEB / "editor" / "main.js",
    "catalog": WEB / "editor" / "catalog.js",
    "embedded": WEB / "embed" / "main.js",
    # The output viewers on their own, for embed.js, which imports them into other sites' pages.
    "viewers": WEB / "viewers" / "outputs.js",
}
# Classic scripts bundled whole into <site>/assets/<name>.js, for other sites' <script src> tags (a
# module has no document.currentScript, which embed.js finds its API with).
SCRIPTS = {"embed": WEB / "embed" / "script.js"}
WIRE = WEB.parent / "wire"
# What a browser needs of the npm `pyodide` package: the loader, the runtime, the standard library and
# the lock file loadPyodide fetches (not the consoles, type declarations or source maps).
PYODIDE_RUNTIME = (
    "pyodide.mjs",
    "pyodide.asm.mjs",
    "pyodide.asm.wasm",
    "python_stdlib.zip",
    "pyodide-lock.json",
)
# The worker and its Python side, beside the runtime.
WORKER = WEB / "pyodide" / "worker.js"
GLUE = WEB / "pyodide" / "pe_browser.py"


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
    """Bundle each entry point with its npm imports into `out_dir/<name>.js` (minified ES modules), and
    each script into one classic script."""
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
    scripts = [f"{name}={path}" for name, path in SCRIPTS.items()]
    command = [str(esbuild), *scripts, "--bundle", "--minify", "--format=iife", "--target=es2020"]
    _run([*command, "--log-level=warning", f"--outdir={out_dir}"], cwd=WEB)


def pyodide_assets(modules: Path, out_dir: Path) -> None:
    """`out_dir`: the Pyodide runtime files, the worker script, and `wire.zip` (the `wire` package and
    pe_browser.py, unpacked into site-packages by the worker)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in PYODIDE_RUNTIME:
        shutil.copyfile(modules / "pyodide" / name, out_dir / name)
    shutil.copyfile(WORKER, out_dir / WORKER.name)
    sources = [(path, path.relative_to(WIRE.parent)) for path in python_sources(WIRE)]
    sources.append((GLUE, Path(GLUE.name)))
    with zipfile.ZipFile(out_dir / "wire.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        for path, name in sources:
            # A fixed date: the same sources give the same bytes.
            info = zipfile.ZipInfo(name.as_posix(), (1980, 1, 1, 0, 0, 0))
            archive.writestr(info, path.read_bytes(), compress_type=zipfile.ZIP_DEFLATED)


def python_sources(package: Path) -> list[Path]:
    """The .py files of a package, sorted (no __pycache__)."""
    return sorted(path for path in package.rglob("*.py") if "__pycache__" not in path.parts)


def _run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    try:
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise AssetError(f"{command[0]}: {error}") from None
    if done.returncode != 0:
        raise AssetError(f"{' '.join(command[:2])} failed ({done.returncode}):\n{done.stderr}{done.stdout}")
