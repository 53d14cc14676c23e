"""`GET /api/v1/images/<digest>.erofs`: image files with Range support, read by wire.erofs over HTTP."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import httpx
import pytest

from wire.erofs import ErofsImage


@pytest.fixture(params=["HTTP/1.1", "HTTP/2"])
def client(request: pytest.FixtureRequest, edge) -> Iterator[httpx.Client]:
    http2 = request.param == "HTTP/2"
    with httpx.Client(base_url=edge.url, http1=not http2, http2=http2, timeout=30) as client:
        yield client


def busybox_digest(client: httpx.Client) -> str:
    images = {image["id"]: image for image in client.get("/api/v1/catalog").json()["images"]}
    if images.get("busybox", {}).get("digest") is None:
        pytest.skip("busybox is not built")
    return images["busybox"]["digest"]


def test_whole_image_is_served_with_its_digest(client: httpx.Client) -> None:
    digest = busybox_digest(client)
    response = client.get(f"/api/v1/images/{digest}.erofs")
    assert response.status_code == 200
    assert "sha256:" + hashlib.sha256(response.content).hexdigest() == digest
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["etag"] == f'"{digest}"'
    assert "immutable" in response.headers["cache-control"]
    bare = client.get(
        f"/api/v1/images/{digest.removeprefix('sha256:')}.erofs", headers={"Range": "bytes=0-9"}
    )
    assert bare.content == response.content[:10]


def test_range_request_returns_206_and_the_bytes(client: httpx.Client) -> None:
    digest = busybox_digest(client)
    response = client.get(f"/api/v1/images/{digest}.erofs", headers={"Range": "bytes=1024-1151"})
    assert response.status_code == 206
    assert response.content[:4] == (0xE0F5E1E2).to_bytes(4, "little")
    assert len(response.content) == 128
    assert response.headers["content-range"].startswith("bytes 1024-1151/")


def test_reader_lists_and_reads_the_image_over_range_requests(client: httpx.Client) -> None:
    digest = busybox_digest(client)
    url = f"/api/v1/images/{digest}.erofs"
    size = int(client.head(url).headers["content-length"])
    requests = []

    def read(offset: int, length: int) -> bytes:
        requests.append(length)
        response = client.get(url, headers={"Range": f"bytes={offset}-{offset + length - 1}"})
        assert response.status_code == 206
        return response.content

    image = ErofsImage(read, size)
    assert "busybox" in image.listdir("/bin")
    assert image.read_file("/bin/busybox")[:4] == b"\x7fELF"
    assert image.readlink("/bin/sh") == "/bin/busybox"
    assert sum(requests) < size  # it read what it needed, not the whole image


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [
        ("sha256:" + "0" * 64, 404, "unknown_digest"),
        ("0" * 64, 404, "unknown_digest"),
        ("sha256:abc", 400, "bad_digest"),
    ],
)
def test_unknown_or_malformed_digest_is_a_json_error(
    client: httpx.Client, name: str, status: int, code: str
) -> None:
    response = client.get(f"/api/v1/images/{name}.erofs")
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
