"""Fixtures shared by the suites: a real `pe serve` on loopback."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from pe.child import NO_RATE_LIMITS, ServeProcess, start_serve


@pytest.fixture(scope="session")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    if os.geteuid() != 0:
        pytest.skip("the sandbox runner needs root (crun, mounts)")
    # The whole suite is one client: rate limits are tested with an edge of their own (test_ratelimit.py).
    served = start_serve(
        tmp_path_factory.mktemp("edge") / "serve.log", "--max-body-bytes", str(1 << 20), *NO_RATE_LIMITS
    )
    yield served
    served.stop()
