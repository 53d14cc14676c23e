"""Debian's Chromium driven by Playwright, for the browser tests in tests/web/ (docs/web.md, "Tests").

Each test module gets its own browser profile (the `browser` fixture in tests/web/conftest.py) and
marks itself with `BROWSER_MARKS`; screenshots go to the test's tmp dir and to /tmp/pe-screens/, to be
looked at."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
SCREENS = Path("/tmp/pe-screens")
# Headless, no sandbox (we are root), and nothing that reaches the network by itself.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip

BROWSER_MARKS = [
    pytest.mark.browser,
    pytest.mark.sandbox,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox runner needs root (crun, mounts)"),
]


def screenshot(page, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    SCREENS.mkdir(exist_ok=True)
    shutil.copy(path, SCREENS / path.name)


def open_playground(browser, url: str):
    """A new page on `url`, once the playground has rendered."""
    page = browser.new_page()
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]")
    return page


def type_program(page, text: str) -> None:
    """Replace the open file's text with `text`, typed into CodeMirror as a person would."""
    page.locator(".cm-content").click()
    page.keyboard.press("Control+a")
    page.keyboard.type(text)


def run_for_stdout(page) -> str:
    """Press Ctrl-Enter and wait for the run's stdout; its text, stripped."""
    page.keyboard.press("Control+Enter")
    stdout = page.locator("[data-stream=stdout] pre")
    stdout.wait_for(timeout=20_000)
    return stdout.inner_text().strip()
