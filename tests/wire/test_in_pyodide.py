"""The `wire/` tests again, inside real Pyodide (npm `pyodide`, Python 3.14 in WebAssembly) under Node:
the same code the playground runs in its Web Worker (docs/web.md, "Pyodide under Node").

pytest, hypothesis and their pure-Python dependencies are copied into Pyodide's filesystem from this
virtualenv's installed copies (nothing is downloaded); tests/pyodide/pyodide_skips.py skips, with the
reason, the tests that need processes or the kernel."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from pe.settings import Settings
from web.assets import node_modules

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
REPO = Path(__file__).resolve().parents[2]
RUNNER = REPO / "tests" / "pyodide" / "run_pytest.mjs"
# Pure-Python distributions copied from this virtualenv; hypothesis has a compiled part (Rust), so its
# own wheel for Pyodide's ABI, of the version installed here, is downloaded once into the cache.
DISTRIBUTIONS = ["pytest", "pluggy", "iniconfig", "packaging", "pygments", "sortedcontainers"]
COMPILED = ["hypothesis"]
# What the wire tests import from the project, beside wire/ itself (test_wire_erofs.py's store lookup).
SOURCES = ["wire", "catalog", "pe/__init__.py", "pe/settings.py", "pyproject.toml", "tests/wire"]
SOURCES += ["tests/pyodide"]
GUEST_REPO = "/work/repo"
GUEST_DEPS = "/work/deps"


def source_files() -> Iterator[tuple[Path, str]]:
    for name in SOURCES:
        path = REPO / name
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            if "__pycache__" not in file.parts and file != Path(__file__).resolve():
                yield file, f"{GUEST_REPO}/{file.relative_to(REPO)}"


def dependency_files() -> Iterator[tuple[Path, str]]:
    """Each distribution's installed files (with its dist-info, so hypothesis's pytest plugin is found by
    its entry point), scripts and compiled caches left out."""
    for name in DISTRIBUTIONS:
        distribution = metadata.distribution(name)
        for file in distribution.files or []:
            if file.parts[0] != ".." and file.suffix != ".pyc":
                yield Path(distribution.locate_file(file)), f"{GUEST_DEPS}/{file.as_posix()}"


def pyodide_wheels(pyodide: Path, cache_dir: Path) -> list[Path]:
    """The wheels of COMPILED for this Pyodide's platform (`<cache>/pyodide-wheels/<abi>/`), fetched by pip
    when missing."""
    info = json.loads((pyodide / "pyodide-lock.json").read_text())["info"]
    python = ".".join(info["python"].split(".")[:2])
    folder = cache_dir / "pyodide-wheels" / info["abi_version"]
    wheels = []
    for name in COMPILED:
        version = metadata.version(name)
        found = sorted(folder.glob(f"{name}-{version}-*.whl"))
        if not found:
            command = [sys.executable, "-m", "pip", "download", "--quiet", f"{name}=={version}", "--no-deps"]
            command += ["--only-binary=:all:", f"--platform=pyemscripten_{info['abi_version']}_wasm32"]
            command += [f"--python-version={python}", f"--dest={folder}"]
            done = subprocess.run(command, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, f"pip could not fetch {name} {version} for Pyodide:\n{done.stderr}"
            found = sorted(folder.glob(f"{name}-{version}-*.whl"))
        wheels += found
    return wheels


def test_wire_tests_pass_inside_pyodide(tmp_path: Path) -> None:
    cache_dir = Settings().cache_dir
    pyodide = node_modules(cache_dir) / "pyodide"
    manifest = {
        "files": [[str(host), guest] for host, guest in [*source_files(), *dependency_files()]],
        "wheels": [[str(wheel), GUEST_DEPS] for wheel in pyodide_wheels(pyodide, cache_dir)],
        "sys_path": [GUEST_REPO, GUEST_DEPS, f"{GUEST_REPO}/tests/pyodide"],
        "cwd": GUEST_REPO,
        "pytest_args": ["-q", "-rs", "-p", "pyodide_skips", "-p", "no:cacheprovider", "tests/wire"],
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    command = ["node", str(RUNNER), str(pyodide), str(tmp_path / "manifest.json")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    summary = json.loads(output.split("PYODIDE-SUMMARY ", 1)[1].splitlines()[0])
    assert summary["platform"] == "emscripten" and summary["python"] == [3, 14], summary
    assert summary.get("passed", 0) >= 150 and "failed" not in summary, output
