"""`GET /api/v1/gists/<id>[/<rev>]` (docs/gists.md) of a real `pe serve` whose `--gist-api-url` is a
local fake of GitHub's gist API: it serves GitHub-shaped JSON, counts requests, honours If-None-Match,
truncates large files (their bytes at `raw_url`) and can answer 404, a rate limit or nothing.
`FakeGists` is also the upstream of tests/web/test_gist.py."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from api.gists import MAX_FILE_BYTES, MAX_FILES, check_config
from catalog.entry import load_catalog
from pe.child import NO_RATE_LIMITS, ServeProcess, start_serve
from wire.petoml import PeTomlError

GIST_TOKEN = "github_pat_test"
TRUNCATE_AT = 1000  # the fake's API gives a file's first 1000 bytes (GitHub's: 1 MB), the rest by raw_url


class FakeGists:
    """A GitHub-shaped gist API on a loopback port. `add` publishes a revision; `requests` lists the
    paths asked with the If-None-Match each carried; `rate_limited`, `down`, `delay_s` and `raw_origin`
    change answers."""

    def __init__(self) -> None:
        self.revisions: dict[str, list[tuple[str, dict[str, bytes]]]] = {}  # id -> newest first
        self.requests: list[tuple[str, str]] = []
        self.authorizations: dict[str, str] = {}  # path → the Authorization header it was asked with
        self.rate_limited = False
        self.down = False  # every answer a 503, as GitHub's when it is down
        self.delay_s = 0.0  # how long each answer takes
        self.raw_origin = ""  # where raw_url points ("" : this server)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.requests.append((self.path, self.headers.get("If-None-Match", "")))
                fake.authorizations[self.path] = self.headers.get("Authorization", "")
                time.sleep(fake.delay_s)
                status, headers, body = fake.answer(self.path, self.headers.get("If-None-Match", ""))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, gist_id: str, files: dict[str, str | bytes]) -> str:
        """Publish a new revision of `gist_id`; returns its version (40 hex)."""
        data = {
            name: content.encode() if isinstance(content, str) else content for name, content in files.items()
        }
        rev = hashlib.sha1(json.dumps([gist_id, len(self.revisions.get(gist_id, []))]).encode()).hexdigest()
        self.revisions.setdefault(gist_id, []).insert(0, (rev, data))
        return rev

    def count(self, path: str) -> int:
        return sum(asked == path for asked, _ in self.requests)

    def answer(self, path: str, if_none_match: str) -> tuple[int, dict[str, str], bytes]:
        if self.rate_limited:
            reset = str(int(time.time()) + 120)
            headers = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": reset}
            return 403, headers, b'{"message": "API rate limit exceeded"}'
        if self.down:
            return 503, {"Content-Type": "text/html"}, b"<h1>Unicorn!</h1>"
        parts = path.strip("/").split("/")
        if parts[0] == "raw" and len(parts) == 4:  # /raw/<id>/<rev>/<name>
            for rev, files in self.revisions.get(parts[1], []):
                if rev == parts[2] and parts[3] in files:
                    return 200, {"Content-Type": "text/plain"}, files[parts[3]]
            return 404, {}, b"Not Found"
        if parts[0] != "gists" or len(parts) not in (2, 3) or parts[1] not in self.revisions:
            return 404, {}, b'{"message": "Not Found"}'
        history = self.revisions[parts[1]]
        found = [item for item in history if len(parts) == 2 or item[0] == parts[2]]
        if not found:
            return 404, {}, b'{"message": "Not Found"}'
        rev, files = found[0]
        etag = f'W/"{rev}"'
        if if_none_match == etag:
            return 304, {"ETag": etag}, b""
        return 200, {"Content-Type": "application/json", "ETag": etag}, self.gist_json(parts[1], rev, files)

    def gist_json(self, gist_id: str, rev: str, files: dict[str, bytes]) -> bytes:
        raw = self.raw_origin or self.url
        listed = {
            name: {
                "filename": name,
                "type": "text/plain",
                "language": None,
                "raw_url": f"{raw}/raw/{gist_id}/{rev}/{name}",
                "size": len(data),
                "truncated": len(data) > TRUNCATE_AT,
                "content": data[:TRUNCATE_AT].decode(errors="replace"),
            }
            for name, data in files.items()
        }
        history = [
            {"version": version, "url": f"{self.url}/gists/{gist_id}/{version}"}
            for version, _ in self.revisions[gist_id]
        ]
        gist = {
            "id": gist_id,
            "url": f"{self.url}/gists/{gist_id}",
            "files": listed,
            "history": history,
            "truncated": False,
        }
        return json.dumps(gist).encode()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeGists]:
    fake = FakeGists()
    yield fake
    fake.close()


def start_gist_edge(log: Path, upstream: FakeGists, *flags: str) -> ServeProcess:
    if os.geteuid() != 0:
        pytest.skip("pe serve's in-process worker needs root (crun, mounts)")
    return start_serve(log, "--gist-api-url", upstream.url, *flags)


@pytest.fixture(scope="module")
def edge_url(tmp_path_factory: pytest.TempPathFactory, upstream: FakeGists) -> Iterator[str]:
    """An edge that asks the upstream again on every request for a latest revision (fresh for 0 s), with
    a token for the upstream."""
    log = tmp_path_factory.mktemp("gists") / "serve.log"
    flags = ("--gist-fresh-s", "0", "--gist-token", GIST_TOKEN, *NO_RATE_LIMITS)
    served = start_gist_edge(log, upstream, *flags)
    yield served.url
    served.stop()


@pytest.fixture
def http(edge_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=edge_url, timeout=30) as client:
        yield client


def gist_id(name: str) -> str:
    """A fresh 32-hex gist id per test, so tests do not share cache entries."""
    return hashlib.md5(f"{name}{time.time_ns()}".encode()).hexdigest()


PE_TOML = """
image = "gcc"
argv = ["gcc", "-std=c99", "main.c"]
stdin = "ünïcode in"
open = ["main.c"]
[env]
GREETING = "héllo"
[options]
std = "c99"
[limits]
wall_ms = 2000
"""


def test_a_gist_and_its_pe_toml_come_back_normalised_and_the_revision_pins_it(http, upstream) -> None:
    gid = gist_id("basic")
    first = upstream.add(
        gid, {"main.c": "int main(void) { return 0; }\n", "pe.toml": PE_TOML, "notes.md": "# ünï\n"}
    )
    answer = http.get(f"/api/v1/gists/{gid}", headers={"Origin": "https://docs.example"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["access-control-allow-origin"] == "*"  # CORS like every /api/v1/ route
    body = answer.json()
    assert body["id"] == gid and body["rev"] == first
    assert body["files"] == {"main.c": "int main(void) { return 0; }\n", "notes.md": "# ünï\n"}
    assert body["config"] == {
        "image": "gcc", "argv": ["gcc", "-std=c99", "main.c"], "env": {"GREETING": "héllo"},
        "stdin": "ünïcode in", "options": {"std": "c99"}, "limits": {"wall_ms": 2000}, "open": ["main.c"],
    }  # fmt: skip
    assert answer.headers["etag"] == f'"{first}"'

    second = upstream.add(gid, {"main.c": "int main(void) { return 1; }\n"})
    assert http.get(f"/api/v1/gists/{gid}").json()["files"] == {"main.c": "int main(void) { return 1; }\n"}
    pinned = http.get(f"/api/v1/gists/{gid}/{first}")
    assert pinned.json()["rev"] == first and "config" in pinned.json()
    assert "immutable" in pinned.headers["cache-control"]
    assert http.get(f"/api/v1/gists/{gid}/{second}").json()["files"]["main.c"].endswith("return 1; }\n")

    commanded = gist_id("command")
    upstream.add(commanded, {"my file.c": "", "pe.toml": "command = \"gcc -O2 'my file.c'\"\n"})
    config = http.get(f"/api/v1/gists/{commanded}").json()["config"]
    assert config == {"argv": ["gcc", "-O2", "my file.c"]}  # split like a shell would, never run by one


def test_the_latest_is_revalidated_by_etag_and_a_revision_is_never_asked_again(http, upstream) -> None:
    gid = gist_id("etag")
    rev = upstream.add(gid, {"a.py": "print(1)\n"})
    for _ in range(3):
        assert http.get(f"/api/v1/gists/{gid}").status_code == 200
    asked = [inm for path, inm in upstream.requests if path == f"/gists/{gid}"]
    assert asked == ["", f'W/"{rev}"', f'W/"{rev}"']  # then 304s: the cached answer is served
    # The latest answer also filled the revision's entry: asking for it by revision costs nothing.
    assert http.get(f"/api/v1/gists/{gid}/{rev}").status_code == 200
    assert upstream.count(f"/gists/{gid}/{rev}") == 0
    # Our own ETag: a client's If-None-Match gets a 304.
    assert http.get(f"/api/v1/gists/{gid}/{rev}", headers={"If-None-Match": f'"{rev}"'}).status_code == 304


def test_requests_for_a_gist_being_fetched_share_one_upstream_request(edge_url, upstream) -> None:
    gid = gist_id("together")
    upstream.add(gid, {"a.txt": "once\n"})
    upstream.delay_s = 1.0
    try:
        with ThreadPoolExecutor(4) as pool:
            answers = list(
                pool.map(lambda _: httpx.get(f"{edge_url}/api/v1/gists/{gid}", timeout=30), range(4))
            )
    finally:
        upstream.delay_s = 0.0
    assert [answer.json()["files"] for answer in answers] == [{"a.txt": "once\n"}] * 4
    assert upstream.count(f"/gists/{gid}") == 1


def test_truncated_and_binary_files_are_fetched_from_raw_url(http, upstream) -> None:
    gid = gist_id("raw")
    big = "".join(f"line {n}: ✓\n" for n in range(5000))  # ~70 KB: truncated by the fake's API
    binary = bytes(range(256)) * 8
    small = bytes(range(256))  # not truncated, but its listed content is not its 256 bytes in UTF-8
    upstream.add(gid, {"big.txt": big, "data.bin": binary, "small.bin": small})
    body = http.get(f"/api/v1/gists/{gid}").json()
    assert body["files"]["big.txt"] == big
    # The token goes to the API, not to the host of the raw files.
    assert upstream.authorizations[f"/gists/{gid}"] == f"Bearer {GIST_TOKEN}"
    assert upstream.authorizations[f"/raw/{gid}/{body['rev']}/big.txt"] == ""
    assert base64.b64decode(body["files"]["small.bin"]["base64"]) == small
    assert base64.b64decode(body["files"]["data.bin"]["base64"]) == binary


def test_raw_url_on_another_host_is_refused(http, upstream) -> None:
    gid = gist_id("elsewhere")
    upstream.add(gid, {"big.txt": "x" * (TRUNCATE_AT + 1)})
    upstream.raw_origin = "http://127.0.0.2:9"
    try:
        answer = http.get(f"/api/v1/gists/{gid}")
    finally:
        upstream.raw_origin = ""
    assert answer.status_code == 502
    assert answer.json()["error"]["code"] == "gist_upstream_unavailable"
    assert "raw_url is not on an allowed host" in answer.json()["error"]["message"]


def test_sizes_are_bounded(http, upstream) -> None:
    huge = gist_id("huge")
    upstream.add(huge, {"huge.txt": "y" * (MAX_FILE_BYTES + 1)})
    answer = http.get(f"/api/v1/gists/{huge}")
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "gist_too_large"
    assert "huge.txt" in answer.json()["error"]["message"]
    assert upstream.count(f"/raw/{huge}") == 0  # refused by the listed size, before any download
    many = gist_id("many")
    upstream.add(many, {f"f{n}.txt": "" for n in range(MAX_FILES + 1)})
    answer = http.get(f"/api/v1/gists/{many}")
    assert answer.status_code == 413 and f"more than {MAX_FILES} files" in answer.json()["error"]["message"]


def test_malformed_ids_are_400_and_unknown_gists_404(http, upstream) -> None:
    before = len(upstream.requests)
    for path in ("/api/v1/gists/NOT-HEX", "/api/v1/gists/" + "a" * 65, "/api/v1/gists/abc/xyz"):
        answer = http.get(path)
        assert answer.status_code == 400, path
        assert answer.json()["error"]["code"] in ("bad_gist_id", "bad_gist_rev")
    assert len(upstream.requests) == before  # never asked upstream
    answer = http.get(f"/api/v1/gists/{gist_id('absent')}")
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "gist_not_found"


def test_a_bad_pe_toml_is_422_naming_the_key(http, upstream) -> None:
    cases = {
        'image = "gcc"\n[options]\nstd = "c42"\n': "pe.toml: options.std: 'c42' is not one of",
        'image = "gcc"\n[options]\nstandard = "c99"\n': "pe.toml: options.standard: image 'gcc' has no such",
        'image = "nonesuch"\n': "pe.toml: image: no image 'nonesuch'",
        'image = "gcc"\ncolour = "blue"\n': "pe.toml: colour: unknown key",
        "[limits]\nwall_ms = 999999\n": "pe.toml: limits.wall_ms: 999999 is not in 1..60000",
        'command = "a"\nargv = ["a"]\n': "pe.toml: command: give command or argv, not both",
        'open = ["missing.c"]\n': "pe.toml: open[0]: no file 'missing.c' in the gist",
        "image = \n": "pe.toml: not valid TOML",
    }
    for text, message in cases.items():
        gid = gist_id("bad-toml")
        upstream.add(gid, {"main.c": "", "pe.toml": text})
        answer = http.get(f"/api/v1/gists/{gid}")
        assert answer.status_code == 422, text
        assert answer.json()["error"]["code"] == "bad_pe_toml"
        assert answer.json()["error"]["message"].startswith(message), answer.json()


def test_upstream_rate_limits_are_503_with_retry_after_and_a_stale_copy_is_served(http, upstream) -> None:
    cached, fresh = gist_id("cached"), gist_id("fresh")
    upstream.add(cached, {"a.txt": "kept\n"})
    upstream.add(fresh, {"a.txt": "never seen\n"})
    assert http.get(f"/api/v1/gists/{cached}").status_code == 200
    upstream.rate_limited = True
    try:
        limited = http.get(f"/api/v1/gists/{fresh}")
        stale = http.get(f"/api/v1/gists/{cached}")
    finally:
        upstream.rate_limited = False
    assert limited.status_code == 503 and limited.json()["error"]["code"] == "gist_rate_limited"
    assert 100 <= int(limited.headers["retry-after"]) <= 121
    assert "rate limiting this server" in limited.json()["error"]["message"]
    assert stale.status_code == 200 and stale.json()["files"] == {"a.txt": "kept\n"}


def test_an_unreachable_upstream_is_502(tmp_path: Path) -> None:
    gone = FakeGists()
    gone.close()  # its port answers nothing now
    served = start_serve(tmp_path / "serve.log", "--gist-api-url", gone.url, *NO_RATE_LIMITS)
    try:
        answer = httpx.get(f"{served.url}/api/v1/gists/{gist_id('gone')}", timeout=30)
    finally:
        served.stop()
    assert answer.status_code == 502
    assert answer.json()["error"] == {
        "code": "gist_upstream_unavailable", "message": "cannot reach the gist API (ConnectError)",
    }  # fmt: skip


def test_the_latest_is_fresh_for_a_while_and_gists_count_against_the_client_rate(
    tmp_path: Path, upstream: FakeGists
) -> None:
    flags = ("--gist-fresh-s", "60", "--rate-requests-per-s", "0.01", "--rate-requests-burst", "3")
    served = start_gist_edge(tmp_path / "serve.log", upstream, *flags)
    gid = gist_id("fresh")
    upstream.add(gid, {"a.txt": "1\n"})
    try:
        answers = [httpx.get(f"{served.url}/api/v1/gists/{gid}", timeout=30) for _ in range(4)]
    finally:
        served.stop()
    assert [answer.status_code for answer in answers] == [200, 200, 200, 429]
    assert upstream.count(f"/gists/{gid}") == 1  # fresh for 60 s: asked once
    assert answers[0].headers["cache-control"] == "public, max-age=60"
    assert answers[2].headers["ratelimit-limit"] == "3"  # sent once half the bucket is used
    assert answers[3].json()["error"]["code"] == "rate_limited"


def test_the_validator_reads_what_export_writes() -> None:
    """The shape Export writes (web/editor/gist.js) passes the edge's validator; the browser round trip
    is tested in tests/web/test_gist.py."""
    catalog = load_catalog()
    config = check_config(PE_TOML, catalog, {"main.c": ""})
    assert config.options == {"std": "c99"} and config.limits == {"wall_ms": 2000}
    with pytest.raises(PeTomlError) as error:
        check_config('image = "gcc"\n[options]\nstd = 17\n', catalog)
    assert error.value.key == "options.std"
