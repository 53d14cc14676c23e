"""Every catalogue example, run through the edge on the sandbox runner, prints what its entry says
and writes the output files it names, of the types it names."""

from __future__ import annotations

import httpx
import pytest

from catalog.entry import load_catalog
from pe.child import ServeProcess
from tests.support.examples import assert_example_output, example_spec

EXAMPLES = [
    pytest.param(entry.id, example, id=f"{entry.id}:{example['name']}")
    for entry in load_catalog().values()
    for example in entry.examples
]


@pytest.mark.parametrize(("image", "example"), EXAMPLES)
def test_example_output(edge: ServeProcess, image: str, example: dict) -> None:
    response = httpx.post(edge.url + "/api/v1/run", json=example_spec(image, example), timeout=60)
    assert response.status_code == 200, response.text
    assert_example_output(response.json(), example)
