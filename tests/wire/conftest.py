from __future__ import annotations

import pytest

from wire.result import FileInfo, Result, RunOutput, Status, StreamInfo
from wire.spec import DEFAULT_LIMITS

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


def make_output() -> RunOutput:
    files = {"out/plot.png": PNG, "report.txt": "résumé ✓\n".encode(), "empty": b""}
    result = Result(
        id="ab" * 32,
        image_id="python3",
        image_digest="sha256:" + "cd" * 32,
        status=Status.TIMEOUT,
        exit_code=None,
        signal=9,
        wall_ms=5000.5,
        cpu_ms=4990.25,
        max_rss_kib=20480,
        stdout=StreamInfo(6, False),
        stderr=StreamInfo(3, True),
        files=[
            FileInfo("out/plot.png", len(PNG), "image/png", False),
            FileInfo("report.txt", 13, "text/plain; charset=utf-8", False),
            FileInfo("empty", 0, "text/plain; charset=utf-8", False),
        ],
        limits=DEFAULT_LIMITS,
        runner="sandbox",
        cached=True,
        message="killed after 5000 ms",
    )
    return RunOutput(result, b"tick\n\n", b"\xff\xfe\x00", files)


@pytest.fixture
def sample_output() -> RunOutput:
    return make_output()
