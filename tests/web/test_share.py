"""Share links (web/editor/share.js, docs/sharing-links.md): the codec under Node, and links made in one
Chromium context opened in another against a real `pe serve`.

Links are also written here in Python (raw deflate, base64url), independently of share.js, so the
tests check the documented format and not only that share.js agrees with itself."""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pe.child import ServeProcess
from tests.support.browser import BROWSER_MARKS, CHROMIUM, CHROMIUM_ARGS, screenshot
from tests.support.node import run_module

pytestmark = BROWSER_MARKS
sync_api = pytest.importorskip("playwright.sync_api")

SHARE_JS = Path(__file__).resolve().parents[2] / "web" / "editor" / "share.js"


def make_link(state: object, version: str = "s1") -> str:
    """A fragment (without `#`) as docs/sharing-links.md describes it."""
    text = state if isinstance(state, bytes) else json.dumps(state).encode()
    deflate = zlib.compressobj(wbits=-15)
    data = deflate.compress(text) + deflate.flush()
    return f"{version}={base64.urlsafe_b64encode(data).decode().rstrip('=')}"


def read_link(fragment: str) -> dict:
    payload = fragment.removeprefix("#").removeprefix("s1=")
    data = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    return json.loads(zlib.decompress(data, wbits=-15))


def node_codec(script: str) -> dict:
    """Run `script` (an async body with `share` imported and `encode`/`decode` helpers that catch the
    error message) under Node; its `result` is returned."""
    helpers = """
const decode = async (fragment) => {
  try { return { state: await share.decodeState(fragment) }; }
  catch (error) { return { error: `${error.name}: ${error.message}` }; }
};
result = {};
"""
    return run_module(SHARE_JS, "share", helpers + script)


FULL_STATE = {
    "image": "python3",
    "digest": "sha256:" + "ab" * 32,
    "files": {"main.py": "print('naïve — 日本語 🎉')\n", "data.bin": {"base64": "AAEC/v8="}},
    "argv": ["python3", "main.py"],
    "env": {"GREETING": "grüß dich"},
    "stdin": "ünïcode\n",
    "options": {"flag": True, "level": 2, "name": "x"},
    "limits": {"wall_ms": 700, "stream_bytes": 2048},
    "run": "cd" * 32,
}
EMPTY_STATE = {"v": 1, "image": "busybox", "digest": None, "files": {}, "argv": [], "env": {},
               "stdin": "", "options": {}, "limits": {}}  # fmt: skip


def test_codec_round_trips_in_node() -> None:
    got = node_codec(f"""
const full = {json.dumps(FULL_STATE)};
result.link = await share.encodeState(full);
result.full = await decode("#" + result.link);
result.empty = await decode(await share.encodeState({{ image: "busybox" }}));
result.python = await decode({json.dumps(make_link({**FULL_STATE, "v": 1}))});
""")
    assert got["full"]["state"] == {"v": 1, **FULL_STATE}  # non-ASCII text and the binary file intact
    assert got["empty"]["state"] == EMPTY_STATE  # every field present, with its empty default
    assert got["python"]["state"] == {"v": 1, **FULL_STATE}  # a link written to the documented format
    link = got["link"]
    assert link.startswith("s1=") and all(c.isalnum() or c in "-_" for c in link[3:])  # base64url, no padding
    assert read_link(link) == {"v": 1, **FULL_STATE}  # and share.js writes that format


def shaped(**fields: object) -> str:
    """A link to a state with `fields` over a minimal good one."""
    return make_link({"v": 1, "image": "x", **fields})


MALFORMED = {
    "not ours": ("image=python3", "This is not a share link"),
    "unknown version": (make_link({"v": 1, "image": "x"}, "s9"), "format s9, which this page does not read"),
    "bad base64": ("s1=abc$def", "not base64url"),
    "cut base64": ("s1=abcde", "not base64url"),
    "bad deflate": ("s1=" + base64.urlsafe_b64encode(b"\xff" * 30).decode(), "does not decompress"),
    "empty": ("s1=", "does not decompress"),
    "cut short": (shaped(files={"a": "b" * 100})[:22], "does not decompress"),
    "not json": (make_link(b"{nope"), "not UTF-8 JSON"),
    "not utf-8": (make_link(b'"\xff"'), "not UTF-8 JSON"),
    "a list": (make_link([1, 2]), "the state is not an object"),
    "no version": (make_link({"image": "python3"}), "v is missing"),
    "no image": (make_link({"v": 1}), "image is not an image id"),
    "bad digest": (shaped(digest="md5:00"), "digest is not sha256"),
    "bad file": (shaped(files={"a": 3}), 'file "a" is neither text nor {base64}'),
    "bad binary": (shaped(files={"a": {"base64": "!"}}), 'file "a" is neither'),
    "bad argv": (shaped(argv="ls -l"), "argv is not a list of strings"),
    "bad env": (shaped(env={"A": 1}), "env is not {NAME: string}"),
    "bad limits": (shaped(limits={"wall_ms": "5"}), "limits is not {name: number}"),
    "bad run": (shaped(run="../etc"), "run is not a run id"),
    "bomb": (make_link(b" " * (17 << 20)), "expands to more than 16 MiB"),
}  # fmt: skip


def test_malformed_links_give_a_clear_message_in_node() -> None:
    links = {name: link for name, (link, _) in MALFORMED.items()}
    got = node_codec(f"""
for (const [name, link] of Object.entries({json.dumps(links)})) result[name] = await decode(link);
""")
    for name, (_, message) in MALFORMED.items():
        assert "state" not in got[name], name
        assert got[name]["error"].startswith("ShareLinkError: "), name
        assert message in got[name]["error"], (name, got[name]["error"])


# Browser tests. Each link is opened in a context of its own (`browser.new_context()`: no storage
# shared with the context that made the link), so only the link can carry the state.

PROGRAM = """import os, sys
print("héllo — 日本語 🎉", open("data.bin", "rb").read().hex(), "debug" if __debug__ else "optimised")
print(os.environ.get("GREETING"), sys.stdin.read().strip())
"""
DATA = bytes([0, 1, 2, 0x80, 0xFE, 0xFF])
EXPECTED = f"héllo — 日本語 🎉 {DATA.hex()} optimised\ngrüß dich ünï"


@pytest.fixture(scope="module")
def chromium() -> Iterator:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


def fresh_page(chromium, url: str, posts: list[str] | None = None):
    """`url` in a new context (its own storage); `posts` collects the URLs of POST requests."""
    page = chromium.new_context().new_page()
    if posts is not None:
        page.on("request", lambda request: request.method == "POST" and posts.append(request.url))
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]")
    return page


def copy_link(page) -> str:
    page.get_by_role("button", name="Copy link").click()
    field = page.get_by_label("Share link")
    field.wait_for()
    page.wait_for_function("document.getElementById('share-note').textContent !== ''")
    return field.input_value()


def served_digest(site: ServeProcess, image: str) -> str:
    images = httpx.get(f"{site.url}/api/v1/catalog").json()["images"]
    return next(entry["digest"] for entry in images if entry["id"] == image)


def test_a_link_reproduces_files_options_and_output_in_a_fresh_context(
    chromium, site: ServeProcess, tmp_path: Path
) -> None:
    data = tmp_path / "data.bin"
    data.write_bytes(DATA)
    page = fresh_page(chromium, f"{site.url}/#image=python3")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.locator(".cm-content").click()
    page.keyboard.press("Control+a")
    page.keyboard.insert_text(PROGRAM)
    page.locator("#upload").set_input_files(str(data))
    page.get_by_role("tab", name="data.bin", selected=True).wait_for()
    page.get_by_label("Optimisation").select_option("-O")
    page.locator("#advanced summary").click()
    page.get_by_label("Environment").fill("GREETING=grüß dich")
    page.get_by_label("stdin").fill("ünï")
    page.get_by_label("Wall time limit (ms)").fill("3000")
    page.get_by_role("button", name="Run").click()
    stdout = page.locator("[data-stream=stdout] pre")
    stdout.wait_for(timeout=30_000)
    assert stdout.inner_text().strip() == EXPECTED
    link = copy_link(page)
    assert page.evaluate("navigator.clipboard.readText()") == link
    assert page.locator("#share-note").inner_text() == "Link copied."
    screenshot(page, tmp_path, "share-made")
    fragment = link.partition("#")[2]
    state = read_link(fragment)
    assert state["files"]["data.bin"] == {"base64": base64.b64encode(DATA).decode()}
    assert state["digest"] == served_digest(site, "python3")
    assert state["options"] == {"optimize": "-O"} and state["limits"] == {"wall_ms": 3000}
    run_id = state["run"]
    page.get_by_label("stdin").fill("changed")  # the result on show no longer answers the state
    assert "run" not in read_link(copy_link(page).partition("#")[2])
    page.context.close()

    posts: list[str] = []
    page = fresh_page(chromium, link, posts)
    page.wait_for_function("document.getElementById('status').dataset.state === 'cached'", timeout=10_000)
    screenshot(page, tmp_path, "share-opened")
    assert page.locator("[data-stream=stdout] pre").inner_text().strip() == EXPECTED
    assert page.locator("#share-note").inner_text().endswith("its stored result is shown, not run again.")
    assert page.get_by_label("Share link").is_hidden()  # until Copy link
    assert posts == []  # shown from GET /api/v1/runs/<id>, not run
    assert page.evaluate("location.hash") == ""  # the session holds it now; a reload keeps the edits
    assert [tab.inner_text() for tab in page.get_by_role("tab").all()] == ["main.py", "data.bin"]
    assert page.locator(".cm-content").inner_text().rstrip("\n") == PROGRAM.rstrip("\n")
    page.get_by_role("tab", name="data.bin").click()
    assert "binary file, 6 bytes" in page.locator(".cm-content").inner_text()
    assert page.get_by_label("Optimisation").input_value() == "-O"
    assert page.get_by_label("Environment").input_value() == "GREETING=grüß dich"
    assert page.get_by_label("stdin").input_value() == "ünï"
    assert page.get_by_label("Wall time limit (ms)").input_value() == "3000"
    # Run sends the same spec: the edge answers it from the same stored run.
    with page.expect_response("**/api/v1/run") as answer:
        page.get_by_role("button", name="Run").click()
    assert answer.value.headers["etag"] == f'"{run_id}"'
    page.context.close()


def test_copy_link_without_the_clipboard_selects_the_link(
    chromium, site: ServeProcess, tmp_path: Path
) -> None:
    page = fresh_page(chromium, f"{site.url}/#image=python3&example=0")
    page.evaluate("Object.defineProperty(navigator, 'clipboard', { value: undefined })")
    page.get_by_role("button", name="Copy link").focus()
    page.keyboard.press("Enter")  # keyboard usable
    field = page.get_by_label("Share link")
    field.wait_for()
    page.wait_for_function("document.activeElement.id === 'share-link'")
    screenshot(page, tmp_path, "share-fallback")
    assert page.locator("#share-note").inner_text().startswith("Press Ctrl+C")
    field_js = "document.activeElement"
    selected = page.evaluate(f"{field_js}.value.slice({field_js}.selectionStart, {field_js}.selectionEnd)")
    assert selected == field.input_value() and "#s1=" in selected
    assert read_link(selected.partition("#")[2])["files"] == {"main.py": "print('hello')\n"}
    page.context.close()


def test_a_link_whose_run_is_not_stored_offers_run(chromium, site: ServeProcess, tmp_path: Path) -> None:
    state = {"v": 1, "image": "python3", "digest": served_digest(site, "python3"),
             "files": {"main.py": "print('ran again')\n"}, "run": "0" * 64}  # fmt: skip
    posts: list[str] = []
    page = fresh_page(chromium, f"{site.url}/#{make_link(state)}", posts)
    status = page.locator("#status")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Opened')")
    screenshot(page, tmp_path, "share-evicted")
    assert status.inner_text() == "Opened a shared link: its result is no longer stored; press Run to run it."
    assert posts == [] and page.locator("#outputs").inner_text() == ""  # not run by itself
    page.get_by_role("button", name="Run").click()
    stdout = page.locator("[data-stream=stdout] pre")
    stdout.wait_for(timeout=30_000)
    assert stdout.inner_text().strip() == "ran again"
    page.context.close()


def test_a_digest_that_is_not_served_is_named_and_not_switched(
    chromium, site: ServeProcess, tmp_path: Path
) -> None:
    old = "sha256:" + "0" * 64
    current = served_digest(site, "python3")
    state = {"v": 1, "image": "python3", "digest": old, "files": {"main.py": "print('pinned')\n"}}
    page = fresh_page(chromium, f"{site.url}/#{make_link(state)}")
    note = page.locator("#pin-note")
    note.wait_for()
    assert note.inner_text().startswith(
        f"This link pins python3 at {old}, which this service no longer serves"
    )
    assert current in note.inner_text()
    page.get_by_role("button", name="Run", exact=True).click()
    page.wait_for_function("document.getElementById('status').dataset.state === 'error'", timeout=30_000)
    screenshot(page, tmp_path, "share-old-digest")
    message = page.locator("#status").inner_text()
    assert message.startswith("Error 404:") and "python3" in message and old in message  # refused, named
    page.get_by_role("button", name="Use the current version").click()
    assert note.is_hidden()
    page.get_by_role("button", name="Run", exact=True).click()
    stdout = page.locator("[data-stream=stdout] pre")
    stdout.wait_for(timeout=30_000)
    assert stdout.inner_text().strip() == "pinned"
    assert read_link(copy_link(page).partition("#")[2])["digest"] == current  # explicitly the current one now
    page.context.close()


@pytest.mark.parametrize(
    ("fragment", "message"),
    [
        ("s1=abc$def", "This share link is damaged: its data is not base64url"),
        (
            "s1=" + base64.urlsafe_b64encode(b"\xff" * 30).decode(),
            "This share link is damaged: its data does not",
        ),
        (make_link({"v": 1, "image": "python3"}, "s7"), "This share link has format s7"),
        (
            make_link({"v": 1, "image": "python3", "argv": 3}),
            "This share link is damaged: argv is not a list",
        ),
        (make_link({"v": 1, "image": "nope"}), "This link's image nope is not in this service's catalogue."),
    ],
    ids=["bad-base64", "bad-deflate", "unknown-version", "wrong-shape", "unknown-image"],
)
def test_a_malformed_link_shows_a_clear_message(
    chromium, site: ServeProcess, tmp_path: Path, request: pytest.FixtureRequest, fragment: str, message: str
) -> None:
    page = fresh_page(chromium, f"{site.url}/#{fragment}")
    status = page.locator("#status")
    assert status.get_attribute("data-state") == "error"
    assert status.inner_text().startswith(message)
    screenshot(page, tmp_path, f"share-malformed-{request.node.callspec.id}")
    # The page still works: the default image with its files, ready to run.
    assert page.locator("#image").input_value() == "python3"
    assert page.get_by_role("tab").count() >= 1
    page.context.close()


def test_a_link_pasted_into_an_open_page_replaces_its_state(
    chromium, site: ServeProcess, tmp_path: Path
) -> None:
    page = fresh_page(chromium, f"{site.url}/#image=python3&example=0")
    good = {"v": 1, "image": "busybox", "files": {"notes/ü.txt": "ü\n"}, "argv": ["cat", "notes/ü.txt"]}
    page.evaluate(f"location.hash = {json.dumps(make_link(good))}")  # same document: a hashchange
    page.get_by_role("tab", name="notes/ü.txt").wait_for()
    assert page.locator("#image").input_value() == "busybox"
    assert page.get_by_label("argv").input_value() == "cat\nnotes/ü.txt"
    page.evaluate("location.hash = 's1=abc$def'")
    page.wait_for_function("document.getElementById('status').dataset.state === 'error'")
    screenshot(page, tmp_path, "share-pasted-malformed")
    assert "its data is not base64url" in page.locator("#status").inner_text()
    assert page.get_by_role("tab", name="notes/ü.txt").is_visible()  # the page keeps what it had
    page.context.close()
