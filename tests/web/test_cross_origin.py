"""The static site deployed on another origin than the API (docs/web.md, "Deploying the site"): built
with `--api-base`, served by a plain static file server on another port, it runs programs, parses their
cpio answers with Pyodide and browses an image by Range requests, all across origins (api/cors.py)."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pe.settings import Settings
from tests.support.browser import BROWSER_MARKS, open_playground, screenshot
from tests.web.test_pyodide import run_hello, wait_for_pyodide
from web.site import build_site

pytestmark = BROWSER_MARKS


class StaticFiles(http.server.SimpleHTTPRequestHandler):
    """Any static host: files as they are, with the WebAssembly type Pyodide compiles streaming."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".wasm": "application/wasm"}

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def static_site(tmp_path_factory: pytest.TempPathFactory, edge) -> Iterator[str]:
    out = tmp_path_factory.mktemp("static") / "public"
    build_site(out, Settings().cache_dir, api_base=edge.url)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(StaticFiles, directory=out))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_site_on_another_origin_runs_and_parses_with_pyodide(
    browser,
    static_site: str,
    edge,
    tmp_path: Path,
) -> None:
    assert static_site.rsplit(":", 1)[1] != edge.url.rsplit(":", 1)[1]  # two origins
    api_calls = []
    page = open_playground(browser, f"{static_site}/#image=python3")
    page.on("request", lambda r: api_calls.append(r.url) if "/api/v1/" in r.url else None)
    wait_for_pyodide(page)
    assert run_hello(page, "hello across origins") == "hello across origins"
    screenshot(page, tmp_path, "cross-origin-hello")
    assert page.locator("#status").get_attribute("data-parser") == "pyodide"
    assert api_calls and all(url.startswith(edge.url) for url in api_calls)
    # The image browser reads the image from the API's origin by Range requests.
    page.get_by_text("Files in the image").click()
    page.get_by_label("Go to").fill("/usr/bin")
    page.get_by_label("Go to").press("Enter")
    usr_bin = page.locator("[role=treeitem][data-path='/usr/bin']")
    usr_bin.locator("[role=group] [role=treeitem]").first.wait_for(timeout=30_000)
    names = usr_bin.locator(":scope > [role=group] > [role=treeitem] > .row-line .name").all_inner_texts()
    assert "python3.11" in names
    assert any(url.endswith(".erofs") for url in api_calls)
    page.close()
