"""Every catalogue example, run through the edge on the sandbox runner, prints what its entry says
and writes the output files it names, of the types it names."""

from __future__ import annotations

import httpx
import pytest

from catalog.entry import load_catalog
from pe.child import ServeProcess

EXAMPLES = [
    pytest.param(entry.id, example, id=f"{entry.id}:{example['name']}")
    for entry in load_catalog().values()
    for example in entry.examples
]


@pytest.mark.parametrize(("image", "example"), EXAMPLES)
def test_example_output(edge: ServeProcess, image: str, example: dict) -> None:
    spec = {
        "image": image,
        "files": {path: {"text": text} for path, text in example.get("files", {}).items()},
        "options": example.get("options", {}),
        "stdin": {"text": example.get("stdin", "")},
    }
    if "argv" in example:
        spec["argv"] = example["argv"]
    response = httpx.post(edge.url + "/api/v1/run", json=spec, timeout=60)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["status"] == "ok", result
    assert result["stdout"]["text"] == example["stdout"]
    files = {file["path"]: file for file in result["files"]}
    for path, mime in example.get("outputs", {}).items():
        assert path in files, f"{path} is not among the output files {sorted(files)}"
        assert files[path]["size"] > 0 and not files[path]["truncated"]
        assert files[path]["mime"].split(";")[0] == mime
