"""How the edge turns a run spec into a job: argv from options, limits in layers, output globs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from api.app import Edge, make_job
from api.errors import ApiError
from api.images import ImageResolver
from api.jobs import Dispatcher
from api.metrics import Metrics
from api.ratelimit import MemoryBuckets
from api.state import MemoryState
from catalog.entry import load_entry
from catalog.store import ImageMeta, ImageStore
from pe.settings import Settings
from wire.errors import WireError
from wire.spec import DEFAULT_LIMITS, parse_spec, request_hash

ENTRY = """
id = "tool"
title = "Tool"
description = "A tool."
command = ["tool", "{level}", "main.txt"]
outputs = ["out/*.svg", "result.txt"]

[source]
kind = "busybox-static"

[limits]
wall_ms = 10000
memory_mib = 512

[[options]]
name = "level"
type = "choice"
choices = ["-1", "-2"]
"""


@pytest.fixture
def fake_edge(tmp_path: Path) -> Edge:
    path = tmp_path / "tool.toml"
    path.write_text(ENTRY)
    entry = load_entry(path)
    store = ImageStore(tmp_path / "store")
    image = store.scratch() / "image.erofs"
    image.write_bytes(b"not really an image")
    digest = "sha256:" + "ab" * 32
    store.add(image, ImageMeta(id="tool", digest=digest, size=19, input_key="k", built_at=0, build_seconds=0))
    metrics = Metrics()
    return Edge(
        settings=Settings(cache_dir=tmp_path),
        images=ImageResolver({"tool": entry}, store),
        dispatcher=Dispatcher(
            MemoryState(
                cache_bytes=1 << 20, queue_size=10, client_queue_size=10, lease_s=30, buckets=MemoryBuckets()
            ),
            metrics,
        ),
        metrics=metrics,
    )


def test_limits_are_defaults_then_the_image_then_the_request(fake_edge: Edge) -> None:
    image_only = make_job(fake_edge, parse_spec({"image": "tool"}))
    assert image_only.spec.limits == dataclasses.replace(DEFAULT_LIMITS, wall_ms=10000, memory_mib=512)
    request = make_job(fake_edge, parse_spec({"image": "tool", "limits": {"wall_ms": 2000, "pids": 8}}))
    assert request.spec.limits == dataclasses.replace(DEFAULT_LIMITS, wall_ms=2000, memory_mib=512, pids=8)


def test_the_run_id_covers_the_effective_limits(fake_edge: Edge) -> None:
    job = make_job(fake_edge, parse_spec({"image": "tool"}))
    expected = dataclasses.replace(job.spec, argv=job.argv)
    assert job.id == request_hash(
        expected, image_digest=job.image_digest, runner="sandbox", outputs=("out/*.svg", "result.txt")
    )
    assert job.id != make_job(fake_edge, parse_spec({"image": "tool", "limits": {"memory_mib": 256}})).id


def test_a_request_over_the_maximum_is_refused_before_the_image(fake_edge: Edge) -> None:
    with pytest.raises(WireError) as caught:
        parse_spec({"image": "tool", "limits": {"wall_ms": 60_001}})
    assert (caught.value.status, caught.value.code) == (422, "bad_limit")


def test_argv_comes_from_the_options_unless_the_spec_gives_one(fake_edge: Edge) -> None:
    assert make_job(fake_edge, parse_spec({"image": "tool"})).argv == ("tool", "-1", "main.txt")
    assert make_job(fake_edge, parse_spec({"image": "tool", "options": {"level": "-2"}})).argv[1] == "-2"
    assert make_job(fake_edge, parse_spec({"image": "tool", "argv": ["sh"]})).argv == ("sh",)


def test_bad_options_are_422_naming_the_option_even_with_argv(fake_edge: Edge) -> None:
    for spec in (
        {"image": "tool", "options": {"level": "-9"}},
        {"image": "tool", "argv": ["sh"], "options": {"x": 1}},
    ):
        with pytest.raises(WireError) as caught:
            make_job(fake_edge, parse_spec(spec))
        assert (caught.value.status, caught.value.code) == (422, "bad_option")
        assert next(iter(spec["options"])) in caught.value.message


def test_the_job_carries_the_output_globs(fake_edge: Edge) -> None:
    assert make_job(fake_edge, parse_spec({"image": "tool"})).outputs == ("out/*.svg", "result.txt")


def test_the_run_id_changes_with_the_output_globs(fake_edge: Edge) -> None:
    """A cached run must not answer for an image whose globs now return other files."""
    before = make_job(fake_edge, parse_spec({"image": "tool"})).id
    entry = fake_edge.images.catalog["tool"]
    fake_edge.images.catalog["tool"] = dataclasses.replace(entry, outputs=("result.txt",))
    assert make_job(fake_edge, parse_spec({"image": "tool"})).id != before


def test_no_argv_and_no_template_is_422(fake_edge: Edge) -> None:
    entry = fake_edge.images.catalog["tool"]
    fake_edge.images.catalog["tool"] = dataclasses.replace(entry, command=None, options=())
    with pytest.raises(ApiError) as caught:
        make_job(fake_edge, parse_spec({"image": "tool"}))
    assert (caught.value.status, caught.value.code) == (422, "argv_required")
