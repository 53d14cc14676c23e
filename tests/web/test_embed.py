"""Embedding (docs/embedding.md): the /embed/ iframe driven by a host page on another origin with
postMessage, embed.js making a page's <pre> blocks runnable (and its fallback output while the service
is down), the playground's Embed snippet, and who may frame which page (frame-ancestors)."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.sitepolicy import frame_ancestors
from pe.child import NO_RATE_LIMITS, ServeProcess, start_serve
from pe.settings import Settings
from tests.support.browser import BROWSER_MARKS, open_playground, screenshot, type_program
from tests.web.test_share import make_link, read_link

pytestmark = BROWSER_MARKS

# The host page's side of the postMessage API: every message from the iframe is kept, and the
# iframe is sized to the height it reports (as docs/embedding.md tells hosts to do).
LISTENER = """<script>
window.messages = [];
addEventListener("message", (event) => {
  const frame = document.querySelector("iframe");
  if (event.source !== frame.contentWindow) return;
  window.messages.push({origin: event.origin, ...event.data});
  if (event.data.type === "pe:resize") frame.style.height = event.data.height + "px";
});
</script>"""


class HostPages(http.server.SimpleHTTPRequestHandler):
    """Another site: serves the pages the test writes into its folder."""

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(origin, folder): a static server on another port than the edge, serving `folder`."""
    folder = tmp_path_factory.mktemp("host")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(HostPages, directory=folder))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", folder
    server.shutdown()
    server.server_close()


def host_page(folder: Path, name: str, body: str) -> str:
    (folder / name).write_text(f"<!doctype html><meta charset=utf-8><title>host</title>{LISTENER}{body}")
    return name


def messages(page, kind: str) -> list[dict]:
    return page.evaluate("kind => window.messages.filter(m => m.type === kind)", kind)


def wait_for_message(page, kind: str, timeout: float = 20_000) -> dict:
    page.wait_for_function("kind => window.messages.some(m => m.type === kind)", arg=kind, timeout=timeout)
    return messages(page, kind)[-1]


def test_a_host_on_another_origin_drives_the_iframe(
    browser,
    edge: ServeProcess,
    host,
    tmp_path: Path,
) -> None:
    origin, folder = host
    assert origin != edge.url
    src = f"{edge.url}/embed/?image=python3&example=0&origin={origin}"
    name = host_page(
        folder, "drive.html", f'<h1>A host page</h1><iframe src="{src}" style="width:100%;border:0"></iframe>'
    )
    page = browser.new_page()
    page.goto(f"{origin}/{name}")
    ready = wait_for_message(page, "pe:ready")
    assert ready["origin"] == edge.url
    first_height = wait_for_message(page, "pe:resize")["height"]
    assert first_height > 100
    send = (
        "([message, target]) => document.querySelector('iframe').contentWindow.postMessage(message, target)"
    )
    files = {
        "main.py": "import sys\nprint('set by the host ✓', open('data.txt').read())\n",
        "data.txt": "ünï",
    }
    page.evaluate(send, [{"type": "pe:setFiles", "files": files}, edge.url])
    frame = page.frame_locator("iframe")
    frame.get_by_role("tab", name="data.txt").wait_for()
    page.evaluate(send, [{"type": "pe:run"}, edge.url])
    result = wait_for_message(page, "pe:result")
    frame.locator("[data-stream=stdout] pre").wait_for()
    screenshot(page, tmp_path, "embed-driven-by-host")
    assert result["state"] in ("ok", "cached") and result["exit_code"] in (0, None)
    assert result["stdout"] == "set by the host ✓ ünï\n"
    # The output made the iframe's content taller: it said so, and the host resized the iframe.
    height = messages(page, "pe:resize")[-1]["height"]
    assert height > first_height
    assert page.locator("iframe").evaluate("f => f.getBoundingClientRect().height") == pytest.approx(
        height, abs=1
    )
    # A malformed pe:setFiles is refused with a message, the files unchanged.
    page.evaluate(send, [{"type": "pe:setFiles", "files": {"main.py": 42}}, edge.url])
    assert "neither text nor {base64}" in wait_for_message(page, "pe:error")["message"]
    assert frame.get_by_role("tab").count() == 2
    page.close()


def test_messages_from_another_origin_are_ignored(browser, edge: ServeProcess, host) -> None:
    """The same host page reached as localhost: not the origin the iframe was told (127.0.0.1), so its
    setFiles and run are ignored, and nothing is posted to it. An iframe given a malformed origin says so."""
    origin, folder = host
    src = f"{edge.url}/embed/?image=python3&example=0&origin={origin}"
    bad = f"{edge.url}/embed/?origin=not-an-origin"
    name = host_page(folder, "wrong.html", f'<iframe src="{src}"></iframe><iframe src="{bad}"></iframe>')
    page = browser.new_page()
    page.goto(f"{origin.replace('127.0.0.1', 'localhost')}/{name}")
    frame = page.frame_locator("iframe >> nth=0")
    frame.locator("body[data-ready=true]").wait_for(timeout=20_000)
    send = "message => document.querySelector('iframe').contentWindow.postMessage(message, '*')"
    page.evaluate(send, {"type": "pe:setFiles", "files": {"main.py": "print('not allowed')"}})
    page.evaluate(send, {"type": "pe:run"})
    page.wait_for_timeout(1500)
    assert "not allowed" not in frame.locator(".cm-content").inner_text()
    assert frame.locator("#status").get_attribute("data-state") == "idle"
    assert page.evaluate("window.messages") == []  # replies go to 127.0.0.1's origin only
    # A malformed origin= is refused in words, not taken as "any origin".
    status = page.frame_locator("iframe >> nth=1").locator("#status")
    status.get_by_text("origin=not-an-origin is not an origin").wait_for(timeout=10_000)
    assert status.get_attribute("data-state") == "error"
    page.close()


def test_embed_options_readonly_dark_autorun_and_panes(browser, edge: ServeProcess, tmp_path: Path) -> None:
    page = open_playground(browser, f"{edge.url}/embed/?image=python3&example=0&readonly&theme=dark&autorun")
    page.locator("[data-stream=stdout] pre").wait_for(timeout=20_000)
    screenshot(page, tmp_path, "embed-readonly-dark-autorun")
    assert page.locator("#status").get_attribute("data-state") in ("ok", "cached")
    assert page.locator(".cm-content").get_attribute("contenteditable") == "false"
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(22, 23, 26)"  # the dark --bg, whatever the system's scheme
    page.set_viewport_size({"width": 390, "height": 600})  # an iframe in a phone's column
    screenshot(page, tmp_path, "embed-phone-dark")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.goto(f"{edge.url}/embed/?image=graphviz&example=0&panes=output&theme=light")
    page.wait_for_selector("body[data-ready=true]")
    assert page.locator("#files-pane").is_hidden() and page.locator("#output-pane").is_visible()
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(253, 253, 252)"
    page.close()


def test_a_share_link_opens_in_the_embed_with_its_stored_result(browser, edge: ServeProcess) -> None:
    program = "print('stored ✓')\n"
    body = {"image": "python3", "files": {"main.py": {"text": program}}}
    ran = httpx.post(f"{edge.url}/api/v1/run", json=body, timeout=60).json()
    link = make_link({"v": 1, "image": "python3", "files": {"main.py": program}, "run": ran["id"]})
    page = browser.new_page()
    posts: list[str] = []
    page.on("request", lambda request: request.method == "POST" and posts.append(request.url))
    page.goto(f"{edge.url}/embed/#{link}")
    stdout = page.locator("[data-stream=stdout] pre")
    stdout.wait_for(timeout=20_000)
    assert stdout.inner_text() == "stored ✓" and posts == []  # GET /api/v1/runs/<id>, not run again
    assert page.locator("#status").get_attribute("data-state") == "cached"
    page.close()


EMBED_MALFORMED = {
    "#" + make_link({"v": 1, "image": "python3"}, "s7"): "This share link has format s7",
    "#s1=abc$def": "This share link is damaged: its data is not base64url",
    "#" + make_link({"v": 1, "image": "nope"}): "This link's image nope is not in this service's catalogue.",
    "#gist=NOT-A-GIST!": 'This gist link is malformed: "NOT-A-GIST!"',
    "?image=nope": "There is no image nope here.",
    "?image=python3&example=99&panes=files": "Python 3 has no example 99.",
}


def test_a_malformed_embed_link_says_why_with_nothing_to_run(
    browser, edge: ServeProcess, tmp_path: Path
) -> None:
    page = browser.new_page()
    for link, message in EMBED_MALFORMED.items():
        page.goto("about:blank")  # a new document each time, not a same-page change of fragment
        page.goto(f"{edge.url}/embed/{link}")
        status = page.locator("#status")
        page.wait_for_function("document.getElementById('status').dataset.state === 'error'")
        assert status.inner_text().startswith(message), (link, status.inner_text())
        assert status.is_visible() and page.locator("#files-pane").is_hidden(), link
        assert page.get_by_role("button", name="Run").is_disabled(), link
    screenshot(page, tmp_path, "embed-malformed")
    page.close()


def test_the_playground_embed_button_gives_a_snippet_for_the_current_program(
    browser,
    edge: ServeProcess,
    host,
    tmp_path: Path,
) -> None:
    origin, folder = host
    page = open_playground(browser, f"{edge.url}/#image=python3&example=0")
    type_program(page, "print('from the snippet: ĳ ✓')\n")
    page.get_by_role("button", name="Embed").click()
    snippet = page.get_by_label("Embed snippet")
    page.wait_for_function("() => document.getElementById('embed-snippet').value.includes('#s1=')")
    screenshot(page, tmp_path, "playground-embed-snippet")
    code = snippet.input_value()
    note = page.locator("#embed-note").inner_text()
    assert note in ("Snippet copied.", "Press Ctrl+C (⌘C) to copy the selected snippet."), note
    assert code.startswith(f'<iframe src="{edge.url}/embed/#s1=')
    state = read_link(code.split("#", 1)[1].split('"', 1)[0])
    assert state["image"] == "python3" and state["digest"] is None  # follows the image's current version
    page.close()
    # The snippet as is, in another site's page: the same program, and it runs there.
    page = browser.new_page()
    page.goto(f"{origin}/{host_page(folder, 'snippet.html', code)}")
    frame = page.frame_locator("iframe")
    frame.locator("body[data-ready=true]").wait_for(timeout=20_000)
    assert "from the snippet: ĳ ✓" in frame.locator(".cm-content").inner_text()
    frame.get_by_role("button", name="Run").click()
    assert wait_for_message(page, "pe:result")["stdout"] == "from the snippet: ĳ ✓\n"
    screenshot(page, tmp_path, "snippet-in-host")
    page.close()


SNIPPETS = """<h1>Docs with snippets</h1>
<pre data-pe-image="python3">print("snippet one:", 6 * 7)</pre>
<pre data-pe-output>snippet one: 42 (recorded)</pre>
<pre data-pe-image="python3" data-pe-fallback="two (recorded)">print("snippet two")</pre>
<script src="{api}/assets/embed.js"></script>"""


GRAPH = """<pre data-pe-image="graphviz">digraph { "a page" -> "ünï ✓" }</pre>"""


def test_embed_js_makes_pre_blocks_runnable(browser, edge: ServeProcess, host, tmp_path: Path) -> None:
    """The output is shown by the playground's viewers (an image for Graphviz), in a shadow root with
    the site's styles, which do not reach the host page."""
    origin, folder = host
    page = browser.new_page()
    body = SNIPPETS.format(api=edge.url).replace("<script", f"{GRAPH}<script")
    page.goto(f"{origin}/{host_page(folder, 'snippets.html', body)}")
    runs = page.get_by_role("button", name="Run")
    assert runs.count() == 3
    assert page.get_by_text("snippet one: 42 (recorded)").is_hidden()
    page.locator("pre[data-pe-image]").first.fill('print("snippet one, edited:", 6 * 7)')
    runs.first.click()
    first = page.locator(".pe-snippet").first
    stdout = first.locator("[data-stream=stdout] pre")
    stdout.wait_for(timeout=20_000)
    assert stdout.inner_text() == "snippet one, edited: 42"
    assert first.get_attribute("data-state") == "done"
    assert "exit 0" in first.locator(".pe-note").first.inner_text()
    graph = page.locator(".pe-snippet").nth(2)
    graph.get_by_role("button", name="Run").click()
    image = graph.get_by_role("img", name="Output image out.svg")
    image.wait_for(timeout=20_000)
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    assert graph.get_by_role("link", name="Download").first.get_attribute("download") == "out.svg"
    assert graph.get_by_role("button", name="Download all (.zip)").is_visible()
    # The viewers' styles (site.css) apply in the shadow root only.
    section = graph.locator("section.output").first
    assert section.evaluate("box => getComputedStyle(box).borderTopStyle") == "solid"
    viewers = graph.locator(".pe-viewers")
    assert viewers.evaluate("box => getComputedStyle(box).backgroundColor") == "rgb(253, 253, 252)"  # --bg
    assert page.evaluate("[...document.styleSheets].every(sheet => !sheet.href)")
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgba(0, 0, 0, 0)"
    screenshot(page, tmp_path, "embed-js-snippets")
    page.close()


def test_embed_js_shows_the_fallback_while_the_service_is_down(browser, host, tmp_path: Path) -> None:
    """An edge of its own, stopped after the page loaded embed.js from it; its frame-ancestors are
    configured, and another site may not frame its /embed/."""
    origin, folder = host
    served = start_serve(
        tmp_path / "serve.log", *NO_RATE_LIMITS, "--frame-ancestors", "https://docs.example.org,'self'"
    )
    try:
        policy = httpx.get(f"{served.url}/embed/").headers["content-security-policy"]
        assert policy == "frame-ancestors https://docs.example.org 'self'"
        page = browser.new_page()
        refused = []
        page.on(
            "console",
            lambda message: refused.append(message.text) if "frame-ancestors" in message.text else None,
        )
        body = SNIPPETS.format(api=served.url) + f'<iframe src="{served.url}/embed/"></iframe>'
        page.goto(f"{origin}/{host_page(folder, 'down.html', body)}")
        page.wait_for_function("document.querySelectorAll('.pe-snippet').length === 2")
        assert len(refused) == 1 and "https://docs.example.org" in refused[0]
    finally:
        served.stop()
    for index, recorded in enumerate(["snippet one: 42 (recorded)", "two (recorded)"]):
        snippet = page.locator(".pe-snippet").nth(index)
        snippet.get_by_role("button", name="Run").click()
        snippet.locator(".pe-fallback").wait_for(timeout=10_000)
        assert snippet.locator(".pe-fallback").inner_text() == recorded
        assert "could not run this" in snippet.locator(".pe-note").inner_text()
        assert snippet.get_attribute("data-state") == "fallback"
    screenshot(page, tmp_path, "embed-js-fallback")
    page.close()


def test_only_the_embed_page_may_be_framed_by_another_site(browser, edge: ServeProcess, host) -> None:
    for path, policy in [
        ("/", "'self'"),
        ("/index.html", "'self'"),
        ("/embedding.html", "'self'"),
        ("/embed/", "*"),
    ]:
        assert httpx.get(edge.url + path).headers["content-security-policy"] == f"frame-ancestors {policy}"
    asset = httpx.get(f"{edge.url}/assets/viewers.js").headers
    assert "content-security-policy" not in asset
    assert asset["access-control-allow-origin"] == "*"  # embed.js imports it from other sites
    origin, folder = host
    page = browser.new_page()
    refused = []
    page.on(
        "console", lambda message: refused.append(message.text) if "frame-ancestors" in message.text else None
    )
    frames = f'<iframe src="{edge.url}/index.html"></iframe><iframe src="{edge.url}/embed/"></iframe>'
    page.goto(f"{origin}/{host_page(folder, 'frames.html', frames)}")
    page.frame_locator("iframe >> nth=1").locator("body[data-ready=true]").wait_for(timeout=20_000)
    assert len(refused) == 1  # the playground; the embed page is shown
    urls = [frame.url for frame in page.frames[1:]]
    assert urls == ["chrome-error://chromewebdata/", f"{edge.url}/embed/"]  # the playground was not shown
    page.close()


def test_frame_ancestors_values_are_checked() -> None:
    assert frame_ancestors(()) == b"frame-ancestors 'none'"
    sources = ("https://*.example.org:8443", "'self'")
    assert Settings(frame_ancestors=sources).frame_ancestors == sources
    assert frame_ancestors(sources) == b"frame-ancestors https://*.example.org:8443 'self'"
    for bad in ("https://a.org; script-src *", "a b", "'unsafe-inline'", json.dumps("x")):
        with pytest.raises(ValueError, match="PE_FRAME_ANCESTORS"):
            Settings(frame_ancestors=(bad,))


def test_the_embedding_docs_page_runs_both_live_examples(browser, edge: ServeProcess, tmp_path: Path) -> None:
    page = browser.new_page()
    page.goto(f"{edge.url}/index.html")
    page.get_by_role("link", name="Embed").click()
    frame = page.frame_locator("#demo-frame")
    frame.locator("body[data-ready=true]").wait_for(timeout=20_000)
    page.get_by_role("button", name="Send a file (pe:setFiles)").click()
    frame.get_by_text("sent by the host page").wait_for()
    page.get_by_role("button", name="Run from this page (pe:run)").click()
    page.get_by_text("stdout: sent by the host page: 42").wait_for(timeout=20_000)
    snippet, graph = page.locator(".pe-snippet").all()
    snippet.get_by_role("button", name="Run").click()
    stdout = snippet.locator("[data-stream=stdout] pre")
    stdout.wait_for(timeout=20_000)
    assert stdout.inner_text().startswith("hello from a snippet, Python 3.11")
    graph.get_by_role("button", name="Run").click()
    graph.get_by_role("img", name="Output image out.svg").wait_for(timeout=20_000)
    assert f"{edge.url}/assets/embed.js" in page.locator("pre code").nth(2).inner_text()  # $PE filled in
    screenshot(page, tmp_path, "embedding-docs-page")
    page.close()
