"""With a certificate, the same port serves HTTPS, and HTTP/2 is chosen by ALPN."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import httpx
import pytest

from pe.child import ServeProcess, start_serve, trust


@pytest.fixture(scope="module")
def tls_edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    if os.geteuid() != 0:
        pytest.skip("the sandbox runner needs root (crun, mounts)")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    served = start_serve(folder / "serve.log", tls=(cert, key))
    yield served
    served.stop()


def test_https_negotiates_http2_and_runs(tls_edge: ServeProcess) -> None:
    with httpx.Client(base_url=tls_edge.url, http2=True, verify=trust(tls_edge.cert), timeout=30) as client:
        response = client.post("/api/v1/run", json={"image": "busybox", "argv": ["echo", "over TLS"]})
    assert response.http_version == "HTTP/2"
    assert response.json()["stdout"]["text"] == "over TLS\n"


def test_https_serves_http1_to_clients_without_h2(tls_edge: ServeProcess) -> None:
    with httpx.Client(base_url=tls_edge.url, verify=trust(tls_edge.cert), timeout=30) as client:
        response = client.get("/healthz")
    assert response.http_version == "HTTP/1.1"
    assert response.json() == {"status": "ok"}
