"""Cross-origin use of the API against `pe serve` (docs/api.md, "Cross-origin use"): what a browser on
another origin needs to see before it lets a page read the answer."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from api.cors import Cors
from pe.child import ServeProcess

SITE = "https://docs.example.org"


@pytest.fixture
def client(edge: ServeProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=edge.url, timeout=30) as client:
        yield client


def test_a_preflight_for_a_json_post_is_answered(client: httpx.Client) -> None:
    response = client.options(
        "/api/v1/run",
        headers={
            "Origin": SITE,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "*"
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "content-type" in response.headers["access-control-allow-headers"].lower()
    assert int(response.headers["access-control-max-age"]) > 0


def test_a_cross_origin_run_may_be_read_with_its_headers(client: httpx.Client) -> None:
    spec = {"image": "busybox", "argv": ["echo", "from afar"]}
    response = client.post("/api/v1/run", json=spec, headers={"Origin": SITE})
    assert response.status_code == 200, response.text
    assert response.json()["stdout"]["text"] == "from afar\n"
    assert response.headers["access-control-allow-origin"] == "*"
    exposed = {name.strip().lower() for name in response.headers["access-control-expose-headers"].split(",")}
    assert {"etag", "content-location", "retry-after", "ratelimit-remaining"} <= exposed
    stored = client.get(response.headers["content-location"], headers={"Origin": SITE})
    assert stored.headers["access-control-allow-origin"] == "*"


def test_errors_carry_the_headers_too_so_the_page_can_show_them(client: httpx.Client) -> None:
    response = client.post("/api/v1/run", json={"image": "no-such-image"}, headers={"Origin": SITE})
    assert response.status_code == 404
    assert response.json()["error"]["code"]
    assert response.headers["access-control-allow-origin"] == "*"


def test_same_origin_and_worker_requests_get_no_cors_headers(client: httpx.Client) -> None:
    plain = client.get("/api/v1/catalog")
    assert plain.status_code == 200
    assert "access-control-allow-origin" not in plain.headers
    worker = client.get("/api/v1/work/workers", headers={"Origin": SITE})
    assert "access-control-allow-origin" not in worker.headers
    preflight = client.options(
        "/api/v1/work/pull", headers={"Origin": SITE, "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in preflight.headers


@pytest.fixture
def restricted() -> Iterator[TestClient]:
    """The wrapper alone, configured for one origin, around a one-route app."""

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = Cors(Starlette(routes=[Route("/api/v1/hello", hello, methods=["GET", "POST"])]), origins=(SITE,))
    with TestClient(app, base_url="http://edge") as client:
        yield client


def test_a_configured_origin_is_named_and_others_are_refused(restricted: TestClient) -> None:
    allowed = restricted.get("/api/v1/hello", headers={"Origin": SITE})
    assert allowed.headers["access-control-allow-origin"] == SITE
    assert "Origin" in allowed.headers["vary"]
    other = restricted.get("/api/v1/hello", headers={"Origin": "https://elsewhere.example"})
    assert other.text == "hello"  # answered, but the browser will not show it to that page
    assert "access-control-allow-origin" not in other.headers
    refused = restricted.options(
        "/api/v1/hello",
        headers={"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "POST"},
    )
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "origin_not_allowed"
