"""A real redis-server for the state tests: on a free loopback port, nothing saved to disk."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from pe.child import free_port, start_redis


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (scripts/install installs it)")
    port = free_port()
    process = start_redis(tmp_path_factory.mktemp("redis"), port)
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(timeout=10)
