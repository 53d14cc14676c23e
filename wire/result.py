"""Run results: `result.json`, and the response forms that carry it with the outputs.

The cpio form holds `result.json` first, then `stdout`, `stderr`, then `files/<path>` for each output file
in the order of `Result.files`. The JSON form is result.json with the outputs inline: `stdout` and
`stderr` gain "text" (valid UTF-8) or "base64", and so does each entry of `files`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from wire.cpio import Entry, file_entry, iter_archive, read_archive
from wire.errors import WireError
from wire.spec import Limits, content_to_json

FILES_PREFIX = "files/"


class Status(StrEnum):
    OK = "ok"
    EXIT = "exit"  # exited with a non-zero code
    SIGNAL = "signal"
    TIMEOUT = "timeout"
    OOM = "oom"
    OUTPUT_LIMIT = "output_limit"
    ERROR = "error"  # the service failed, not the program


@dataclass
class StreamInfo:
    bytes: int
    truncated: bool


@dataclass
class FileInfo:
    path: str
    size: int
    mime: str
    truncated: bool


@dataclass
class Result:
    id: str
    image_id: str
    image_digest: str
    status: Status
    exit_code: int | None
    signal: int | None
    wall_ms: float
    cpu_ms: float
    max_rss_kib: int
    stdout: StreamInfo
    stderr: StreamInfo
    files: list[FileInfo]
    limits: Limits
    runner: str
    cached: bool = False
    message: str = ""  # says why: the timeout, the kill, the error

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "image": {"id": self.image_id, "digest": self.image_digest},
            "status": str(self.status),
            "exit_code": self.exit_code,
            "signal": self.signal,
            "wall_ms": self.wall_ms,
            "cpu_ms": self.cpu_ms,
            "max_rss_kib": self.max_rss_kib,
            "stdout": {"bytes": self.stdout.bytes, "truncated": self.stdout.truncated},
            "stderr": {"bytes": self.stderr.bytes, "truncated": self.stderr.truncated},
            "files": [
                {"path": f.path, "size": f.size, "mime": f.mime, "truncated": f.truncated} for f in self.files
            ],
            "limits": self.limits.to_json(),
            "runner": self.runner,
            "cached": self.cached,
            "message": self.message,
        }

    @classmethod
    def from_json(cls, obj: object) -> Result:
        """The inverse of to_json; WireError(400, "bad_result") when a field is missing or mistyped.
        Extra keys (such as the inline outputs of the JSON form) are ignored."""
        o = _Fields(obj, "result")
        image = o.sub("image")
        status = o.get("status", str)
        if status not in Status._value2member_map_:
            raise WireError(400, "bad_result", f"result.status: unknown {status!r}")
        try:
            limits = Limits.from_json(o.get("limits", dict))
        except WireError as e:
            raise WireError(400, "bad_result", f"result.{e.message}") from None
        return cls(
            id=o.get("id", str),
            image_id=image.get("id", str),
            image_digest=image.get("digest", str),
            status=Status(status),
            exit_code=o.get("exit_code", int, optional=True),
            signal=o.get("signal", int, optional=True),
            wall_ms=float(o.get("wall_ms", float)),
            cpu_ms=float(o.get("cpu_ms", float)),
            max_rss_kib=o.get("max_rss_kib", int),
            stdout=_stream(o.sub("stdout")),
            stderr=_stream(o.sub("stderr")),
            files=[
                _file_info(_Fields(item, f"result.files[{i}]")) for i, item in enumerate(o.get("files", list))
            ],
            limits=limits,
            runner=o.get("runner", str),
            cached=o.get("cached", bool),
            message=o.get("message", str),
        )


class _Fields:
    """Typed access to a decoded JSON object, naming the key in every error."""

    def __init__(self, obj: object, where: str) -> None:
        if not isinstance(obj, dict):
            raise WireError(400, "bad_result", f"{where} must be an object")
        self.obj, self.where = obj, where

    def get(self, key: str, kind: type, *, optional: bool = False) -> Any:
        value = self.obj.get(key)
        if value is None and optional:
            return None
        ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if kind is float:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok:
            raise WireError(
                400, "bad_result", f"{self.where}.{key} must be {kind.__name__}, not {value!r:.50}"
            )
        return value

    def sub(self, key: str) -> _Fields:
        return _Fields(self.obj.get(key), f"{self.where}.{key}")


def _stream(o: _Fields) -> StreamInfo:
    return StreamInfo(bytes=o.get("bytes", int), truncated=o.get("truncated", bool))


def _file_info(o: _Fields) -> FileInfo:
    return FileInfo(
        path=o.get("path", str),
        size=o.get("size", int),
        mime=o.get("mime", str),
        truncated=o.get("truncated", bool),
    )


@dataclass
class RunOutput:
    result: Result
    stdout: bytes
    stderr: bytes
    files: dict[str, bytes] = field(default_factory=dict)


def _file_pairs(out: RunOutput) -> list[tuple[FileInfo, bytes]]:
    """Each output file with its FileInfo, in the order of `result.files`; both must name the same paths."""
    listed = [info.path for info in out.result.files]
    if sorted(listed) != sorted(out.files):
        raise ValueError(f"result.files lists {listed}, but the output has {sorted(out.files)}")
    return [(info, out.files[info.path]) for info in out.result.files]


def _entries(out: RunOutput) -> Iterator[Entry]:
    body = json.dumps(out.result.to_json(), indent=2, ensure_ascii=False).encode("utf-8") + b"\n"
    yield file_entry("result.json", body)
    yield file_entry("stdout", out.stdout)
    yield file_entry("stderr", out.stderr)
    for info, data in _file_pairs(out):
        yield file_entry(FILES_PREFIX + info.path, data)


def iter_pack_output(out: RunOutput) -> Iterator[bytes]:
    """The cpio form in pieces (outputs are not copied)."""
    return iter_archive(_entries(out))


def pack_output(out: RunOutput) -> bytes:
    return b"".join(iter_pack_output(out))


def unpack_output(data: bytes) -> RunOutput:
    """The inverse of pack_output. Directory entries are ignored, so an archive repacked with
    `find . | cpio -o -H newc` after `cpio -id` reads the same."""
    parts: dict[str, bytes] = {}
    for entry in read_archive(data):
        if entry.is_dir:
            continue
        known = entry.name in ("result.json", "stdout", "stderr") or entry.name.startswith(FILES_PREFIX)
        if not entry.is_file or not known:
            raise WireError(400, "bad_result", f"unexpected entry {entry.name!r} in a result archive")
        if entry.name in parts:
            raise WireError(400, "bad_result", f"{entry.name!r} is in the result archive twice")
        parts[entry.name] = entry.data
    if "result.json" not in parts:
        raise WireError(400, "bad_result", "the result archive has no result.json")
    try:
        obj = json.loads(parts.pop("result.json").decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise WireError(400, "bad_result", f"result.json is not valid JSON: {e}") from None
    result = Result.from_json(obj)
    stdout, stderr = parts.pop("stdout", b""), parts.pop("stderr", b"")
    files = {name.removeprefix(FILES_PREFIX): data for name, data in parts.items()}
    return _checked(RunOutput(result, stdout, stderr, files))


def _checked(out: RunOutput) -> RunOutput:
    try:
        _file_pairs(out)
    except ValueError as e:
        raise WireError(400, "bad_result", str(e)) from None
    return out


def output_to_json(out: RunOutput) -> dict:
    obj = out.result.to_json()
    obj["stdout"].update(content_to_json(out.stdout))
    obj["stderr"].update(content_to_json(out.stderr))
    for item, (_, data) in zip(obj["files"], _file_pairs(out), strict=True):
        item.update(content_to_json(data))
    return obj


def _inline(obj: dict, where: str) -> bytes:
    try:
        if isinstance(obj.get("text"), str):
            return obj["text"].encode("utf-8")
        return base64.b64decode(obj.get("base64"), validate=True)
    except (TypeError, ValueError, binascii.Error):
        raise WireError(400, "bad_result", f'{where} needs "text" or "base64"') from None


def output_from_json(obj: object) -> RunOutput:
    """The inverse of output_to_json (for clients that asked for application/json)."""
    result = Result.from_json(obj)
    assert isinstance(obj, dict)  # from_json checked it
    files = {}
    for info, item in zip(result.files, obj["files"], strict=True):
        files[info.path] = _inline(item, f"files[{info.path!r}]")
    return _checked(
        RunOutput(result, _inline(obj["stdout"], "stdout"), _inline(obj["stderr"], "stderr"), files)
    )
