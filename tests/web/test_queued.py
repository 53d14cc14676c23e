"""The state line of a run that waits for a worker (docs/web.md, "States"): with the only slot of a
`pe serve --slots 1` busy and another run waiting, a run started in the page shows "Queued (1 ahead)",
"Queued (next in line)", then "Running…", then its output.

Screenshots of each state go under the test's tmp dir and to /tmp/pe-screens/."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx

from pe.child import NO_RATE_LIMITS, start_serve
from tests.support.browser import BROWSER_MARKS, open_playground, screenshot, type_program

pytestmark = BROWSER_MARKS

STATE = "document.getElementById('status').dataset.state"


def test_a_run_behind_a_busy_slot_shows_its_place_then_running_then_its_output(
    browser, tmp_path: Path
) -> None:
    served = start_serve(tmp_path / "serve.log", "--slots", "1", *NO_RATE_LIMITS)
    try:
        page = open_playground(browser, f"{served.url}/#image=python3&example=0")
        # Long enough to be seen running: the state line is read between the polls of the page.
        type_program(page, "import time\ntime.sleep(1.5)\nprint('after the queue')\n")
        for argv in (["sleep", "4"], ["sleep", "1"]):  # the one slot busy, and one run waiting
            busy = {"image": "busybox", "argv": argv, "env": {"MARK": uuid.uuid4().hex}}
            answer = httpx.post(f"{served.url}/api/v1/run", json=busy, headers={"Prefer": "respond-async"})
            assert answer.status_code == 202, answer.text

        page.get_by_role("button", name="Run").click()
        page.wait_for_function(f"{STATE} === 'queued'", timeout=10_000)
        status = page.locator("#status")
        assert status.inner_text() == "Queued (1 ahead)"
        screenshot(page, tmp_path, "queued-1-ahead")
        next_in_line = "document.getElementById('status').textContent === 'Queued (next in line)'"
        page.wait_for_function(next_in_line, timeout=15_000)
        screenshot(page, tmp_path, "queued-next-in-line")

        page.wait_for_function(f"{STATE} === 'running'", timeout=15_000)
        assert status.inner_text() == "Running…"
        screenshot(page, tmp_path, "queued-then-running")

        stdout = page.locator("[data-stream=stdout] pre")
        stdout.wait_for(timeout=20_000)
        assert stdout.inner_text().strip() == "after the queue"
        assert page.evaluate(STATE) == "ok"
        screenshot(page, tmp_path, "queued-then-done")
        page.close()
    finally:
        served.stop()
