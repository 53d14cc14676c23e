"""The edge's routes over real HTTP/1.1 and HTTP/2 (prior knowledge) on loopback, against `pe serve`."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.support.h2client import H2Client
from wire.cpio import file_entry, write_archive
from wire.result import Status, unpack_output

CPIO = "application/x-cpio"


@pytest.fixture(params=["HTTP/1.1", "HTTP/2"])
def client(request: pytest.FixtureRequest, edge) -> Iterator[httpx.Client]:
    http2 = request.param == "HTTP/2"
    with httpx.Client(base_url=edge.url, http1=not http2, http2=http2, timeout=30) as client:
        assert client.get("/healthz").http_version == request.param
        yield client


def unique() -> str:
    """A marker that makes a spec's hash new, so the run is not answered from the cache."""
    return uuid.uuid4().hex


def echo_spec(text: str) -> dict:
    return {
        "image": "busybox",
        "argv": ["sh", "-c", "cat in.txt; echo $MARK"],
        "env": {"MARK": text},
        "files": {"in.txt": {"text": "from a file\n"}},
    }


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"]["code"] == code
    assert body["error"]["message"]


def test_json_in_json_out(client: httpx.Client) -> None:
    mark = unique()
    response = client.post("/api/v1/run", json=echo_spec(mark))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    assert body["stdout"]["text"] == f"from a file\n{mark}\n"
    assert body["image"]["id"] == "busybox"
    assert body["image"]["digest"].startswith("sha256:")
    assert body["runner"] == "sandbox"
    assert body["cached"] is False
    assert response.headers["etag"] == f'"{body["id"]}"'


def test_cpio_in_cpio_out_is_binary_safe(client: httpx.Client) -> None:
    blob = bytes(range(256)) * 4
    spec = {"image": "busybox", "argv": ["sh", "-c", "cp blob.bin copy.bin; echo " + unique()]}
    body = write_archive([file_entry("spec.json", json.dumps(spec).encode()), file_entry("blob.bin", blob)])
    response = client.post("/api/v1/run", content=body, headers={"Content-Type": CPIO, "Accept": CPIO})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == CPIO
    output = unpack_output(response.content)
    assert output.result.status == Status.OK
    assert output.files == {"copy.bin": blob}


def test_stored_run_is_served_and_marked_cached(client: httpx.Client) -> None:
    first = client.post("/api/v1/run", json=echo_spec(unique())).json()
    again = client.post("/api/v1/run", json=echo_spec(first["stdout"]["text"].split("\n")[1])).json()
    assert again["cached"] is True
    assert again["id"] == first["id"]
    stored = client.get(f"/api/v1/runs/{first['id']}")
    assert stored.status_code == 200
    assert stored.json()["stdout"] == first["stdout"]
    assert stored.json()["cached"] is True


@pytest.mark.parametrize(
    ("files", "code"),
    [
        ({"../escape.txt": {"text": "x"}}, "bad_path"),
        ({"a/../../escape.txt": {"text": "x"}}, "bad_path"),
        ({"/etc/passwd": {"text": "x"}}, "bad_path"),
        ({"nul\u0000name": {"text": "x"}}, "bad_path"),
    ],
)
def test_bad_paths_are_400(client: httpx.Client, files: dict, code: str) -> None:
    spec = {"image": "busybox", "argv": ["true"], "files": files}
    assert_error(client.post("/api/v1/run", json=spec), 400, code)
    assert client.get("/healthz").status_code == 200


def test_oversized_body_is_413_over_http1(edge) -> None:
    spec = {"image": "busybox", "argv": ["true"], "files": {"big": {"text": "x" * (2 << 20)}}}
    with httpx.Client(base_url=edge.url, timeout=30) as client:
        refused = client.post("/api/v1/run", json=spec)
        assert_error(refused, 413, "too_large")
        # The rest of the body is not read, so the connection closes, and says so first.
        assert refused.headers["connection"] == "close"
        assert client.get("/healthz").status_code == 200


def test_oversized_body_is_413_over_http2_and_the_connection_lives_on(edge) -> None:
    """The answer comes before the body is sent; the rest of the body is refused with RST_STREAM
    NO_ERROR, and the same connection serves the next request."""
    host, port = edge.url.removeprefix("http://").split(":")
    client = H2Client(host, int(port))
    try:
        headers = {"content-type": "application/json", "content-length": str(4 << 20)}
        stream_id = client.request("POST", "/api/v1/run", headers, body=b"x" * 32768, end=False)
        big = client.wait(stream_id)
        client.send_data(stream_id, b"x" * 16384)  # the client has not seen the answer yet
        assert big.status == 413
        assert json.loads(big.body)["error"]["code"] == "too_large"
        health = client.wait(client.request("GET", "/healthz"))
        assert (health.status, json.loads(health.body)) == (200, {"status": "ok"})
        assert client.goaway is None
    finally:
        client.close()


def test_malformed_json_is_400(client: httpx.Client) -> None:
    response = client.post(
        "/api/v1/run", content=b'{"image": "busybox", "argv": [', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"]


def test_malformed_cpio_is_400(client: httpx.Client) -> None:
    for body in (b"070701" + b"zz" * 60, b"070701", b"not a cpio archive at all"):
        response = client.post("/api/v1/run", content=body, headers={"Content-Type": CPIO})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"]
    assert client.get("/healthz").status_code == 200


def test_unknown_image_is_404(client: httpx.Client) -> None:
    assert_error(
        client.post("/api/v1/run", json={"image": "no-such-image", "argv": ["true"]}), 404, "unknown_image"
    )


def test_wrong_digest_is_404_naming_the_image(client: httpx.Client) -> None:
    response = client.post("/api/v1/run", json={"image": "busybox@sha256:" + "0" * 64, "argv": ["true"]})
    assert_error(response, 404, "unknown_digest")
    assert "busybox" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("image", "options", "named"),
    [
        ("busybox", {"no_such_option": 1}, "no_such_option"),
        ("gcc", {"optimize": "-O9"}, "optimize"),
        ("gcc", {"warnings": "yes"}, "warnings"),
        ("gcc", {"flags": "-O2; rm -rf /"}, "flags"),
        ("gnuplot", {"width": 50}, "width"),
        ("gnuplot", {"width": 645}, "width"),
    ],
)
def test_bad_option_is_422_naming_the_option(
    client: httpx.Client, image: str, options: dict, named: str
) -> None:
    response = client.post("/api/v1/run", json={"image": image, "options": options})
    assert_error(response, 422, "bad_option")
    assert response.json()["error"]["message"].startswith(f"option {named!r}: ")


def test_image_limits_are_the_defaults_of_its_runs(client: httpx.Client) -> None:
    """gcc's entry sets wall_ms = 10000; the request's own limits go on top."""
    spec = {"image": "gcc", "argv": ["true"], "cache": False}
    assert client.post("/api/v1/run", json=spec).json()["limits"]["wall_ms"] == 10000
    limits = client.post("/api/v1/run", json={**spec, "limits": {"wall_ms": 3000}}).json()["limits"]
    assert (limits["wall_ms"], limits["memory_mib"]) == (3000, 256)
    assert_error(client.post("/api/v1/run", json={**spec, "limits": {"wall_ms": 60_001}}), 422, "bad_limit")


def test_only_output_files_matching_the_image_globs_come_back(client: httpx.Client) -> None:
    """gnuplot's entry returns out.* only (not fit.log and the like)."""
    script = "mkdir sub; for f in out.svg out.txt fit.log sub/out.svg; do echo $1 > $f; done"
    spec = {"image": "gnuplot", "argv": ["sh", "-c", script, "sh", unique()]}
    result = client.post("/api/v1/run", json=spec).json()
    assert result["status"] == "ok", result
    assert [file["path"] for file in result["files"]] == ["out.svg", "out.txt"]


@pytest.mark.parametrize("limits", [{"wall_ms": -1}, {"wall_ms": 10**9}, {"memory_mib": 0}, {"no_such": 1}])
def test_bad_limits_are_422(client: httpx.Client, limits: dict) -> None:
    spec = {"image": "busybox", "argv": ["true"], "limits": limits}
    response = client.post("/api/v1/run", json=spec)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"]


def test_unsupported_media_type_is_415(client: httpx.Client) -> None:
    response = client.post("/api/v1/run", content=b"<xml/>", headers={"Content-Type": "text/xml"})
    assert_error(response, 415, "unsupported_media_type")


def test_unknown_run_and_route_are_json_404(client: httpx.Client) -> None:
    assert_error(client.get("/api/v1/runs/" + "f" * 64), 404, "unknown_run")
    assert_error(client.get("/api/v1/nothing-here"), 404, "not_found")


def test_catalog_lists_built_images(client: httpx.Client) -> None:
    images = {image["id"]: image for image in client.get("/api/v1/catalog").json()["images"]}
    assert {"busybox", "python3"} <= set(images)
    assert images["busybox"]["digest"].startswith("sha256:")
    assert images["busybox"]["size"] > 0
    gcc = images["gcc"]
    assert gcc["homepage"].startswith("https://") and "main.c" in gcc["files"]
    assert gcc["limits"]["wall_ms"] == 10000 and gcc["limits"]["memory_mib"] == 256
    assert [option["name"] for option in gcc["options"]] == ["optimize", "std", "warnings", "flags"]
    assert images["openscad"]["view"]["viewers"]["out.stl"] == "3d"
    assert images["gnuplot"]["outputs"] == ["out.*"] and images["busybox"]["outputs"] == []
    assert any("outputs" in example for example in images["graphviz"]["examples"])


def test_metrics_count_runs_and_requests(client: httpx.Client) -> None:
    client.post("/api/v1/run", json=echo_spec(unique()))
    text = client.get("/metrics").text
    assert 'pe_executions_total{runner="sandbox",status="ok"}' in text
    assert 'pe_requests_total{route="run",status="200"}' in text
    assert "pe_queue_depth 0" in text


def test_readme_curl_command_unpacks_result_and_stdout(edge, tmp_path) -> None:
    """The README's command: curl over HTTP/2 prior knowledge, piped into `cpio -idv`."""
    (tmp_path / "spec.json").write_text(
        json.dumps({"image": "busybox", "argv": ["echo", "hello from curl", unique()]})
    )
    command = (
        f"curl -sS --fail --http2-prior-knowledge -H 'Accept: application/x-cpio' "
        f"--data-binary @spec.json {edge.url}/api/v1/run | cpio -idv"
    )
    done = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "result.json" in done.stderr and "stdout" in done.stderr
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "ok"
    assert (tmp_path / "stdout").read_text().startswith("hello from curl ")
