"""The playground's limit inputs and busy state, and the site's gzip copies (web/compress.py), against a
real `pe serve` in Debian's Chromium (docs/web.md)."""

from __future__ import annotations

import contextlib
import gzip
import random
import threading
import time
from pathlib import Path

import httpx

from pe.child import NO_RATE_LIMITS, ServeProcess, start_serve
from tests.support.browser import BROWSER_MARKS, open_playground, screenshot
from web.compress import precompress

pytestmark = BROWSER_MARKS


def python_run(page, program: str) -> None:
    page.locator(".cm-content").click()
    page.keyboard.press("Control+a")
    page.keyboard.insert_text(program)
    page.locator("#advanced summary").click()
    page.get_by_label("argv").fill("")


def test_the_stream_limit_input_cuts_stdout(browser, site: ServeProcess, tmp_path: Path) -> None:
    page = open_playground(browser, f"{site.url}/#image=python3")
    python_run(page, "print('x' * 100_000)\n")
    stream_limit = page.get_by_label("stdout, stderr each (KiB)")
    assert stream_limit.get_attribute("placeholder") == "default 1024"  # 1 MiB, shown in KiB
    stream_limit.fill("4")
    page.get_by_label("Processes and threads").fill("16")
    with page.expect_request("**/api/v1/run") as request:
        page.get_by_role("button", name="Run").click()
    page.wait_for_function("!document.getElementById('run').disabled", timeout=20_000)
    screenshot(page, tmp_path, "stream-limit")
    sent = request.value.post_data_json["limits"]
    assert sent == {"stream_bytes": 4096, "pids": 16}
    stdout = page.locator("[data-stream=stdout]")
    assert "Truncated: the program wrote more than the limit allowed." in stdout.inner_text()
    assert "limits" in page.locator("#stats").inner_text()
    # A value above the API's maximum is refused in the form, before any request.
    page.get_by_label("Any one file (MiB)").fill("65")
    page.get_by_role("button", name="Run").click()
    assert page.evaluate("document.activeElement.id") == "limit-file"
    assert page.locator("#status").inner_text().startswith("Not run: Any one file (MiB): ")
    page.close()


def queue_depth(served: ServeProcess) -> int:
    metrics = httpx.get(f"{served.url}/metrics", timeout=5).text
    line = next(line for line in metrics.splitlines() if line.startswith("pe_queue_depth "))
    return int(float(line.split()[1]))


def test_a_full_queue_shows_busy(browser, tmp_path: Path) -> None:
    """One slot and room for one waiting job: a slow job runs, a second waits, the page's run is the third."""
    served = start_serve(tmp_path / "serve.log", *NO_RATE_LIMITS, "--slots", "1", "--queue-size", "1")
    slow = {"image": "python3", "argv": ["python3", "-c", "import time; time.sleep(20)"], "cache": False}
    slow["limits"] = {"wall_ms": 30_000}

    def post(label: str) -> None:
        body = {**slow, "env": {"RUN": label}}
        with contextlib.suppress(httpx.HTTPError):  # the edge stops before the sleep ends
            httpx.post(f"{served.url}/api/v1/run", json=body, timeout=40)

    try:
        threading.Thread(target=post, args=("running",), daemon=True).start()
        time.sleep(1.5)  # taken by the one slot at once; this leaves it time to be
        threading.Thread(target=post, args=("waiting",), daemon=True).start()
        deadline = time.monotonic() + 10
        while queue_depth(served) < 1:
            assert time.monotonic() < deadline, "the second slow job never waited in the queue"
            time.sleep(0.1)
        page = open_playground(browser, f"{served.url}/#image=python3&example=0")
        page.get_by_role("button", name="Run").click()
        page.wait_for_function("document.getElementById('status').dataset.state === 'busy'", timeout=20_000)
        screenshot(page, tmp_path, "busy-queue-full")
        message = page.locator("#status").inner_text()
        assert message.startswith("Busy (503): too many runs are waiting") and message.count("try again") == 1
        page.close()
    finally:
        served.stop()


def test_big_assets_are_served_gzipped(site: ServeProcess) -> None:
    """Pyodide's wasm, the largest download of the first page: 9.6 MB, about 3.5 MB gzipped."""
    url = f"{site.url}/assets/pyodide/pyodide.asm.wasm"
    with httpx.stream("GET", url, headers={"accept-encoding": "gzip"}) as packed:
        raw = b"".join(packed.iter_raw())
    plain = httpx.get(url, headers={"accept-encoding": "identity"})
    assert packed.headers["content-encoding"] == "gzip"
    assert packed.headers["content-type"] == plain.headers["content-type"] == "application/wasm"
    assert packed.headers["vary"] == plain.headers["vary"] == "Accept-Encoding"
    assert "content-encoding" not in plain.headers
    assert gzip.decompress(raw) == plain.content
    assert len(raw) < 0.5 * len(plain.content)
    refused = httpx.get(url, headers={"accept-encoding": "gzip;q=0, identity"})
    assert "content-encoding" not in refused.headers
    # A conditional request for the gzipped copy is answered 304.
    again = httpx.get(url, headers={"accept-encoding": "gzip", "if-none-match": packed.headers["etag"]})
    assert again.status_code == 304


def test_precompress_writes_copies_only_where_gzip_helps(tmp_path: Path) -> None:
    text = b"".join(b"line %d of some text\n" % i for i in range(2000))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "app.js").write_bytes(text)
    (tmp_path / "tiny.css").write_bytes(b"body{}")
    (tmp_path / "noise.bin").write_bytes(random.Random(1).randbytes(50_000))
    written = precompress(tmp_path)
    assert written == [tmp_path / "sub" / "app.js.gz"]
    assert gzip.decompress(written[0].read_bytes()) == text
    assert precompress(tmp_path) == written  # a second pass leaves the .gz files alone, same bytes
