"""Catalogue examples with text, image and 3D output, through `pe serve --runners sandbox,vm` on the
vm runner: the result names the runner that ran."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import httpx
import pytest

from catalog.entry import load_catalog
from pe.child import NO_RATE_LIMITS, ServeProcess, start_serve
from tests.support.examples import assert_example_output, example_spec

pytestmark = pytest.mark.sandbox

SMOKE = [("python3", 0), ("graphviz", 1), ("openscad", 0)]  # (image, example index): text, PNG, STL


@pytest.fixture(scope="module")
def vm_edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    if os.geteuid() != 0 or shutil.which("qemu-system-x86_64") is None:
        pytest.skip("the vm runner needs root and qemu-system-x86")
    served = start_serve(
        tmp_path_factory.mktemp("vm-edge") / "serve.log", "--runners", "sandbox,vm", *NO_RATE_LIMITS
    )
    yield served
    served.stop()


@pytest.mark.parametrize(("image", "index"), SMOKE, ids=[image for image, _ in SMOKE])
def test_example_on_the_vm_runner(vm_edge: ServeProcess, image: str, index: int) -> None:
    entry = load_catalog()[image]
    example = entry.examples[index]
    # CPU-bound work is ~25x slower under TCG: a longer wall limit.
    spec = example_spec(image, example, runner="vm", cache=False, limits={"wall_ms": 30_000})
    response = httpx.post(vm_edge.url + "/api/v1/run", json=spec, timeout=120)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["runner"] == "vm", result
    assert_example_output(result, example)
