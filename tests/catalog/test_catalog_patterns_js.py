"""Every text option's pattern means the same to the edge (Python `re`) and to the playground (a
JavaScript `RegExp` with the "u" flag, web/editor/options.js): compiled and tried in Node."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from catalog.entry import load_catalog

# For each pattern, values that the edge accepts and rejects; Node must agree on every one.
SAMPLES = ["-O2 -Wall", "-O2; rm -rf /", "800x600", "800x600!", "size=10", "size=1.5", "x=", "", "abc"]

NODE_CHECK = """
const cases = JSON.parse(require("fs").readFileSync(0, "utf8"));
const answers = cases.map(([pattern, value]) => new RegExp(`^(?:${pattern})$`, "u").test(value));
process.stdout.write(JSON.stringify(answers));
"""


def text_patterns() -> list[tuple[str, str, str]]:
    return [
        (entry.id, option["name"], option["pattern"])
        for entry in load_catalog().values()
        for option in entry.options
        if option.get("pattern")
    ]


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_catalogue_patterns_match_the_same_values_in_javascript() -> None:
    patterns = text_patterns()
    assert patterns, "the catalogue has text options with patterns (gcc's flags, openscad's -D)"
    cases = [(pattern, value) for _, _, pattern in patterns for value in SAMPLES]
    done = subprocess.run(["node", "-e", NODE_CHECK], input=json.dumps(cases), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    in_javascript = json.loads(done.stdout)
    in_python = [re.fullmatch(pattern, value) is not None for pattern, value in cases]
    disagreements = [case for case, js, py in zip(cases, in_javascript, in_python, strict=True) if js != py]
    assert disagreements == []
    assert any(in_python) and not all(in_python), "the samples exercise both answers"
