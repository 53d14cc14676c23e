"""The playground in Debian's Chromium, driven by Playwright, against a real `pe serve` (docs/web.md).

Each test saves a screenshot under its tmp dir and copies it to /tmp/pe-screens/ to be looked at."""

from __future__ import annotations

from pathlib import Path

from pe.child import NO_RATE_LIMITS, ServeProcess, start_serve
from tests.support.browser import BROWSER_MARKS, open_playground, run_for_stdout, screenshot, type_program

pytestmark = BROWSER_MARKS


def test_python_hello_world_prints_its_output(browser, site: ServeProcess, tmp_path: Path) -> None:
    page = open_playground(browser, f"{site.url}/#image=python3&example=0")
    type_program(page, "print('hello from the playground')\n")
    stdout = run_for_stdout(page)
    screenshot(page, tmp_path, "python3-hello")
    assert stdout == "hello from the playground"
    assert page.locator("#status").get_attribute("data-state") in ("ok", "cached")
    assert "wall" in page.locator("#stats").inner_text()
    page.keyboard.press("Control+Enter")  # the same run again: answered from the cache
    page.wait_for_function("document.getElementById('status').dataset.state === 'cached'", timeout=10_000)
    assert page.locator("#status").inner_text() == "Done (cached)"
    # At phone width, in the dark theme, nothing is wider than the screen.
    page.set_viewport_size({"width": 390, "height": 844})
    page.emulate_media(color_scheme="dark")
    screenshot(page, tmp_path, "python3-phone-dark")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    # The session survives a reload (localStorage).
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert "hello from the playground" in page.locator(".cm-content").inner_text()
    # Python's mode (a chunk loaded when needed) colours the string.
    coloured = """() => [...document.querySelectorAll('.cm-line span')].some(span =>
        span.textContent.includes('hello')
        && getComputedStyle(span).color !== getComputedStyle(span.parentElement).color)"""
    page.wait_for_function(coloured, timeout=5_000)
    page.close()


def test_graphviz_example_shows_an_image(browser, site: ServeProcess, tmp_path: Path) -> None:
    page = open_playground(browser, f"{site.url}/#image=graphviz&example=0")
    page.get_by_role("button", name="Run").click()
    image = page.locator("[data-file='out.svg'] img")
    image.wait_for(timeout=20_000)
    page.wait_for_function("document.querySelector(\"[data-file='out.svg'] img\").complete")
    screenshot(page, tmp_path, "graphviz-svg")
    width, height = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert width > 0 and height > 0
    assert image.get_attribute("src").startswith("blob:")
    assert page.locator("svg text").count() == 0  # the SVG is not inlined into the page
    page.close()


def test_choosing_another_example_shows_its_files(browser, site: ServeProcess) -> None:
    """python3's examples all edit main.py: the second one replaces the first one's text."""
    page = open_playground(browser, f"{site.url}/#image=python3&example=0")
    assert "print('hello')" in page.locator(".cm-content").inner_text()
    page.locator("#example").select_option("1")
    page.wait_for_function("!document.querySelector('.cm-content').innerText.includes(\"print('hello')\")")
    assert page.locator(".cm-content").inner_text().strip() != ""
    page.close()


def test_rate_limited_run_shows_a_clear_message(browser, tmp_path: Path) -> None:
    flags = ("--rate-runs-per-s", "0.01", "--rate-runs-burst", "1")
    served = start_serve(tmp_path / "serve.log", *flags)
    try:
        page = open_playground(browser, f"{served.url}/#image=busybox&example=1")
        page.locator("#env").evaluate("el => el.closest('details').open = true")
        for attempt in ("A=1", "A=2"):  # two runs the cache cannot answer
            page.locator("#env").fill(attempt)
            page.get_by_role("button", name="Run").click()
            page.wait_for_function("!document.getElementById('run').disabled", timeout=20_000)
        screenshot(page, tmp_path, "rate-limited")
        status = page.locator("#status")
        assert status.get_attribute("data-state") == "rate_limited"
        assert "Rate limited" in status.inner_text() and "try again in" in status.inner_text()
        assert "stale" in page.locator("section.outputs").get_attribute("class")
        page.close()
    finally:
        served.stop()


def test_catalogue_filters_by_mime_type_and_opens_examples(
    browser, site: ServeProcess, tmp_path: Path
) -> None:
    page = browser.new_page()
    page.goto(f"{site.url}/catalog.html")
    page.get_by_label("Output type").select_option("image/svg+xml")
    screenshot(page, tmp_path, "catalogue-svg")
    visible = page.locator(".card:not([hidden])").evaluate_all("cards => cards.map(c => c.dataset.id)")
    assert "graphviz" in visible and "busybox" not in visible
    page.goto(f"{site.url}/images/graphviz.html")
    page.get_by_role("link", name="circle layout to PNG").click()
    page.wait_for_selector("body[data-ready=true]")
    screenshot(page, tmp_path, "graphviz-example-opened")
    assert page.get_by_label("Output format").input_value() == "png"
    assert page.get_by_label("Layout engine").input_value() == "circo"
    assert "graph ring" in page.locator(".cm-content").inner_text()
    page.close()


def test_timeout_shows_the_limit_that_applied(browser, site: ServeProcess, tmp_path: Path) -> None:
    page = open_playground(browser, f"{site.url}/#image=python3")
    type_program(page, "while True:\npass")
    page.locator("#advanced summary").click()
    page.get_by_label("argv").fill("")
    page.get_by_label("Wall time limit (ms)").fill("700")
    page.get_by_role("button", name="Run").click()
    page.wait_for_function("!document.getElementById('run').disabled", timeout=20_000)
    screenshot(page, tmp_path, "timeout")
    status = page.locator("#status")
    assert status.get_attribute("data-state") == "timeout"
    assert status.inner_text() == "Timed out after 700 ms"
    page.close()


def test_an_uploaded_binary_file_reaches_the_program(browser, site: ServeProcess, tmp_path: Path) -> None:
    data = tmp_path / "data.bin"
    data.write_bytes(bytes([0, 1, 2, 254, 255]))
    page = open_playground(browser, f"{site.url}/#image=python3")
    type_program(page, "print(open('data.bin', 'rb').read().hex())\n")
    page.locator("#upload").set_input_files(str(data))
    page.get_by_role("tab", name="data.bin", selected=True).wait_for()
    assert "binary file, 5 bytes" in page.locator(".cm-content").inner_text()
    page.get_by_role("tab", name="main.py").click()
    stdout = run_for_stdout(page)
    screenshot(page, tmp_path, "upload-binary")
    assert stdout == "000102feff"
    page.close()


def test_an_edge_without_workers_shows_busy(browser, tmp_path: Path) -> None:
    flags = (*NO_RATE_LIMITS, "--worker-token", "unused")
    served = start_serve(tmp_path / "edge.log", *flags, command_name="edge")
    try:
        page = open_playground(browser, f"{served.url}/#image=python3&example=0")
        page.get_by_role("button", name="Run").click()
        page.wait_for_function("document.getElementById('status').dataset.state === 'busy'", timeout=20_000)
        screenshot(page, tmp_path, "busy-503")
        message = page.locator("#status").inner_text()
        assert message.startswith("Busy (503): no worker") and message.count("try again") == 1
        page.close()
    finally:
        served.stop()


def test_changing_a_gcc_option_changes_the_result(browser, site: ServeProcess, tmp_path: Path) -> None:
    page = open_playground(browser, f"{site.url}/#image=gcc")
    page.locator(".cm-content").click()
    page.keyboard.press("Control+a")
    page.keyboard.insert_text('#include <stdio.h>\nint main(void) { printf("%ld\\n", __STDC_VERSION__); }\n')
    stdout = page.locator("[data-stream=stdout] pre")
    seen = {}
    for std in ("c99", "c17"):
        page.get_by_label("Language standard").select_option(std)
        page.get_by_role("button", name="Run").click()
        page.wait_for_function("!document.getElementById('run').disabled", timeout=30_000)
        seen[std] = stdout.inner_text().strip()
    screenshot(page, tmp_path, "gcc-std")
    assert seen == {"c99": "199901", "c17": "201710"}
    # A flag outside the option's pattern is refused in the form, before any request.
    page.get_by_label("More flags").fill("-O2; rm -rf /")
    page.get_by_role("button", name="Run").click()
    assert page.evaluate("document.activeElement.id") == "option-flags"
    assert page.locator("#status").inner_text().startswith("Not run: More flags: ")
    screenshot(page, tmp_path, "gcc-bad-flag")
    page.close()
