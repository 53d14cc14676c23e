"""Browser modules of the site run under Node, for tests of their pure parts (codecs, parsers)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path


def run_module(module: Path, name: str, script: str) -> object:
    """Import `module` (an ES module of web/) as `name`, run `script` (an async body that sets
    `result`) under Node, and give back `result` as JSON."""
    program = f"const {name} = await import(process.argv[1]);\nlet result;\n{script}\n"
    program += "console.log(JSON.stringify(result));"
    done = subprocess.run(
        ["node", "--no-warnings", "--input-type=module", "-e", program, module.as_uri()],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
