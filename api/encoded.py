"""Encoded answers of stored runs, kept so that a cache hit does not encode the same output again.

Cache hits are the edge's most frequent answer, and encoding a result (its dataclasses to JSON with
base64 contents, or a cpio archive) costs more than the rest of the route. Entries are keyed by run
id, format and `cached` flag, and remember the output object they were made from: the memory state
hands out the same object for as long as it keeps a run, so a run replaced under the same id (a fresh
run) is a new object and gets a new encoding. Outputs read from Redis are new objects on every read and
so never hit; they pass through at the cost of one dictionary update.
"""

from __future__ import annotations

import dataclasses
import json

from api.lru import ByteLru
from wire.result import RunOutput, output_to_json, pack_output


class EncodedOutputs:
    def __init__(self, max_bytes: int) -> None:
        self._entries: ByteLru[tuple[str, bool, bool], tuple[RunOutput, bytes]] = ByteLru(
            max_bytes, lambda entry: len(entry[1])
        )

    def body(self, output: RunOutput, *, cached: bool, cpio: bool) -> bytes:
        """`output` with `result.cached` set to `cached`, as cpio or as JSON."""
        key = (output.result.id, cached, cpio)
        entry = self._entries.get(key)
        if entry is not None and entry[0] is output:
            return entry[1]
        body = encode(with_cached_flag(output, cached), cpio=cpio)
        self._entries.put(key, (output, body))
        return body


def with_cached_flag(output: RunOutput, cached: bool) -> RunOutput:
    return dataclasses.replace(output, result=dataclasses.replace(output.result, cached=cached))


def encode(output: RunOutput, *, cpio: bool) -> bytes:
    if cpio:
        return pack_output(output)
    # What starlette.responses.JSONResponse renders.
    text = json.dumps(output_to_json(output), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.encode("utf-8")
