"""The Pyodide worker in Debian's Chromium against a real `pe serve` (docs/web.md, "The Pyodide worker"):
run answers asked for as application/x-cpio and parsed by `wire` in the worker; the JSON fallback when
Pyodide cannot load; the image file browser reading the erofs image by HTTP Range requests.

Screenshots go to the test's tmp dir and /tmp/pe-screens/ (the shared helpers of test_playground.py)."""

from __future__ import annotations

import io
import json
import re
import shutil
import zipfile
from pathlib import Path

import httpx

from pe.child import ServeProcess
from tests.support.browser import BROWSER_MARKS, open_playground, run_for_stdout, screenshot, type_program
from web.assets import WIRE
from web.site import site_key

pytestmark = BROWSER_MARKS

PYODIDE_READY_S = 60  # a cold start compiles 9.6 MB of WebAssembly on a busy 2-core machine


def wait_for_pyodide(page, state: str = "ready") -> None:
    page.wait_for_function(
        f"document.body.dataset.pyodide === {json.dumps(state)}", timeout=PYODIDE_READY_S * 1000
    )


def run_hello(page, text: str) -> str:
    type_program(page, f"print({text!r})\n")
    return run_for_stdout(page)


def test_hello_world_is_parsed_from_cpio_by_pyodide(browser, site: ServeProcess, tmp_path: Path) -> None:
    accepts = []
    page = open_playground(browser, f"{site.url}/#image=python3")
    page.on(
        "request",
        lambda r: accepts.append(r.headers.get("accept")) if r.url.endswith("/api/v1/run") else None,
    )
    wait_for_pyodide(page)
    assert run_hello(page, "hello through cpio") == "hello through cpio"
    screenshot(page, tmp_path, "pyodide-cpio-hello")
    assert accepts == ["application/x-cpio"]
    assert page.locator("#status").get_attribute("data-parser") == "pyodide"
    assert page.locator("#status").get_attribute("data-state") in ("ok", "cached")
    assert "wall" in page.locator("#stats").inner_text()
    timings = page.evaluate(
        """() => ['pe:pyodide-ready', 'pe:pyodide-parse'].map(
             name => performance.getEntriesByName(name).map(m => [m.duration, m.detail]))"""
    )
    ready, parses = timings
    assert len(ready) == 1 and ready[0][0] > ready[0][1]["workerMs"] > ready[0][1]["pyodideMs"] > 0
    assert len(parses) == 1 and parses[0][1]["bytes"] > 0
    page.close()


def test_blocked_pyodide_falls_back_to_json(browser, site: ServeProcess, tmp_path: Path) -> None:
    accepts = []
    page = browser.new_page()
    page.route("**/assets/pyodide/**", lambda route: route.abort())
    page.on(
        "request",
        lambda r: accepts.append(r.headers.get("accept")) if r.url.endswith("/api/v1/run") else None,
    )
    page.goto(f"{site.url}/#image=python3")
    page.wait_for_selector("body[data-ready=true]")
    wait_for_pyodide(page, "failed")
    assert run_hello(page, "hello without pyodide") == "hello without pyodide"
    assert accepts == ["application/json"]
    assert page.locator("#status").get_attribute("data-parser") == "json"
    # The file browser says why it cannot work rather than staying empty.
    page.get_by_text("Files in the image").click()
    page.wait_for_function(
        "document.getElementById('image-files-status').textContent.includes('could not load')"
    )
    assert page.locator("#image-files-status").inner_text().startswith("Browsing the image needs Python")
    assert page.locator("#image-tree [role=treeitem]").count() == 0
    screenshot(page, tmp_path, "pyodide-blocked-json")
    page.close()


def test_image_browser_lists_usr_bin_and_opens_a_text_file(
    browser,
    site: ServeProcess,
    tmp_path: Path,
) -> None:
    ranges = []  # the Range header of every request for the image
    page = open_playground(browser, f"{site.url}/#image=python3")
    page.on("request", lambda r: ranges.append(r.headers.get("range")) if r.url.endswith(".erofs") else None)
    page.get_by_text("Files in the image").click()
    page.get_by_label("Go to").fill("/usr/bin")
    page.get_by_label("Go to").press("Enter")
    usr_bin = page.locator("[role=treeitem][data-path='/usr/bin']")
    usr_bin.locator("[role=group] [role=treeitem]").first.wait_for(timeout=PYODIDE_READY_S * 1000)
    names = usr_bin.locator(":scope > [role=group] > [role=treeitem] > .row-line .name").all_inner_texts()
    assert "python3.11" in names and "py3clean" in names
    # A file's path in the Go to field opens it.
    page.get_by_label("Go to").fill("/usr/bin/py3clean")
    page.get_by_label("Go to").press("Enter")
    view = page.locator("#image-file[data-path='/usr/bin/py3clean']")
    view.wait_for(timeout=10_000)
    page.wait_for_function(
        "document.getElementById('image-file').textContent.includes('#! /usr/bin/python3')"
    )
    screenshot(page, tmp_path, "image-browser-py3clean")
    assert "text/plain" in view.locator("h3").inner_text()
    status = page.locator("#image-files-status")
    fetched, size = int(status.get_attribute("data-fetched")), int(status.get_attribute("data-size"))
    assert size > 10 << 20  # the python3 image is tens of MiB
    assert 0 < fetched < size / 50, f"read {fetched} of {size} bytes"
    # Every read was a Range request, and they add up to what the page says it read.
    spans = [re.fullmatch(r"bytes=(\d+)-(\d+)", header or "") for header in ranges]
    assert all(spans), ranges
    assert sum(int(span[2]) - int(span[1]) + 1 for span in spans) == fetched
    # /bin is a symlink to usr/bin: it shows its target and opens like a folder.
    page.get_by_label("Go to").fill("/bin/py3clean")
    page.get_by_label("Go to").press("Enter")
    page.locator("#image-file[data-path='/bin/py3clean']").wait_for(timeout=10_000)
    bin_row = page.locator("[role=treeitem][data-path='/bin'] > .row-line .name")
    assert bin_row.inner_text() == "bin → usr/bin"
    screenshot(page, tmp_path, "image-browser-bin-symlink")
    # At phone width, in the dark theme, the tree and the file fit the screen.
    page.set_viewport_size({"width": 390, "height": 844})
    page.emulate_media(color_scheme="dark")
    screenshot(page, tmp_path, "image-browser-phone-dark")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.close()


def test_image_browser_is_usable_by_keyboard(browser, site: ServeProcess, tmp_path: Path) -> None:
    page = open_playground(browser, f"{site.url}/#image=busybox")
    page.locator("#image-files-panel summary").focus()
    page.keyboard.press("Enter")  # opens the panel: the root is listed
    root = page.locator("[role=treeitem][data-path='/']")
    root.locator("[role=treeitem]").first.wait_for(timeout=PYODIDE_READY_S * 1000)
    root.focus()
    page.keyboard.press("ArrowDown")  # the first entry of /, a folder
    first = page.evaluate("document.activeElement.dataset.path")
    assert first.count("/") == 1 and page.evaluate("document.activeElement.dataset.kind") == "dir"
    page.keyboard.press("ArrowRight")  # expands it
    page.wait_for_function(
        "document.activeElement.querySelector('[role=group] [role=treeitem]') !== null", timeout=10_000
    )
    page.keyboard.press("ArrowRight")  # into its first entry
    assert page.evaluate("document.activeElement.dataset.path").startswith(first + "/")
    page.keyboard.press("ArrowLeft")  # back to the parent
    assert page.evaluate("document.activeElement.dataset.path") == first
    screenshot(page, tmp_path, "image-browser-keyboard")
    # A path that is not there: said, and the last folder found is focused.
    page.get_by_label("Go to").fill("/bin/no-such-tool")
    page.get_by_label("Go to").press("Enter")
    page.wait_for_function(
        "document.getElementById('image-files-status').textContent.startsWith('No /bin/no-such')"
    )
    assert page.evaluate("document.activeElement.dataset.path") == "/bin"
    # Another image in the picker: the tree shows its files instead.
    page.locator("#image").select_option("python3")
    page.locator("[role=treeitem][data-path='/usr']").wait_for(timeout=10_000)
    assert page.locator("[role=treeitem][data-path='/bin/busybox']").count() == 0
    page.close()


def test_the_site_serves_only_the_runtime_files_with_their_types(site: ServeProcess) -> None:
    """Streaming compilation needs application/wasm; a module worker refuses a non-JavaScript type."""
    base = f"{site.url}/assets/pyodide"
    expected = {
        "pyodide.asm.wasm": "application/wasm",
        "pyodide.mjs": "javascript",
        "pyodide.asm.mjs": "javascript",
        "worker.js": "javascript",
        "wire.zip": "application/zip",
    }
    for name, kind in expected.items():
        response = httpx.get(f"{base}/{name}", headers={"Range": "bytes=0-15"})
        assert response.status_code in (200, 206), name
        assert kind in response.headers["content-type"], (name, response.headers["content-type"])
    for name in ("console.html", "pyodide.mjs.map", "pyodide.d.ts", "package.json"):
        assert httpx.get(f"{base}/{name}").status_code == 404, name
    with zipfile.ZipFile(io.BytesIO(httpx.get(f"{base}/wire.zip").content)) as archive:
        names = archive.namelist()
    assert "pe_browser.py" in names and "wire/erofs/image.py" in names
    assert not any("__pycache__" in name for name in names)


def test_the_site_key_changes_with_the_wire_package(tmp_path: Path, monkeypatch) -> None:
    wire = tmp_path / "wire"
    shutil.copytree(WIRE, wire, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr("web.site.WIRE", wire)
    before = site_key("")
    (wire / "__pycache__").mkdir()
    (wire / "__pycache__" / "cpio.cpython-311.pyc").write_bytes(b"compiled")
    assert site_key("") == before  # compiled files are not sources
    (wire / "cpio.py").write_text((wire / "cpio.py").read_text() + "\n# changed\n")
    assert site_key("") != before
