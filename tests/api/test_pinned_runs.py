"""Runs pinned to an image digest (`"image": "id@sha256:…"`), as share links send them
(docs/sharing-links.md): the current digest runs the same run as the bare id; any other is refused,
naming the image and both digests, never run on another version."""

from __future__ import annotations

import uuid

import httpx

from pe.child import ServeProcess


def current_digest(edge: ServeProcess, image: str) -> str:
    images = httpx.get(f"{edge.url}/api/v1/catalog").json()["images"]
    return next(entry["digest"] for entry in images if entry["id"] == image)


def spec(image: str, mark: str) -> dict:
    return {"image": image, "argv": ["echo", mark]}


def test_the_current_digest_runs_the_same_run_as_the_bare_id(edge: ServeProcess) -> None:
    digest = current_digest(edge, "busybox")
    mark = uuid.uuid4().hex
    with httpx.Client(base_url=edge.url, timeout=30) as client:
        bare = client.post("/api/v1/run", json=spec("busybox", mark))
        pinned = client.post("/api/v1/run", json=spec(f"busybox@{digest}", mark))
        assert bare.status_code == pinned.status_code == 200, pinned.text
        assert pinned.headers["etag"] == bare.headers["etag"]  # one run id: the digest is what is hashed
        assert pinned.json()["cached"] is True
        assert pinned.json()["image"] == {"id": "busybox", "digest": digest}
        stored = client.get(pinned.headers["content-location"])
        assert stored.json()["stdout"]["text"] == f"{mark}\n"


def test_a_digest_not_served_is_refused_naming_the_image_and_both_digests(edge: ServeProcess) -> None:
    digest = current_digest(edge, "busybox")
    old = "sha256:" + "0" * 64
    response = httpx.post(f"{edge.url}/api/v1/run", json=spec(f"busybox@{old}", "x"), timeout=30)
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "unknown_digest"
    assert "busybox" in error["message"] and old in error["message"] and digest in error["message"]
