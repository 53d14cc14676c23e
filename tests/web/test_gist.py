"""Gist links and Export in Debian's Chromium (docs/gists.md), against a real `pe serve` whose gist API is
the fake upstream of tests/api/test_gists.py (only the upstream is faked).

Screenshots go to the test's tmp dir and /tmp/pe-screens/."""

from __future__ import annotations

import hashlib
import io
import json
import time
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.gists import check_config
from catalog.entry import load_catalog
from pe.child import NO_RATE_LIMITS, ServeProcess, start_serve
from tests.api.test_gists import FakeGists
from tests.support.browser import BROWSER_MARKS, open_playground, screenshot
from tests.support.node import run_module
from web.assets import WEB

pytestmark = BROWSER_MARKS

GIST_JS = WEB / "editor" / "gist.js"

MAIN_C = '#include <stdio.h>\nint main(void) { printf("%ld ünï ✓\\n", __STDC_VERSION__); }\n'


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeGists]:
    fake = FakeGists()
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, upstream: FakeGists) -> Iterator[ServeProcess]:
    log = tmp_path_factory.mktemp("gist-site") / "serve.log"
    served = start_serve(log, "--gist-api-url", upstream.url, "--gist-fresh-s", "0", *NO_RATE_LIMITS)
    yield served
    served.stop()


def new_gist_id() -> str:
    return hashlib.md5(str(time.time_ns()).encode()).hexdigest()


def pe_toml(std: str) -> str:
    return (
        f'image = "gcc"\nopen = ["main.c"]\nstdin = "in ✓"\n[env]\nWHO = "wörld"\n[options]\nstd = "{std}"\n'
    )


def node_gist(script: str) -> object:
    """`script`'s `result`, run under Node with `gist` (web/editor/gist.js) imported."""
    return run_module(GIST_JS, "gist", script)


def test_pe_toml_is_written_so_that_tomllib_reads_the_same_values() -> None:
    spec = {
        "image": "gcc@sha256:" + "ab" * 32,
        "argv": ['say "hi"', "back\\slash", "tab\tnew\nline", "del\x7f", "bell\x07", "日本語 🎉"],
        "env": {"A_B": "x=y", "UNI": "grüß"},
        "stdin": {"text": 'line 1\nline 2 "quoted" \\ \u0000 end'},
        "options": {"level": 2, "ratio": 0.5, "flag": False, "dotted.name": "v", "empty": ""},
        "limits": {"wall_ms": 700},
    }
    text = node_gist(f"result = gist.toPeToml({json.dumps(spec)}, ['main.c']);")
    parsed = tomllib.loads(text)
    assert parsed == {
        "image": spec["image"], "argv": spec["argv"], "stdin": spec["stdin"]["text"], "open": ["main.c"],
        "env": spec["env"], "options": spec["options"], "limits": spec["limits"],
    }  # fmt: skip


def test_gist_fragments_are_parsed_or_refused_with_a_message() -> None:
    fragments = [
        "#gist=abc123",
        "gist=abc123/" + "f" * 40,
        "#gist=ABC",
        "#gist=abc/xy",
        "#gist=a/b/c",
        "#gist=%E0%A4%A",
    ]
    got = node_gist(f"""
result = {json.dumps(fragments)}.map((fragment) => {{
  try {{ return gist.parseGistFragment(fragment); }}
  catch (error) {{ return `${{error.name}}: ${{error.message}}`; }}
}});""")
    assert got[0] == {"id": "abc123", "rev": ""}
    assert got[1] == {"id": "abc123", "rev": "f" * 40}
    for refused in got[2:]:
        assert refused.startswith("GistError: This gist link is malformed:"), refused


def session(page) -> dict:
    """The playground's whole state, as it keeps it in localStorage."""
    return page.evaluate("JSON.parse(localStorage.getItem('pe.session.v1'))")


def status(page) -> str:
    return page.locator("#status").inner_text()


def test_a_gist_link_with_and_without_a_revision_fills_the_playground(
    browser,
    site,
    upstream,
    tmp_path,
) -> None:
    gid = new_gist_id()
    first = upstream.add(gid, {"main.c": MAIN_C, "notes.txt": "first\n", "pe.toml": pe_toml("c99")})
    upstream.add(gid, {"main.c": MAIN_C.replace("%ld", "latest %ld"), "pe.toml": pe_toml("c11")})

    latest = open_playground(browser, f"{site.url}/#gist={gid}")
    assert status(latest).startswith(f"Opened gist {gid} at revision")
    assert latest.locator("#image").input_value() == "gcc"
    assert latest.locator("#option-std").input_value() == "c11"
    assert "latest %ld" in latest.locator(".cm-content").inner_text()
    assert latest.evaluate("location.hash") == ""  # a reload keeps the edits, not the gist
    latest.close()

    pinned = open_playground(browser, f"{site.url}/#gist={gid}/{first}")
    assert status(pinned).startswith(f"Opened gist {gid} at revision {first[:7]}")
    state = session(pinned)
    assert state["image"] == "gcc" and state["options"]["std"] == "c99"
    assert state["files"] == {"main.c": MAIN_C, "notes.txt": "first\n"} and state["selected"] == "main.c"
    assert state["env"] == "WHO=wörld" and state["stdin"] == "in ✓"
    pinned.locator("#run").click()  # the options reach the run: c99's __STDC_VERSION__
    pinned.wait_for_function("['ok', 'cached'].includes(document.getElementById('status').dataset.state)")
    assert "199901 ünï ✓" in pinned.locator("#outputs").inner_text()
    screenshot(pinned, tmp_path, "gist-revision")
    pinned.close()


def test_the_embed_page_opens_a_gist_revision(browser, site, upstream, tmp_path) -> None:
    gid = new_gist_id()
    first = upstream.add(gid, {"notes.txt": "first\n", "main.c": MAIN_C, "pe.toml": pe_toml("c99")})
    upstream.add(gid, {"main.c": MAIN_C, "pe.toml": pe_toml("c11")})
    page = open_playground(browser, f"{site.url}/embed/#gist={gid}/{first}")
    assert page.get_by_role("tab", name="main.c", selected=True).is_visible()  # pe.toml's open
    assert page.locator("#image-name").inner_text() == "C (GCC 12)"
    page.get_by_role("button", name="Run").click()
    page.wait_for_function("['ok', 'cached'].includes(document.getElementById('status').dataset.state)")
    assert "199901 ünï ✓" in page.locator("[data-stream=stdout] pre").inner_text()  # its options: c99
    screenshot(page, tmp_path, "embed-gist")
    page.close()


def test_a_gist_without_pe_toml_gets_the_image_of_its_files(browser, site, upstream) -> None:
    gid = new_gist_id()
    upstream.add(gid, {"hello.py": "print('hi')\n"})
    page = open_playground(browser, f"{site.url}/#gist={gid}")
    assert page.locator("#image").input_value() == "python3"
    assert session(page)["files"] == {"hello.py": "print('hi')\n"}
    page.close()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("malformed", 'This gist link is malformed: "NOT-A-GIST!" should be #gist=<id>'),
        ("bad-toml", "has a pe.toml this service cannot use: pe.toml: options.std: 'c42' is not one of"),
        ("missing", "was not found: it may be secret, deleted, or the link mistyped."),
        ("rate-limited", "the gist API (GitHub) is rate limiting this service; try again in 1"),
        ("down", "could not be loaded now: the gist API answered 503; try again later."),
    ],
)
def test_a_gist_that_cannot_be_opened_says_why_and_the_page_works(
    browser,
    site,
    upstream,
    tmp_path,
    case: str,
    message: str,
) -> None:
    gid = new_gist_id()
    fragment = {"malformed": "NOT-A-GIST!"}.get(case, gid)
    if case == "bad-toml":
        upstream.add(gid, {"main.c": MAIN_C, "pe.toml": pe_toml("c42")})
    upstream.rate_limited = case == "rate-limited"
    upstream.down = case == "down"
    try:
        page = open_playground(browser, f"{site.url}/#gist={fragment}")
    finally:
        upstream.rate_limited = upstream.down = False
    assert page.locator("#status").get_attribute("data-state") == "error"
    assert message in status(page)
    # Never a broken page: an image is open with its files, and editing works.
    assert page.locator("#image").input_value() != ""
    page.locator(".cm-content").click()
    page.keyboard.type("still editable")
    assert "still editable" in page.locator(".cm-content").inner_text()
    screenshot(page, tmp_path, f"gist-{case}")
    page.close()


def test_export_round_trips_through_the_edge_validator_and_a_new_gist(
    browser,
    site,
    upstream,
    tmp_path,
) -> None:
    gid = new_gist_id()
    upstream.add(gid, {"main.c": MAIN_C, "data.bin": bytes(range(256)), "pe.toml": pe_toml("c17")})
    page = open_playground(browser, f"{site.url}/#gist={gid}")
    page.locator("#advanced summary").click()
    page.fill("#argv", "gcc\n-o\nprog\nmain.c")
    page.fill("#limit-wall", "2000")
    page.fill("#limit-stream", "64")  # KiB in the form, bytes in pe.toml
    page.locator("#option-warnings").uncheck()
    before = session(page)

    with page.expect_download() as download:
        page.locator("#export").click()
    assert download.value.suggested_filename == "gcc-gist.zip"
    with zipfile.ZipFile(io.BytesIO(Path(download.value.path()).read_bytes())) as archive:
        exported = {name: archive.read(name) for name in archive.namelist()}
    assert (
        page.locator("#export-note").inner_text()
        == "Saved gcc-gist.zip: its files and pe.toml make a new gist."
    )
    assert exported["data.bin"] == bytes(range(256)) and exported["main.c"].decode() == MAIN_C

    text = exported["pe.toml"].decode()
    config = check_config(text, load_catalog(), {name: "" for name in exported})  # the edge's validator
    assert config.image == "gcc" and config.argv == ("gcc", "-o", "prog", "main.c")
    assert config.env == {"WHO": "wörld"} and config.stdin == "in ✓" and config.open == ("main.c",)
    assert config.options == {"optimize": "-O2", "std": "c17", "warnings": False, "flags": ""}
    assert config.limits == {"wall_ms": 2000, "stream_bytes": 64 << 10}

    copy = new_gist_id()
    upstream.add(copy, exported)  # "pasted into a new gist"
    page.close()
    reopened = open_playground(browser, f"{site.url}/#gist={copy}")
    after = session(reopened)
    assert {**after, "files": None} == {**before, "files": None}
    assert after["files"]["main.c"] == MAIN_C
    assert after["files"]["data.bin"] == before["files"]["data.bin"]  # {base64}, byte for byte
    (tmp_path / "exported-pe.toml").write_text(text)

    reopened.once("dialog", lambda dialog: dialog.accept("src/util.c"))  # "+ File" asks for a name
    reopened.locator("#add-file").click()
    with reopened.expect_download() as download:
        reopened.locator("#export").click()
    with zipfile.ZipFile(Path(download.value.path())) as archive:
        assert "src/util.c" in archive.namelist()
    note = reopened.locator("#export-note").inner_text()
    assert note.endswith("Gists have no folders: src/util.c must move to the top level.")
    screenshot(reopened, tmp_path, "gist-export-folder")
    reopened.close()
