"""Catalogue entries: one TOML file per image in this folder, parsed and validated.

The format is described in docs/catalog.md. Every validation error is a `CatalogError` whose message
starts with the file and the dotted key at fault, e.g. `python3.toml: source.packages: …`.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CATALOG_DIR = Path(__file__).resolve().parent

ID_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
# A Debian package name, optionally pinned to a version ("pkg=1.2-3").
PACKAGE_RE = re.compile(r"[a-z0-9][a-z0-9+.-]*(=[A-Za-z0-9.+:~-]+)?")
OPTION_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
OPTION_TYPES = ("choice", "number", "bool", "text")
DEBIAN_VARIANTS = ("essential", "required", "minbase", "buildd", "important", "standard", "apt")
SOURCE_KINDS = ("busybox-static", "debian")

_MISSING: Any = object()


class CatalogError(Exception):
    """A catalogue file (or a request for an entry) is invalid; the message names the file and key."""

    def __init__(self, message: str, *, path: Path | None = None, key: str | None = None) -> None:
        self.path = path
        self.key = key
        self.reason = message
        where = ": ".join(str(part) for part in (path, key) if part is not None)
        super().__init__(f"{where}: {message}" if where else message)


@dataclass(frozen=True)
class CatalogEntry:
    id: str
    title: str
    description: str
    source: dict  # validated, defaults filled in; its canonical JSON is part of the build's input key
    command: tuple[str, ...] | None  # argv template; an item "{name}" is replaced by option `name`
    options: tuple[dict, ...]
    examples: tuple[dict, ...]
    path: Path
    tags: tuple[str, ...] = ()
    input_types: tuple[str, ...] = ()
    output_types: tuple[str, ...] = ()


def load_catalog(directory: Path = CATALOG_DIR) -> dict[str, CatalogEntry]:
    """Every `*.toml` in `directory`, by id (sorted)."""
    entries = [load_entry(path) for path in sorted(Path(directory).glob("*.toml"))]
    return {entry.id: entry for entry in entries}


def load_entry(path: Path) -> CatalogEntry:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise CatalogError(f"not valid TOML: {error}", path=path) from None
    except (OSError, UnicodeDecodeError) as error:
        raise CatalogError(f"cannot read: {error}", path=path) from None
    top = _Table(data, path)
    top.only(
        "id", "title", "description", "tags", "input_types", "output_types", "command",
        "source", "options", "examples",
    )  # fmt: skip
    image_id = top.text("id")
    if not ID_RE.fullmatch(image_id):
        raise top.error("id", f"{image_id!r} must match {ID_RE.pattern}")
    if image_id != path.stem:
        raise top.error("id", f"{image_id!r} must equal the file name without .toml ({path.stem!r})")
    options = tuple(_option(table) for table in top.tables("options"))
    names = [option["name"] for option in options]
    for index, name in enumerate(names):
        if name in names[:index]:
            raise top.error(f"options[{index}].name", f"duplicate option {name!r}")
    command = top.texts("command", None)
    if command is not None:
        if not command:
            raise top.error("command", "must not be empty (leave it out instead)")
        for item in command:
            name = _placeholder(item)
            if name is not None and name not in names:
                known = ", ".join(names) or "none"
                raise top.error("command", f"{item!r} names no option (options: {known})")
    return CatalogEntry(
        id=image_id,
        title=top.text("title"),
        description=top.text("description"),
        source=_source(top.table("source")),
        command=command,
        options=options,
        examples=tuple(_example(table, command, names) for table in top.tables("examples")),
        path=path,
        tags=top.texts("tags", ()),
        input_types=top.texts("input_types", ()),
        output_types=top.texts("output_types", ()),
    )


def _placeholder(item: str) -> str | None:
    """The option name of a template item "{name}", else None."""
    if len(item) > 2 and item[0] == "{" and item[-1] == "}" and OPTION_RE.fullmatch(item[1:-1]):
        return item[1:-1]
    return None


def _source(table: _Table) -> dict:
    kind = table.text("kind")
    if kind == "busybox-static":
        table.only("kind")
        return {"kind": kind}
    if kind == "debian":
        table.only("kind", "suite", "variant", "packages", "mirror")
        source: dict[str, Any] = {"kind": kind, "suite": table.text("suite")}
        source["variant"] = table.text("variant", "minbase")
        if source["variant"] not in DEBIAN_VARIANTS:
            raise table.error("variant", f"must be one of {', '.join(DEBIAN_VARIANTS)}")
        source["packages"] = list(table.texts("packages", ()))
        for package in source["packages"]:
            if not PACKAGE_RE.fullmatch(package):
                raise table.error("packages", f"{package!r} is not a Debian package name")
        mirror = table.text("mirror", None)
        if mirror is not None:
            source["mirror"] = mirror
        return source
    raise table.error("kind", f"unknown source kind {kind!r} (known: {', '.join(SOURCE_KINDS)})")


def _option(table: _Table) -> dict:
    table.only("name", "type", "label", "default", "choices", "min", "max")
    name = table.text("name")
    if not OPTION_RE.fullmatch(name):
        raise table.error("name", f"{name!r} must match {OPTION_RE.pattern}")
    kind = table.text("type")
    option: dict[str, Any] = {"name": name, "type": kind, "label": table.text("label", name)}
    if kind == "choice":
        choices = list(table.texts("choices"))
        if not choices:
            raise table.error("choices", "must not be empty")
        option["choices"] = choices
        option["default"] = table.text("default", choices[0])
        if option["default"] not in choices:
            raise table.error("default", f"{option['default']!r} is not one of the choices")
    elif kind == "number":
        for bound in ("min", "max"):
            value = table.number(bound, None)
            if value is not None:
                option[bound] = value
        option["default"] = table.number("default", option.get("min", 0))
        low, high = option.get("min", option["default"]), option.get("max", option["default"])
        if not low <= option["default"] <= high:
            raise table.error("default", "must lie between min and max")
    elif kind == "bool":
        option["default"] = table.get("default", bool, False, "true or false")
    elif kind == "text":
        option["default"] = table.text("default", "")
    else:
        raise table.error("type", f"must be one of {', '.join(OPTION_TYPES)}")
    return option


def _example(table: _Table, command: tuple[str, ...] | None, option_names: list[str]) -> dict:
    table.only("name", "argv", "files", "stdin", "options", "stdout")
    example: dict[str, Any] = {"name": table.text("name")}
    argv = table.texts("argv", None)
    if argv is not None:
        if not argv:
            raise table.error("argv", "must not be empty")
        example["argv"] = list(argv)
    elif command is None:
        raise table.error("argv", "is required when the entry has no command template")
    files = table.table("files", {})
    example["files"] = {}
    for name in files.data:
        if not _relative_path_ok(name):
            raise files.error(name, "file names must be relative paths without '..', '.' or empty parts")
        example["files"][name] = files.text(name)
    options = table.table("options", {})
    for name, value in options.data.items():
        if name not in option_names:
            raise options.error(name, f"names no option of this entry ({', '.join(option_names) or 'none'})")
        if not isinstance(value, str | int | float | bool):
            raise options.error(name, "must be a string, number or boolean")
    if options.data:
        example["options"] = dict(options.data)
    for key in ("stdin", "stdout"):
        value = table.text(key, None)
        if value is not None:
            example[key] = value
    return example


def _relative_path_ok(name: str) -> bool:
    parts = name.split("/")
    return "\0" not in name and all(part not in ("", ".", "..") for part in parts)


class _Table:
    """Typed access to one TOML table; every error names the file and the dotted key."""

    def __init__(self, data: dict, path: Path, prefix: str = "") -> None:
        self.data = data
        self.path = path
        self.prefix = prefix

    def error(self, key: str, message: str) -> CatalogError:
        return CatalogError(message, path=self.path, key=self.prefix + key)

    def only(self, *allowed: str) -> None:
        for key in self.data:
            if key not in allowed:
                raise self.error(key, f"unknown key (allowed here: {', '.join(allowed)})")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any, what: str) -> Any:
        if key not in self.data:
            if default is _MISSING:
                raise self.error(key, "is required")
            return default
        value = self.data[key]
        # bool is an int subclass: never accept it where a number or string is asked for.
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
            raise self.error(key, f"must be {what}, not {type(value).__name__}")
        return value

    def text(self, key: str, default: Any = _MISSING) -> Any:
        return self.get(key, str, default, "a string")

    def number(self, key: str, default: Any = _MISSING) -> Any:
        return self.get(key, (int, float), default, "a number")

    def texts(self, key: str, default: Any = _MISSING) -> Any:
        if key not in self.data and default is not _MISSING:
            return default
        value = self.get(key, list, default, "a list of strings")
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(f"{key}[{index}]", f"must be a string, not {type(item).__name__}")
        return tuple(value)

    def table(self, key: str, default: Any = _MISSING) -> _Table:
        value = self.get(key, dict, default, "a table")
        return _Table(value, self.path, f"{self.prefix}{key}.")

    def tables(self, key: str) -> list[_Table]:
        value = self.get(key, list, [], "an array of tables ([[...]])")
        tables = []
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                raise self.error(f"{key}[{index}]", "must be a table")
            tables.append(_Table(item, self.path, f"{self.prefix}{key}[{index}]."))
        return tables


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)
