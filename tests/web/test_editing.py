"""Using the playground's editor (issue 8, items 2 and 6): without a mouse — every control has a name a
screen reader can say, focus can be seen, Tab leaves the code editor (Escape first, as CodeMirror
documents), a program is edited and run from the keyboard alone — and managing files: add, rename
(non-ASCII, in a folder), drop from the desktop, delete."""

from __future__ import annotations

from pathlib import Path

from pe.child import ServeProcess
from tests.support.browser import BROWSER_MARKS, open_playground, run_for_stdout, screenshot, type_program

pytestmark = BROWSER_MARKS

# Each visible control's accessible name, by the rules the page relies on (label, aria-label,
# aria-labelledby, a button's text, a summary's text).
CONTROLS = "input, select, textarea, button, summary, [role=tab], [contenteditable=true]"
UNNAMED_CONTROLS = """selector => [...document.querySelectorAll(selector)]
  .filter(el => el.offsetParent !== null)
  .filter(el => {
    const labelled = el.labels?.length || el.getAttribute('aria-label')
      || (el.getAttribute('aria-labelledby') || '').split(' ')
           .some(id => document.getElementById(id)?.textContent.trim());
    const texty = ['BUTTON', 'SUMMARY'].includes(el.tagName) || el.getAttribute('role') === 'tab';
    return !(labelled || (texty && el.textContent.trim()));
  })
  .map(el => el.outerHTML.slice(0, 120))"""


def focused(page) -> str:
    """What has the focus: its id, or its aria-label, or its tag."""
    return page.evaluate(
        """() => { const el = document.activeElement;
                   return el.id || el.getAttribute('aria-label') || el.tagName.toLowerCase(); }"""
    )


def tab_until(page, target: str, limit: int = 40) -> list[str]:
    """Press Tab until `target` has the focus; the names passed on the way."""
    passed = []
    for _ in range(limit):
        page.keyboard.press("Tab")
        passed.append(focused(page))
        if passed[-1] == target:
            return passed
    raise AssertionError(f"{target} not reached by Tab; focus went through {passed}")


def test_every_control_has_a_name(browser, edge: ServeProcess) -> None:
    page = open_playground(browser, f"{edge.url}/#image=gcc&example=0")
    page.locator("#advanced summary").click()  # the argv, env, stdin and limit fields too
    visible = page.evaluate(
        "s => [...document.querySelectorAll(s)].filter(el => el.offsetParent).length", CONTROLS
    )
    assert visible > 20  # the option form, the file tabs, the advanced fields…
    assert page.evaluate(UNNAMED_CONTROLS, CONTROLS) == []
    page.close()


def test_a_program_is_edited_and_run_from_the_keyboard(browser, edge: ServeProcess, tmp_path: Path) -> None:
    page = open_playground(browser, f"{edge.url}/#image=python3&example=0")
    page.evaluate("document.activeElement.blur()")
    tab_until(page, "File contents")  # the CodeMirror editor's content
    page.keyboard.press("Control+a")
    page.keyboard.type("print('typed without a mouse')\n")
    # Tab in the editor indents; Escape then Tab moves on.
    page.keyboard.press("Escape")
    passed = tab_until(page, "run")
    assert "File contents" not in passed
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none", "the focused Run button shows a focus ring"
    screenshot(page, tmp_path, "keyboard-run-focused")
    page.keyboard.press("Enter")
    stdout = page.locator("[data-stream=stdout] pre")
    stdout.wait_for(timeout=20_000)
    assert stdout.inner_text().strip() == "typed without a mouse"
    page.close()


def test_files_are_added_renamed_dropped_and_deleted(browser, edge: ServeProcess, tmp_path: Path) -> None:
    page = open_playground(browser, f"{edge.url}/#image=python3&example=0")
    answers = iter(["data/notes.txt", "data/ünï.txt"])  # the names typed into the prompts
    page.on("dialog", lambda dialog: dialog.accept(next(answers, "")))
    page.get_by_role("button", name="+ File").click()
    page.get_by_role("tab", name="data/notes.txt", selected=True).wait_for()
    page.get_by_role("button", name="Rename").click()
    page.get_by_role("tab", name="data/ünï.txt", selected=True).wait_for()
    # A file dropped on the editor from the desktop opens in its own tab.
    page.evaluate(
        """() => {
        const transfer = new DataTransfer();
        transfer.items.add(new File(['dropped text\\n'], 'dropped.txt', {type: 'text/plain'}));
        const editor = document.getElementById('editor');
        const init = {dataTransfer: transfer, bubbles: true, cancelable: true};
        editor.dispatchEvent(new DragEvent('dragover', init));
        editor.dispatchEvent(new DragEvent('drop', init));
    }"""
    )
    page.get_by_role("tab", name="dropped.txt", selected=True).wait_for()
    assert "dropped text" in page.locator(".cm-content").inner_text()
    page.get_by_role("button", name="Delete").click()  # the confirm is accepted
    page.get_by_role("tab", name="dropped.txt").wait_for(state="detached")
    page.get_by_role("tab", name="main.py").click()
    type_program(page, "import os; print(sorted(os.listdir('data')))\n")
    stdout = run_for_stdout(page)
    screenshot(page, tmp_path, "files-managed")
    assert stdout == "['ünï.txt']"
    page.close()
