"""A store of finished runs, bounded in bytes, dropping the least recently used first."""

from __future__ import annotations

from api.lru import ByteLru
from wire.result import RunOutput

# What a stored run costs beyond its outputs: result.json and bookkeeping.
_OVERHEAD_BYTES = 2048


def output_size(output: RunOutput) -> int:
    return len(output.stdout) + len(output.stderr) + sum(map(len, output.files.values())) + _OVERHEAD_BYTES


class RunStore(ByteLru[str, RunOutput]):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes, output_size)
