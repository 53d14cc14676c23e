"""`pe.toml`: the run settings a gist carries beside its files (docs/gists.md).

```toml
image = "gcc"                  # catalogue id, optionally pinned: "gcc@sha256:<hex>"
command = "gcc -O2 main.c"     # split like a shell would (no shell runs it); or argv = ["gcc", ...]
stdin = "some input"
open = ["main.c"]              # the file the playground shows (the first of the list)
[env]
NAME = "value"
[options]                      # the image's options (catalogue schema)
std = "c17"
[limits]                       # in the API's units: wall_ms, memory_mib, pids, *_bytes
wall_ms = 2000
```

This module checks the shape (keys, types, limit bounds) with the standard library only, so it also runs
in Pyodide; the edge then checks the image and the option values against the catalogue (api/gists.py).
Every error names the key at fault: `pe.toml: options.std: must be …`.
"""

from __future__ import annotations

import shlex
import tomllib
from dataclasses import dataclass, field, fields

from wire.errors import WireError
from wire.spec import _ENV_KEY, _IMAGE, MAX_LIMITS, Limits, OptionValue

FILE_NAME = "pe.toml"
KEYS = ("image", "command", "argv", "env", "stdin", "options", "limits", "open")


class PeTomlError(WireError):
    """A pe.toml the edge refuses: 422 `bad_pe_toml`; `key` is the dotted key at fault ("" for syntax)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(
            422, "bad_pe_toml", f"{FILE_NAME}: {key}: {message}" if key else f"{FILE_NAME}: {message}"
        )
        self.key = key


@dataclass(frozen=True)
class GistConfig:
    """A checked pe.toml. Absent keys stay empty: the playground keeps the image's defaults for them."""

    image: str = ""
    argv: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    stdin: str = ""
    options: dict[str, OptionValue] = field(default_factory=dict)
    limits: dict[str, int] = field(default_factory=dict)
    open: tuple[str, ...] = ()

    def to_json(self) -> dict:
        """The keys that were given, as JSON (argv always as a list, never `command`)."""
        values = {
            "image": self.image,
            "argv": list(self.argv),
            "env": self.env,
            "stdin": self.stdin,
            "options": self.options,
            "limits": self.limits,
            "open": list(self.open),
        }
        return {key: value for key, value in values.items() if value}


def parse_pe_toml(text: str) -> GistConfig:
    """The checked contents of a pe.toml, or PeTomlError naming the key at fault."""
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise PeTomlError("", f"not valid TOML: {error}") from None
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise PeTomlError(unknown[0], f"unknown key (known: {', '.join(KEYS)})")
    if "command" in table and "argv" in table:
        raise PeTomlError("command", "give command or argv, not both")
    image = _string(table, "image")
    if image and not _IMAGE.fullmatch(image):
        raise PeTomlError("image", f"{image!r} is not an image id (like gcc, or gcc@sha256:<64 hex>)")
    return GistConfig(
        image=image,
        argv=_argv(table),
        env=_env(table.get("env", {})),
        stdin=_string(table, "stdin"),
        options=_options(table.get("options", {})),
        limits=_limits(table.get("limits", {})),
        open=_strings(table.get("open", []), "open"),
    )


def _string(table: dict, key: str) -> str:
    value = table.get(key, "")
    if not isinstance(value, str):
        raise PeTomlError(key, f"must be a string, not {_kind(value)}")
    return value


def _strings(value: object, key: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise PeTomlError(key, f"must be a list of strings, not {_kind(value)}")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise PeTomlError(f"{key}[{index}]", f"must be a string, not {_kind(item)}")
    return tuple(value)


def _argv(table: dict) -> tuple[str, ...]:
    if "argv" in table:
        return _strings(table["argv"], "argv")
    command = _string(table, "command")
    try:
        return tuple(shlex.split(command))
    except ValueError as error:  # an unclosed quote
        raise PeTomlError("command", f"cannot be split into arguments: {error}") from None


def _table(value: object, key: str) -> dict:
    if not isinstance(value, dict):
        raise PeTomlError(key, f"must be a table, not {_kind(value)}")
    return value


def _env(value: object) -> dict[str, str]:
    env = _table(value, "env")
    for name, item in env.items():
        if not _ENV_KEY.fullmatch(name):
            raise PeTomlError(f"env.{name}", "is not a variable name (letters, digits, _; not first a digit)")
        if not isinstance(item, str):
            raise PeTomlError(f"env.{name}", f"must be a string, not {_kind(item)}")
    return env


def _options(value: object) -> dict[str, OptionValue]:
    options = _table(value, "options")
    for name, item in options.items():
        if not isinstance(item, str | int | float | bool):
            raise PeTomlError(f"options.{name}", f"must be a string, number or boolean, not {_kind(item)}")
    return options


def _limits(value: object) -> dict[str, int]:
    limits = _table(value, "limits")
    known = [item.name for item in fields(Limits)]
    for name, item in limits.items():
        if name not in known:
            raise PeTomlError(f"limits.{name}", f"unknown limit (known: {', '.join(known)})")
        if isinstance(item, bool) or not isinstance(item, int):
            raise PeTomlError(f"limits.{name}", f"must be a whole number, not {_kind(item)}")
        maximum = getattr(MAX_LIMITS, name)
        if not 1 <= item <= maximum:
            raise PeTomlError(f"limits.{name}", f"{item} is not in 1..{maximum}")
    return limits


def _kind(value: object) -> str:
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list"}
    return kinds.get(type(value), "a table" if isinstance(value, dict) else type(value).__name__)
