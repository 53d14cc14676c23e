"""Run specs: the public JSON and cpio forms, their validation, and the request hash.

The request hash is the run id. Version 1 is the lowercase hex sha256 of the ASCII bytes of

    json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)

where doc is

    {"v": 1,
     "image": <resolved image digest, e.g. "sha256:…">,
     "argv": [<argv items>],
     "env": [[key, value], …] sorted by key,
     "stdin": <sha256 hex of stdin>,
     "files": [[path, <sha256 hex of the content>], …] sorted by normalised path,
     "limits": {<all six Limits fields>},
     "runner": <the runner that runs it, "sandbox" or "vm">,
     "outputs": [<output globs>] sorted; only when the image narrows its output files}

JSON strings keep it unambiguous (no value can forge a separator) and ensure_ascii makes the bytes
independent of how non-ASCII text would be written. `options` are left out because the edge has already
turned them into argv, and `cache` because it only says whether a stored answer may be used. "outputs"
is absent when every file under /work comes back, so adding it kept every other id; any other change to
this encoding must bump "v".

The cpio form (`application/x-cpio`) is a newc archive whose first regular entry is `spec.json` (the JSON
form, "files" optional) and whose other regular entries are input files; directory entries are ignored.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from itertools import pairwise

from wire.cpio import CpioError, file_entry, iter_entries, write_archive
from wire.errors import WireError
from wire.paths import MAX_PATH_BYTES as MAX_PATH_BYTES
from wire.paths import normalize_path

MAX_FILES = 1000
MAX_ARGV = 1000
MAX_ENV = 256
MAX_INPUT_BYTES = 16 << 20  # files + stdin + argv + env, decoded
MAX_BODY_BYTES = 64 << 20  # a request body, before decoding (base64 and JSON escapes inflate it)
RUNNERS = ("sandbox", "vm")
HASH_VERSION = 1

_KEYS = {"image", "argv", "env", "files", "stdin", "options", "limits", "runner", "cache"}
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}(@sha256:[0-9a-f]{64})?")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}


@dataclass(frozen=True)
class Limits:
    wall_ms: int = 5000  # wall clock from the program's start
    memory_mib: int = 256
    pids: int = 64
    stream_bytes: int = 1 << 20  # per output stream (stdout, stderr)
    output_bytes: int = 8 << 20  # all output files together
    file_bytes: int = 16 << 20  # any one written file (RLIMIT_FSIZE)

    def to_json(self) -> dict[str, int]:
        return asdict(self)

    def merged(self, *overrides: Mapping[str, int]) -> Limits:
        """These limits with each mapping's values on top, later ones winning (names unchecked)."""
        values = self.to_json()
        for layer in overrides:
            values.update(layer)
        return Limits(**values)

    @classmethod
    def from_json(cls, obj: object) -> Limits:
        """All fields given as integers, as `to_json` writes them (no bounds: see `parse_spec`)."""
        names = [f.name for f in fields(cls)]
        if not isinstance(obj, dict) or sorted(obj) != sorted(names):
            raise WireError(400, "bad_request", f"limits must be an object with the keys {', '.join(names)}")
        for name in names:
            if type(obj[name]) is not int:
                raise _bad(f"limits.{name}", f"must be an integer, not {_json_type(obj[name])}")
        return cls(**obj)


DEFAULT_LIMITS = Limits()
MAX_LIMITS = Limits(
    wall_ms=60_000,
    memory_mib=2048,
    pids=1024,
    stream_bytes=16 << 20,
    output_bytes=64 << 20,
    file_bytes=64 << 20,
)

OptionValue = str | int | float | bool


@dataclass(frozen=True)
class RunSpec:
    image: str  # catalogue id, optionally "id@sha256:<hex>"
    argv: tuple[str, ...]  # may be empty when the catalogue entry has a command template
    env: tuple[tuple[str, str], ...]  # sorted by key
    files: tuple[tuple[str, bytes], ...]  # sorted by normalised path
    stdin: bytes
    options: tuple[tuple[str, OptionValue], ...]  # sorted by name
    limits: Limits  # the limits the run gets: defaults merged with `limit_overrides` (the edge
    # puts the image's own defaults between the two; see `Limits.merged`)
    runner: str | None  # "sandbox" | "vm" | None (edge default)
    cache: bool = True
    limit_overrides: tuple[tuple[str, int], ...] = ()  # the limits the request gave, sorted by name

    @property
    def image_id(self) -> str:
        return self.image.partition("@")[0]

    @property
    def image_digest(self) -> str | None:
        return self.image.partition("@")[2] or None

    def to_json(self) -> dict:
        """The public JSON form; `parse_spec(spec.to_json()) == spec`."""
        obj: dict = {
            "image": self.image,
            "argv": list(self.argv),
            "env": dict(self.env),
            "files": {path: content_to_json(data) for path, data in self.files},
            "stdin": content_to_json(self.stdin),
            "options": dict(self.options),
            "limits": dict(self.limit_overrides),
            "cache": self.cache,
        }
        if self.runner is not None:
            obj["runner"] = self.runner
        return obj


def content_to_json(data: bytes) -> dict[str, str]:
    """`{"text": …}` when `data` is UTF-8, else `{"base64": …}`."""
    try:
        return {"text": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


def _json_type(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _bad(key: str, message: str) -> WireError:
    return WireError(400, "bad_request", f"{key}: {message}")


def _string(value: object, key: str) -> str:
    """A string that can become argv, env or a name: no NUL, encodable as UTF-8."""
    if not isinstance(value, str):
        raise _bad(key, f"must be a string, not {_json_type(value)}")
    if "\0" in value:
        raise _bad(key, "contains NUL")
    _utf8(value, key)
    return value


def _utf8(text: str, key: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad(key, "is not valid Unicode (lone surrogate)") from None


def _content(value: object, key: str, *, plain: bool = False) -> bytes:
    """`{"text": …}` or `{"base64": …}`; with `plain`, a bare string too."""
    if plain and isinstance(value, str):
        return _utf8(value, key)
    if not isinstance(value, dict) or len(value) != 1 or not {"text", "base64"} >= value.keys():
        raise _bad(key, 'must be {"text": "…"} or {"base64": "…"}')
    kind, text = next(iter(value.items()))
    if not isinstance(text, str):
        raise _bad(f"{key}.{kind}", f"must be a string, not {_json_type(text)}")
    if kind == "text":
        return _utf8(text, key)
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise _bad(f"{key}.base64", "is not valid base64") from None


def _image(value: object) -> str:
    image = _string(value, "image")
    if not _IMAGE.fullmatch(image):
        raise _bad("image", f"{image[:200]!r} is not a catalogue id, optionally pinned as id@sha256:<64 hex>")
    return image


def _argv(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _bad("argv", f"must be an array of strings, not {_json_type(value)}")
    if len(value) > MAX_ARGV:
        raise WireError(413, "too_large", f"argv: more than {MAX_ARGV} items")
    return tuple(_string(item, f"argv[{i}]") for i, item in enumerate(value))


def _env(value: object) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise _bad("env", f"must be an object of strings, not {_json_type(value)}")
    if len(value) > MAX_ENV:
        raise WireError(413, "too_large", f"env: more than {MAX_ENV} entries")
    for key, item in value.items():
        if not isinstance(key, str) or not _ENV_KEY.fullmatch(key):
            raise _bad("env", f"{str(key)[:200]!r} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)")
        _string(item, f"env.{key}")
    return tuple(sorted(value.items()))


def _options(value: object) -> tuple[tuple[str, OptionValue], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise _bad("options", f"must be an object, not {_json_type(value)}")
    for name, item in value.items():
        _string(name, "options")
        if isinstance(item, str):
            try:
                _string(item, f"options.{name}")
            except WireError as e:
                raise WireError(422, "bad_option", e.message) from None
        elif not isinstance(item, int | float) or (isinstance(item, float) and not math.isfinite(item)):
            raise WireError(422, "bad_option", f"options.{name}: must be a string, number or boolean")
    return tuple(sorted(value.items()))


def _limit_overrides(value: object, max_limits: Limits) -> tuple[tuple[str, int], ...]:
    """The limits a request gives, checked against `max_limits` (null values are left out)."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise _bad("limits", f"must be an object, not {_json_type(value)}")
    known = [f.name for f in fields(Limits)]
    unknown = [key for key in value if key not in known]
    if unknown:
        raise WireError(422, "bad_limit", f"limits: unknown {unknown[0]!r} (known: {', '.join(known)})")
    given = {}
    for name in known:
        limit = value.get(name)
        if limit is None:
            continue
        if type(limit) is not int:
            raise _bad(f"limits.{name}", f"must be an integer, not {_json_type(limit)}")
        maximum = getattr(max_limits, name)
        if not 0 < limit <= maximum:
            raise WireError(422, "bad_limit", f"limits.{name}: {limit} is not in 1..{maximum}")
        given[name] = limit
    return tuple(sorted(given.items()))


def _capped_defaults(max_limits: Limits) -> Limits:
    """DEFAULT_LIMITS, each no higher than `max_limits`."""
    return Limits(
        **{f.name: min(getattr(DEFAULT_LIMITS, f.name), getattr(max_limits, f.name)) for f in fields(Limits)}
    )


def _runner(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad("runner", f"must be a string, not {_json_type(value)}")
    if value not in RUNNERS:
        raise WireError(422, "bad_runner", f"runner: {value[:200]!r} is not one of {', '.join(RUNNERS)}")
    return value


def _files(value: object, archived: dict[str, bytes]) -> tuple[tuple[str, bytes], ...]:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise _bad("files", f"must be an object, not {_json_type(value)}")
    if len(value) + len(archived) > MAX_FILES:
        raise WireError(413, "too_large", f"files: more than {MAX_FILES}")
    files = dict(archived)
    for raw, content in value.items():
        path = normalize_path(raw)
        if path in files:
            where = "in spec.json and in the archive" if path in archived else "twice"
            raise WireError(400, "bad_path", f"files: {path!r} is given {where}")
        files[path] = _content(content, f"files[{raw!r}]")
    _check_tree(files)
    return tuple(sorted(files.items()))


def _check_tree(paths: dict[str, bytes]) -> None:
    """No path may be a directory of another. With "/" sorted below every other character (NUL, which
    paths never contain), a path's descendants come right after it."""
    keys = sorted(path.replace("/", "\0") for path in paths)
    for parent, child in pairwise(keys):
        if child.startswith(parent + "\0"):
            a, b = parent.replace("\0", "/"), child.replace("\0", "/")
            raise WireError(400, "bad_path", f"files: {a!r} is a file and also a directory of {b!r}")


def _parse(obj: object, archived: dict[str, bytes], max_limits: Limits) -> RunSpec:
    if not isinstance(obj, dict):
        raise WireError(400, "bad_request", f"the run spec must be a JSON object, not {_json_type(obj)}")
    unknown = [key for key in obj if key not in _KEYS]
    if unknown:
        raise WireError(400, "bad_request", f"unknown key {unknown[0]!r} (known: {', '.join(sorted(_KEYS))})")
    if "image" not in obj:
        raise _bad("image", "is required")
    cache = obj.get("cache")
    if cache is not None and not isinstance(cache, bool):
        raise _bad("cache", f"must be a boolean, not {_json_type(cache)}")
    stdin = obj.get("stdin")
    overrides = _limit_overrides(obj.get("limits"), max_limits)
    spec = RunSpec(
        image=_image(obj["image"]),
        argv=_argv(obj.get("argv")),
        env=_env(obj.get("env")),
        files=_files(obj.get("files"), archived),
        stdin=b"" if stdin is None else _content(stdin, "stdin", plain=True),
        options=_options(obj.get("options")),
        limits=_capped_defaults(max_limits).merged(dict(overrides)),
        runner=_runner(obj.get("runner")),
        cache=cache is not False,
        limit_overrides=overrides,
    )
    size = len(spec.stdin) + sum(len(data) for _, data in spec.files)
    size += sum(len(item.encode()) for item in spec.argv)
    size += sum(len(key) + len(value.encode()) for key, value in spec.env)
    if size > MAX_INPUT_BYTES:
        raise WireError(413, "too_large", f"input is {size} bytes, over {MAX_INPUT_BYTES}")
    return spec


def parse_spec(obj: object, *, max_limits: Limits = MAX_LIMITS) -> RunSpec:
    """A RunSpec from decoded JSON; WireError (400/413/422) for anything unacceptable."""
    return _parse(obj, {}, max_limits)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def _decode_json(body: bytes, what: str) -> object:
    if len(body) > MAX_BODY_BYTES:
        raise WireError(413, "too_large", f"{what} is {len(body)} bytes, over {MAX_BODY_BYTES}")
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite_float)
    except UnicodeDecodeError:
        raise WireError(400, "bad_request", f"{what} is not UTF-8") from None
    except (ValueError, RecursionError) as e:
        raise WireError(400, "bad_request", f"{what} is not valid JSON: {e}") from None


def parse_spec_json(body: bytes, *, max_limits: Limits = MAX_LIMITS) -> RunSpec:
    return _parse(_decode_json(body, "the request body"), {}, max_limits)


def parse_spec_cpio(body: bytes, *, max_limits: Limits = MAX_LIMITS) -> RunSpec:
    """The cpio form: `spec.json` first, then the input files."""
    if len(body) > MAX_BODY_BYTES:
        raise WireError(413, "too_large", f"the request body is {len(body)} bytes, over {MAX_BODY_BYTES}")
    spec: object = None
    files: dict[str, bytes] = {}
    entries = iter_entries([body], max_entry_bytes=MAX_BODY_BYTES, max_entries=2 * MAX_FILES + 1)
    for entry in entries:
        if entry.is_dir:
            continue
        if not entry.is_file:
            raise CpioError(f"{entry.name!r}: input entries must be regular files or directories")
        if spec is None:
            if entry.name != "spec.json":
                raise CpioError(f"the first file must be spec.json, not {entry.name!r}")
            spec = _decode_json(entry.data, "spec.json")
            continue
        if entry.name in files:
            raise WireError(400, "bad_path", f"files: {entry.name!r} is in the archive twice")
        files[entry.name] = entry.data
    if spec is None:
        raise CpioError("the archive has no spec.json")
    return _parse(spec, files, max_limits)


def spec_to_cpio(spec: RunSpec) -> bytes:
    obj = spec.to_json()
    del obj["files"]
    head = file_entry("spec.json", json.dumps(obj, ensure_ascii=False).encode("utf-8"))
    return write_archive([head, *(file_entry(path, data) for path, data in spec.files)])


def request_hash(spec: RunSpec, *, image_digest: str, runner: str, outputs: Sequence[str] = ()) -> str:
    """The run id: see the module docstring for the encoding. `outputs` are the image's output globs,
    which decide which files a run returns."""
    doc: dict[str, object] = {
        "v": HASH_VERSION,
        "image": image_digest,
        "argv": list(spec.argv),
        "env": [list(pair) for pair in sorted(spec.env)],
        "stdin": hashlib.sha256(spec.stdin).hexdigest(),
        "files": [[path, hashlib.sha256(data).hexdigest()] for path, data in sorted(spec.files)],
        "limits": spec.limits.to_json(),
        "runner": runner,
    }
    if outputs:
        doc["outputs"] = sorted(outputs)
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()
