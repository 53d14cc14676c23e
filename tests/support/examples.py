"""Running a catalogue example through an edge and checking what its entry says it prints and writes."""

from __future__ import annotations


def example_spec(image: str, example: dict, **extra: object) -> dict:
    """The run spec of `example` of `image`, with `extra` fields (runner, limits, …) added."""
    spec = {
        "image": image,
        "files": {path: {"text": text} for path, text in example.get("files", {}).items()},
        "options": example.get("options", {}),
        "stdin": {"text": example.get("stdin", "")},
        **extra,
    }
    if "argv" in example:
        spec["argv"] = example["argv"]
    return spec


def assert_example_output(result: dict, example: dict) -> None:
    """The run printed the example's stdout and wrote its output files, non-empty, of their types."""
    assert result["status"] == "ok", result
    assert result["stdout"]["text"] == example["stdout"]
    files = {file["path"]: file for file in result["files"]}
    for path, mime in example.get("outputs", {}).items():
        assert path in files, f"{path} is not among the output files {sorted(files)}"
        assert files[path]["size"] > 0 and not files[path]["truncated"]
        assert files[path]["mime"].split(";")[0] == mime
