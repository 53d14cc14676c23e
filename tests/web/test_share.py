"""Share links (web/editor/share.js, docs/sharing-links.md): the codec under Node, and links made in one
Chromium context opened in another against a real `pe serve`.

Links are also written here in Python (raw deflate, base64url), independently of share.js, so the
tests check the documented format and not only that share.js agrees with itself."""

from __future__ import annotations

import base64
import json
import subprocess
import zlib
from pathlib import Path

from tests.web.test_playground import pytestmark  # noqa: F401

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
    program = f"""
const share = await import(process.argv[1]);
const decode = async (fragment) => {{
  try {{ return {{ state: await share.decodeState(fragment) }}; }}
  catch (error) {{ return {{ error: `${{error.name}}: ${{error.message}}` }}; }}
}};
const result = {{}};
{script}
console.log(JSON.stringify(result));
"""
    done = subprocess.run(
        ["node", "--no-warnings", "--input-type=module", "-e", program, SHARE_JS.as_uri()],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


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
