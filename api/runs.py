"""A store of finished runs, bounded in bytes, dropping the least recently used first."""

from __future__ import annotations

from collections import OrderedDict

from wire.result import RunOutput

# What a stored run costs beyond its outputs: result.json and bookkeeping.
_OVERHEAD_BYTES = 2048


def output_size(output: RunOutput) -> int:
    return len(output.stdout) + len(output.stderr) + sum(map(len, output.files.values())) + _OVERHEAD_BYTES


class RunStore:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._runs: OrderedDict[str, RunOutput] = OrderedDict()

    def __len__(self) -> int:
        return len(self._runs)

    def get(self, run_id: str) -> RunOutput | None:
        output = self._runs.get(run_id)
        if output is not None:
            self._runs.move_to_end(run_id)
        return output

    def put(self, run_id: str, output: RunOutput) -> None:
        size = output_size(output)
        if size > self.max_bytes:
            return
        old = self._runs.pop(run_id, None)
        if old is not None:
            self.bytes -= output_size(old)
        self._runs[run_id] = output
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, evicted = self._runs.popitem(last=False)
            self.bytes -= output_size(evicted)
