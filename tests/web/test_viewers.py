"""The output viewers (web/viewers/, docs/web.md "Viewers") in Debian's Chromium against a real
`pe serve`: outputs of real runs, checked as a person would see them.

One python3 run writes an output of every kind (shared by most tests); openscad renders a model.
Screenshots go to the test's tmp dir and /tmp/pe-screens/ (the shared helpers of test_playground.py)."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pe.child import ServeProcess
from tests.support.browser import BROWSER_MARKS, open_playground, screenshot
from tests.web.test_pyodide import PYODIDE_READY_S

pytestmark = BROWSER_MARKS

# Writes one output of each kind, and ANSI colours on stdout.
PROGRAM = r'''
import json, struct
open("bytes.bin", "wb").write(bytes(range(256)))
open("page.html", "w").write("""<!doctype html><html><body><h1>Sandboxed page</h1><script>
const violations = [];
document.addEventListener("securitypolicyviolation", (event) => violations.push(event.violatedDirective));
let parentDocument;
try { parentDocument = "read " + window.parent.document.title; }
catch (error) { parentDocument = "blocked: " + error.name; }
const report = (api) => parent.postMessage({ parentDocument, api, violations, origin: String(origin) }, "*");
fetch("/api/v1/catalog").then(() => "reached", (error) => "blocked: " + error.name)
  .then((api) => setTimeout(() => report(api), 100));
</script></body></html>""")
open("people.csv", "w").write('name,note,age\n"Smith, Jo","said ""hi""\nthen left",41\nAda,,36\n')
open("many.tsv", "w").write("n\tsquare\n" + "".join(f"{n}\t{n * n}\n" for n in range(5000)))
open("shape.obj", "w").write("v 0 0 0\nv 10 0 0\nv 0 10 0\nv 0 0 10\nf 1 3 2\nf 1 2 4\nf 1 4 3\nf 2 3 4\n")
open("square.ply", "w").write("ply\nformat ascii 1.0\nelement vertex 4\nproperty float x\nproperty float y\n"
    "property float z\nelement face 2\nproperty list uchar int vertex_indices\nend_header\n"
    "0 0 0\n4 0 0\n4 4 0\n0 4 0\n3 0 1 2\n3 0 2 3\n")
# A red triangle as binary glTF: a JSON chunk, then a BIN chunk with its three vertices.
gltf = {"asset": {"version": "2.0"}, "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
    "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "material": 0}]}],
    "materials": [{"pbrMetallicRoughness": {"baseColorFactor": [0.8, 0.1, 0.1, 1]}, "doubleSided": True}],
    "buffers": [{"byteLength": 36}], "bufferViews": [{"buffer": 0, "byteLength": 36}],
    "accessors": [{"bufferView": 0, "componentType": 5126, "count": 3, "type": "VEC3",
                   "min": [0, 0, 0], "max": [1, 1, 0]}]}
chunk = json.dumps(gltf).encode()
chunk += b" " * (-len(chunk) % 4)
vertices = struct.pack("<9f", 0, 0, 0, 1, 0, 0, 0, 1, 0)
body = struct.pack("<II", len(chunk), 0x4E4F534A) + chunk + struct.pack("<II", 36, 0x004E4942) + vertices
open("triangle.glb", "wb").write(struct.pack("<III", 0x46546C67, 2, 12 + len(body)) + body)
print("\x1b[31mred\x1b[0m \x1b[1;38;5;208mbold orange\x1b[0m \x1b[38;2;10;200;30mtruecolour\x1b[0m plain")
'''
STDOUT = (
    b"\x1b[31mred\x1b[0m \x1b[1;38;5;208mbold orange\x1b[0m \x1b[38;2;10;200;30mtruecolour\x1b[0m plain\n"
)

# 100 000 coloured lines, 5.9 MB: shown without freezing the page.
BIG_PROGRAM = r"""
with open("big.txt", "w") as out:
    for n in range(100_000):
        out.write(f"\x1b[32m{n:06d}\x1b[0m {'x' * 50}\n")
"""

SESSION_KEY = "pe.session.v1"
# The longest pause between two animation frames while a big output is rendered.
LISTEN_FRAMES = """() => {
  window.frameGap = 0;
  let last = performance.now();
  const tick = (now) => {
    frameGap = Math.max(frameGap, now - last);
    last = now;
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
}"""
# How many pixels of a PNG (base64) differ from its top-left pixel (the background).
COUNT_PIXELS = """async (png) => {
  const bitmap = await createImageBitmap(await (await fetch('data:image/png;base64,' + png)).blob());
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const context = canvas.getContext('2d');
  context.drawImage(bitmap, 0, 0);
  const data = context.getImageData(0, 0, bitmap.width, bitmap.height).data;
  let differ = 0;
  for (let i = 0; i < data.length; i += 4) {
    const distance = [0, 1, 2].reduce((sum, c) => sum + Math.abs(data[i + c] - data[c]), 0);
    if (distance > 30) differ++;
  }
  return [differ, bitmap.width * bitmap.height];
}"""


def run_python(page, program: str, before: str = "() => {}", pyodide: bool = False) -> None:
    """Put `program` in the session as python3's main.py, reload, evaluate `before`, and run it (with
    `pyodide`, once the Pyodide worker is ready to parse the cpio answer). The messages posted to the
    page are collected in `window.messages`."""
    session = {"image": "python3", "files": {"main.py": program}, "selected": "main.py"}
    page.evaluate(
        "([key, value]) => localStorage.setItem(key, JSON.stringify(value))", [SESSION_KEY, session]
    )
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    if pyodide:
        page.wait_for_function("document.body.dataset.pyodide === 'ready'", timeout=PYODIDE_READY_S * 1000)
    page.evaluate("window.messages = []; addEventListener('message', (event) => messages.push(event.data))")
    page.evaluate(before)
    page.get_by_role("button", name="Run").click()
    page.wait_for_function(
        "['ok', 'cached'].includes(document.getElementById('status').dataset.state)", timeout=30_000
    )


def painted_pixels(page, locator) -> tuple[int, int]:
    png = base64.b64encode(locator.screenshot()).decode()
    return page.evaluate(COUNT_PIXELS, png)


@pytest.fixture(scope="module")
def outputs(browser, edge: ServeProcess) -> Iterator:
    """The playground after PROGRAM ran, its answer parsed by the Pyodide worker (outputs carry `data`)."""
    page = open_playground(browser, f"{edge.url}/")
    run_python(page, PROGRAM, pyodide=True)
    assert page.locator("#status").get_attribute("data-parser") == "pyodide"
    yield page
    page.close()


def test_binary_output_shows_as_hex(outputs, tmp_path: Path) -> None:
    view = outputs.locator("[data-file='bytes.bin'] [data-viewer=hex]")
    view.scroll_into_view_if_needed()
    screenshot(outputs, tmp_path, "viewer-hex")
    first = view.locator(".line").first
    assert first.locator(".hex-offset").inner_text() == "00000000"
    assert first.locator(".hex-bytes").inner_text().split() == [f"{n:02x}" for n in range(16)]
    assert first.locator(".hex-ascii").inner_text() == "." * 16
    third = view.locator(".line").nth(2)  # bytes 0x20-0x2f are printable
    assert third.locator(".hex-ascii").inner_text() == " !\"#$%&'()*+,-./"
    assert view.locator(".line").count() == 16


def test_ansi_colours_show_as_colours(outputs, tmp_path: Path) -> None:
    stdout = outputs.locator("[data-stream=stdout] pre")
    screenshot(outputs, tmp_path, "viewer-ansi")
    assert stdout.inner_text() == "red bold orange truecolour plain"
    styles = stdout.locator("span span").evaluate_all(
        "spans => spans.map(s => [s.textContent, getComputedStyle(s).color, getComputedStyle(s).fontWeight])"
    )
    colours = {text: (colour, weight) for text, colour, weight in styles}
    assert colours["red"][0] in ("rgb(192, 38, 29)", "rgb(242, 139, 130)")  # light or dark theme
    assert colours["bold orange"] == ("rgb(255, 135, 0)", "700")  # 256-colour 208
    assert colours["truecolour"][0] == "rgb(10, 200, 30)"
    assert "plain" not in colours  # unstyled text is a plain text node


def test_html_output_is_sandboxed(outputs, tmp_path: Path) -> None:
    frame = outputs.locator("[data-file='page.html'] iframe")
    assert frame.get_attribute("sandbox") == "allow-scripts"
    assert (
        outputs.frame_locator("[data-file='page.html'] iframe").locator("h1").inner_text() == "Sandboxed page"
    )
    outputs.wait_for_function("messages.length > 0", timeout=5_000)
    frame.scroll_into_view_if_needed()
    screenshot(outputs, tmp_path, "viewer-html")
    [report] = outputs.evaluate("messages")
    assert report["parentDocument"] == "blocked: SecurityError"  # another (opaque) origin
    assert report["api"] == "blocked: TypeError"  # the CSP refuses the request…
    assert report["violations"] == ["connect-src"]  # …as the page itself was told
    assert report["origin"] == "null"
    # "View as" Text shows the page's source instead.
    outputs.get_by_label("View page.html as").select_option("text")
    assert "<h1>Sandboxed page</h1>" in outputs.locator("[data-file='page.html'] pre").inner_text()


def test_csv_output_shows_as_a_table(outputs, tmp_path: Path) -> None:
    table = outputs.locator("[data-file='people.csv'] table")
    table.scroll_into_view_if_needed()
    screenshot(outputs, tmp_path, "viewer-csv")
    assert table.locator("th").all_inner_texts() == ["name", "note", "age"]
    rows = table.locator("tbody tr").evaluate_all(
        "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
    )
    assert rows == [["Smith, Jo", 'said "hi"\nthen left', "41"], ["Ada", "", "36"]]


def test_large_tsv_is_capped_with_a_note(outputs) -> None:
    view = outputs.locator("[data-file='many.tsv'] [data-viewer=table]")
    assert view.locator("th").all_inner_texts() == ["n", "square"]
    assert view.locator("tbody tr").count() == 1000
    assert view.locator("tbody tr").last.locator("td").all_inner_texts() == ["999", "998001"]
    assert view.locator(".note").inner_text().startswith("Showing the first 1000 of 5000 rows")


@pytest.mark.parametrize("path", ["shape.obj", "square.ply", "triangle.glb"])
def test_models_are_drawn(outputs, path: str, tmp_path: Path) -> None:
    model = outputs.locator(f"[data-file='{path}'] .model[data-rendered=true] canvas")
    model.wait_for(timeout=15_000)
    model.scroll_into_view_if_needed()
    screenshot(outputs, tmp_path, f"viewer-{path.replace('.', '-')}")
    painted, total = painted_pixels(outputs, model)
    assert painted > total * 0.02


def test_download_all_zips_the_outputs(outputs, tmp_path: Path) -> None:
    link = outputs.locator("[data-file='bytes.bin'] a.download")
    assert link.get_attribute("download") == "bytes.bin" and link.get_attribute("href").startswith("blob:")
    with outputs.expect_download() as info:
        outputs.get_by_role("button", name="Download all (.zip)").click()
    download = info.value
    assert download.suggested_filename == "outputs.zip"
    with zipfile.ZipFile(io.BytesIO(Path(download.path()).read_bytes())) as archive:
        names = set(archive.namelist())
        files = {
            "bytes.bin",
            "page.html",
            "people.csv",
            "many.tsv",
            "shape.obj",
            "square.ply",
            "triangle.glb",
        }
        assert names == files | {"stdout.txt", "stderr.txt"}
        assert archive.read("bytes.bin") == bytes(range(256))
        assert archive.read("stdout.txt") == STDOUT
        assert archive.read("stderr.txt") == b""
        assert archive.read("people.csv").startswith(b'name,note,age\n"Smith, Jo"')


def test_outputs_fit_a_phone_in_the_dark_theme(outputs, tmp_path: Path) -> None:
    size = outputs.viewport_size
    outputs.set_viewport_size({"width": 390, "height": 844})
    outputs.emulate_media(color_scheme="dark")
    try:
        outputs.locator("#outputs").scroll_into_view_if_needed()
        screenshot(outputs, tmp_path, "viewer-phone-dark")
        assert outputs.evaluate("document.documentElement.scrollWidth") <= 390
        stdout = outputs.locator("[data-stream=stdout] pre span span").first  # red, lighter in the dark
        assert stdout.evaluate("s => getComputedStyle(s).color") == "rgb(242, 139, 130)"
    finally:
        outputs.set_viewport_size(size)
        outputs.emulate_media(color_scheme="light")


def test_model_without_webgl_falls_back_to_text(browser, edge: ServeProcess, tmp_path: Path) -> None:
    page = browser.new_page()
    page.add_init_script(  # a browser without WebGL
        "const get = HTMLCanvasElement.prototype.getContext;"
        "HTMLCanvasElement.prototype.getContext = function (kind, ...rest) {"
        "  return kind.startsWith('webgl') ? null : get.call(this, kind, ...rest); };"
    )
    page.goto(f"{edge.url}/")
    page.wait_for_selector("body[data-ready=true]")
    run_python(page, PROGRAM)  # answered from the cache
    model = page.locator("[data-file='shape.obj'] .model[data-failed=true]")
    model.wait_for(timeout=15_000)
    model.scroll_into_view_if_needed()
    screenshot(page, tmp_path, "viewer-no-webgl")
    assert "3D view is not available" in model.locator(".note").first.inner_text()
    assert model.locator("pre").inner_text().startswith("v 0 0 0\nv 10 0 0")
    page.close()


def test_openscad_model_is_drawn_on_a_canvas(browser, edge: ServeProcess, tmp_path: Path) -> None:
    page = open_playground(browser, f"{edge.url}/#image=openscad&example=0")
    page.get_by_role("button", name="Run").click()
    canvas = page.locator("[data-file='out.stl'] .model[data-rendered=true] canvas")
    canvas.wait_for(timeout=60_000)
    screenshot(page, tmp_path, "viewer-openscad")
    painted, total = painted_pixels(page, canvas)
    assert painted > total * 0.05, f"{painted} of {total} pixels painted"
    assert "triangles" in page.locator("[data-file='out.stl'] .model-facts").inner_text()
    # The entry's `view.first` ("out.*") puts the model before stdout and stderr.
    assert page.locator("#outputs section").first.get_attribute("data-file") == "out.stl"
    # Dragging rotates the model: the picture changes.
    before = canvas.screenshot()
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 + 80, box["y"] + box["height"] / 2 + 30, steps=5)
    page.mouse.up()
    assert canvas.screenshot() != before
    # The 3MF example (a zip; shown in 3D by the entry's `view.viewers` hint).
    page.get_by_label("Load an example").select_option(label="variables from the form, 3MF")
    page.get_by_role("button", name="Run").click()
    canvas = page.locator("[data-file='out.3mf'] .model[data-rendered=true] canvas")
    canvas.wait_for(timeout=60_000)
    screenshot(page, tmp_path, "viewer-openscad-3mf")
    painted, total = painted_pixels(page, canvas)
    assert painted > total * 0.05, f"{painted} of {total} pixels painted"
    page.close()


def test_large_text_output_keeps_the_page_responsive(browser, edge: ServeProcess, tmp_path: Path) -> None:
    page = open_playground(browser, f"{edge.url}/")
    run_python(page, BIG_PROGRAM)
    view = page.locator("[data-file='big.txt'] [data-viewer=text] .virtual")
    view.wait_for()
    page.evaluate(LISTEN_FRAMES)
    [render_ms] = page.evaluate("performance.getEntriesByName('pe:render-outputs').map(m => m.duration)")
    assert view.locator(".line").count() < 200  # what is on screen, not 100 000 rows
    view.evaluate("box => box.scrollTop = box.scrollHeight")  # to the end at once
    view.locator(".line", has_text="099999 ").wait_for()
    for _ in range(10):  # and scrolling back up
        view.evaluate("box => box.scrollTop -= box.clientHeight * 7")
        page.wait_for_timeout(30)
    gap = page.evaluate("frameGap")
    view.evaluate("box => box.scrollTop = box.scrollHeight")
    last = view.locator(".line", has_text="099999")
    last.wait_for()
    screenshot(page, tmp_path, "viewer-big-text")
    assert last.locator("span").first.evaluate("s => getComputedStyle(s).color") in (
        "rgb(29, 127, 56)",
        "rgb(129, 201, 149)",
    )
    print(f"100 000 lines: shown in {render_ms:.0f} ms, longest frame gap while scrolling {gap:.0f} ms")
    assert render_ms < 500 and gap < 500  # generous: a shared, noisy 2-core machine
    page.close()


# The viewers' parsers, run by Node on the same modules the site bundles (no browser needed).
PARSERS = """
const viewers = process.argv[1];
const { AnsiText, applySgr } = await import(`${viewers}/ansi.js`);
const { parseDelimited } = await import(`${viewers}/table.js`);
const { hexRow } = await import(`${viewers}/hex.js`);
const { withPolicy } = await import(`${viewers}/html.js`);
const { globRegex } = await import(`${viewers}/outputs.js`);
const { zipEntries } = await import(`${viewers}/download.js`);
const rows = (text, wrap) => {
  const ansi = new AnsiText(text, wrap);
  return [...ansi.starts].map((start, i) => text.slice(start, ansi.ends[i]));
};
console.log(JSON.stringify({
  rows: rows("ab\\x1b[31mcd\\r\\nef\\n\\ngh\\n", 3),
  styles: [applySgr({}, "1;38;5;208"), applySgr({}, "38;2;10;200;30;48;5;232"), applySgr({ bold: true }, "")],
  table: parseDelimited('a,"b ""q"", c"\\r\\n"x\\ny",\\n1,2,3', ","),
  capped: parseDelimited("h\\n1\\n2\\n3\\n", ",", 2),
  hex: hexRow(Uint8Array.from({ length: 20 }, (_, i) => i + 60), 16),
  html: [withPolicy("<!DOCTYPE html><p>x"), withPolicy("<p>y")].map((h) => h.replace(/content="[^"]*"/, "…")),
  globs: ["out.*", "**/*.stl", "a/**/b"].map((g) => ["out.svg", "x/y.stl", "a/b"].map((path) =>
    globRegex(g).test(path))),
  zip: Object.keys(zipEntries({ stdout: 1, stderr: 2 }, [{ path: "stdout.txt", data: 3 }, { path: "d/e" }])),
}));
"""


def test_viewer_parsers_in_node() -> None:
    viewers = Path(__file__).resolve().parents[2] / "web" / "viewers"
    done = subprocess.run(
        ["node", "--input-type=module", "-e", PARSERS, viewers.as_uri()],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["rows"] == ["ab\x1b[31m", "cd", "ef", "", "gh"]  # a row is never cut inside an escape
    assert got["styles"] == [{"bold": True, "fg": 208}, {"fg": "#0ac81e", "bg": 232}, {}]
    assert got["table"] == {"rows": [["a", 'b "q", c'], ["x\ny", ""], ["1", "2", "3"]], "count": 3}
    assert got["capped"] == {"rows": [["h"], ["1"]], "count": 4}
    assert got["hex"] == ["00000010", "4c 4d 4e 4f".ljust(48), "LMNO"]
    assert got["html"] == ['<!DOCTYPE html><meta http-equiv="Content-Security-Policy" …><p>x',
                           '<meta http-equiv="Content-Security-Policy" …><p>y']  # fmt: skip
    assert got["globs"] == [[True, False, False], [False, True, False], [False, False, True]]
    assert got["zip"] == ["stdout.txt", "d/e", "run-stdout.txt", "stderr.txt"]
