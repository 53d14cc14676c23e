"""Caching headers on the run routes, against `pe serve`: what a browser or a CDN in front of the edge
sees (docs/edge.md, "Caching")."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from pe.child import ServeProcess

CPIO = "application/x-cpio"


@pytest.fixture(params=["HTTP/1.1", "HTTP/2"])
def client(request: pytest.FixtureRequest, edge: ServeProcess) -> Iterator[httpx.Client]:
    http2 = request.param == "HTTP/2"
    with httpx.Client(base_url=edge.url, http1=not http2, http2=http2, timeout=30) as client:
        yield client


def random_spec(cache: bool = True) -> dict:
    """A new spec whose program prints something different each time it runs."""
    return {
        "image": "busybox",
        "argv": ["sh", "-c", "echo $MARK; cat /proc/sys/kernel/random/uuid"],
        "env": {"MARK": uuid.uuid4().hex},
        "cache": cache,
    }


def test_a_post_names_its_run_and_is_not_a_cache_entry(client: httpx.Client) -> None:
    spec = random_spec()
    first = client.post("/api/v1/run", json=spec)
    assert first.status_code == 200, first.text
    run_id = first.json()["id"]
    assert first.json()["cached"] is False
    assert first.headers["etag"] == f'"{run_id}"'
    assert first.headers["content-location"] == f"/api/v1/runs/{run_id}"
    assert first.headers["cache-control"] == "no-store"
    again = client.post("/api/v1/run", json=spec)
    assert again.json()["cached"] is True
    assert again.json()["stdout"] == first.json()["stdout"]
    assert again.headers["etag"] == first.headers["etag"]
    assert again.headers["cache-control"] == "no-store"


def test_the_stored_run_may_be_kept_by_any_cache(client: httpx.Client) -> None:
    posted = client.post("/api/v1/run", json=random_spec())
    response = client.get(posted.headers["content-location"])
    assert response.status_code == 200, response.text
    assert response.json()["stdout"] == posted.json()["stdout"]
    assert response.json()["cached"] is True
    assert response.headers["etag"] == posted.headers["etag"]
    directives = {part.strip() for part in response.headers["cache-control"].split(",")}
    assert {"public", "immutable", "max-age=31536000"} <= directives
    assert response.headers["vary"] == "Accept"  # JSON or cpio, by Accept
    as_cpio = client.get(posted.headers["content-location"], headers={"Accept": CPIO})
    assert as_cpio.headers["content-type"] == CPIO
    assert as_cpio.headers["cache-control"] == response.headers["cache-control"]


@pytest.mark.parametrize("form", ["{etag}", "W/{etag}", '"other", {etag}', "*"])
def test_if_none_match_answers_304_without_a_body(client: httpx.Client, form: str) -> None:
    posted = client.post("/api/v1/run", json=random_spec())
    etag = posted.headers["etag"]
    condition = {"If-None-Match": form.format(etag=etag)}
    response = client.get(posted.headers["content-location"], headers=condition)
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == etag
    assert "immutable" in response.headers["cache-control"]


def test_a_different_etag_gets_the_body(client: httpx.Client) -> None:
    posted = client.post("/api/v1/run", json=random_spec())
    stale = {"If-None-Match": '"0000", W/"1111"'}
    response = client.get(posted.headers["content-location"], headers=stale)
    assert response.status_code == 200
    assert response.json()["id"] == posted.json()["id"]


def test_if_none_match_does_not_hide_an_unknown_run(client: httpx.Client) -> None:
    response = client.get(f"/api/v1/runs/{uuid.uuid4().hex}", headers={"If-None-Match": "*"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_run"


def test_a_fresh_run_runs_again_and_replaces_the_stored_answer(client: httpx.Client) -> None:
    spec = random_spec()
    first = client.post("/api/v1/run", json=spec)
    fresh = client.post("/api/v1/run", json={**spec, "cache": False})
    assert fresh.status_code == 200, fresh.text
    assert fresh.json()["cached"] is False
    assert fresh.json()["id"] == first.json()["id"]
    assert fresh.json()["stdout"] != first.json()["stdout"]  # the uuid differs: it ran again
    assert fresh.headers["etag"] == first.headers["etag"]
    stored = client.get(fresh.headers["content-location"])
    assert stored.json()["stdout"] == fresh.json()["stdout"]
