"""Catalogue entries: one TOML file per image in this folder, parsed and validated.

The format is described in docs/catalog.md. Every validation error is a `CatalogError` whose message
starts with the file and the dotted key at fault, e.g. `python3.toml: source.packages: …`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catalog.options import OptionError, check_value, placeholders
from wire.errors import WireError
from wire.paths import glob_matcher, normalize_path
from wire.spec import DEFAULT_LIMITS, MAX_LIMITS

CATALOG_DIR = Path(__file__).resolve().parent

ID_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
# A Debian package name, optionally pinned to a version ("pkg=1.2-3").
PACKAGE_RE = re.compile(r"[a-z0-9][a-z0-9+.-]*(=[A-Za-z0-9.+:~-]+)?")
OPTION_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
OPTION_TYPES = ("choice", "number", "bool", "text")
MIME_RE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*")
URL_RE = re.compile(r"https?://[^\s/$.?#][^\s]*")
VIEWERS = ("text", "hex", "image", "svg", "3d", "html", "table")
STREAMS = ("stdout", "stderr")  # what `view.first` may name besides an output file glob
TEXT_MAX_LENGTH = 256  # a text option's default max_length
DEBIAN_VARIANTS = ("essential", "required", "minbase", "buildd", "important", "standard", "apt")
SOURCE_KINDS = ("busybox-static", "debian", "oci")

_MISSING: Any = object()
# A command template: items, and groups of items that are left out together (catalog/options.py).
Command = tuple[str | tuple[str, ...], ...]


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
    command: Command | None  # argv template: see catalog/options.py
    options: tuple[dict, ...]  # validated, defaults filled in (the forms in docs/catalog.md)
    examples: tuple[dict, ...]
    path: Path
    tags: tuple[str, ...] = ()
    input_types: tuple[str, ...] = ()
    output_types: tuple[str, ...] = ()
    homepage: str | None = None
    files: dict[str, str] = dataclasses.field(default_factory=dict)  # what the playground starts with
    limits: dict[str, int] = dataclasses.field(default_factory=dict)  # this image's default limits
    outputs: tuple[str, ...] = ()  # globs of the output files returned; all when empty
    # Viewer hints: {"first": an output glob or "stdout"/"stderr", "viewers": {glob: viewer}}.
    view: dict = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        """The public form (GET /api/v1/catalog, without the image's digest and size)."""
        return {
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "homepage": self.homepage,
            "tags": list(self.tags),
            "input_types": list(self.input_types),
            "output_types": list(self.output_types),
            "source": dict(self.source),
            "command": [item if isinstance(item, str) else list(item) for item in self.command or ()] or None,
            "options": [dict(option) for option in self.options],
            "files": dict(self.files),
            "examples": [dict(example) for example in self.examples],
            "limits": DEFAULT_LIMITS.merged(self.limits).to_json(),
            "outputs": list(self.outputs),
            "view": dict(self.view),
        }


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
        "id", "title", "description", "homepage", "tags", "input_types", "output_types", "command",
        "source", "options", "files", "examples", "view", "limits", "outputs",
    )  # fmt: skip
    image_id = top.text("id")
    if not ID_RE.fullmatch(image_id):
        raise top.error("id", f"{image_id!r} must match {ID_RE.pattern}")
    if image_id != path.stem:
        raise top.error("id", f"{image_id!r} must equal the file name without .toml ({path.stem!r})")
    homepage = top.text("homepage", None)
    if homepage is not None and not URL_RE.fullmatch(homepage):
        raise top.error("homepage", f"{homepage!r} is not an http(s) URL")
    options = tuple(_option(table) for table in top.tables("options"))
    names = [option["name"] for option in options]
    for index, name in enumerate(names):
        if name in names[:index]:
            raise top.error(f"options[{index}].name", f"duplicate option {name!r}")
    schema = dict(zip(names, options, strict=True))
    command = _command(top, schema) if "command" in top.data else None
    outputs = _globs(top, "outputs")
    examples = tuple(
        _example(table, command, schema, glob_matcher(outputs)) for table in top.tables("examples")
    )
    # The files the playground starts with; when not given, the first example's.
    first_files = examples[0]["files"] if examples else {}
    files = _files(top.table("files")) if "files" in top.data else dict(first_files)
    return CatalogEntry(
        id=image_id,
        title=top.text("title"),
        description=top.text("description"),
        source=_source(top.table("source")),
        command=command,
        options=options,
        examples=examples,
        path=path,
        tags=top.texts("tags", ()),
        input_types=_mime_types(top, "input_types"),
        output_types=_mime_types(top, "output_types"),
        homepage=homepage,
        files=files,
        limits=_limits(top.table("limits", {})),
        outputs=outputs,
        view=_view(top.table("view", {})),
    )


def _command(top: _Table, schema: dict[str, dict]) -> Command:
    """The template: strings and non-empty lists of strings, whose placeholders name options; a
    bool or split text option may only be a whole item, `{name}`."""
    elements = top.get("command", list, None, "a list of strings and lists of strings")
    if not elements:
        raise top.error("command", "must not be empty (leave it out instead)")
    command: list[str | tuple[str, ...]] = []
    for index, element in enumerate(elements):
        key = f"command[{index}]"
        if isinstance(element, str):
            group: tuple[str, ...] = (element,)
            command.append(element)
        elif isinstance(element, list) and element and all(isinstance(item, str) for item in element):
            group = tuple(element)
            command.append(group)
        else:
            raise top.error(key, "must be a string or a non-empty list of strings")
        for item in group:
            for name in placeholders(item):
                option = schema.get(name)
                if option is None:
                    known = ", ".join(schema) or "none"
                    raise top.error(key, f"{item!r} names no option (options: {known})")
                if item != f"{{{name}}}" and (option["type"] == "bool" or option.get("split")):
                    what = "a bool option" if option["type"] == "bool" else "a split text option"
                    raise top.error(key, f"{item!r}: {what} must be a whole item, {{{name}}}")
    return tuple(command)


def _source(table: _Table) -> dict:
    kind = table.text("kind")
    if kind == "busybox-static":
        table.only("kind")
        return {"kind": kind}
    if kind == "debian":
        table.only("kind", "suite", "variant", "packages", "mirror", "post_install")
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
        post_install = list(table.texts("post_install", ()))
        if post_install:  # only when given, so the input key of entries without it stays the same
            source["post_install"] = post_install
        return source
    if kind == "oci":
        return _oci_source(table)
    raise table.error("kind", f"unknown source kind {kind!r} (known: {', '.join(SOURCE_KINDS)})")


def _oci_source(table: _Table) -> dict:
    """An OCI image layout directory (with an optional ref) or an OCI / docker-save archive; paths
    relative to the TOML file or absolute (catalog/oci.py reads them)."""
    table.only("kind", "layout", "archive", "ref")
    given = [key for key in ("layout", "archive") if key in table.data]
    if len(given) != 1:
        raise table.error("layout", "give exactly one of layout (a directory) or archive (a tar file)")
    source = {"kind": "oci", given[0]: table.text(given[0])}
    ref = table.text("ref", None)
    for key, value in ((given[0], source[given[0]]), ("ref", ref)):
        if value == "" or (value is not None and "\0" in value):
            raise table.error(key, "must be a non-empty string without NUL")
    if ref is not None:
        source["ref"] = ref
    return source


def _option(table: _Table) -> dict:
    name = table.text("name")
    if not OPTION_RE.fullmatch(name):
        raise table.error("name", f"{name!r} must match {OPTION_RE.pattern}")
    kind = table.text("type")
    option: dict[str, Any] = {"name": name, "type": kind, "label": table.text("label", name)}
    help_text = table.text("help", None)
    if help_text is not None:
        option["help"] = help_text
    common = ("name", "type", "label", "help", "default")
    if kind == "choice":
        table.only(*common, "choices")
        option["choices"] = list(table.texts("choices"))
        if not option["choices"]:
            raise table.error("choices", "must not be empty")
        default = table.text("default", option["choices"][0])
    elif kind == "number":
        table.only(*common, "min", "max", "step")
        for key in ("min", "max", "step"):
            value = table.number(key, None)
            if value is not None:
                option[key] = value
        if option.get("step", 1) <= 0:
            raise table.error("step", "must be positive")
        if option.get("min", -math.inf) > option.get("max", math.inf):
            raise table.error("max", "must not be below min")
        default = table.number("default", option.get("min", 0))
        # Whole numbers only, unless the default, a bound or the step is written as a float.
        numbers = [default, *(option[key] for key in ("min", "max", "step") if key in option)]
        option["integer"] = all(isinstance(number, int) for number in numbers)
    elif kind == "bool":
        table.only(*common, "flag")
        option["flag"] = table.text("flag")
        if not option["flag"]:
            raise table.error("flag", "must not be empty")
        default = table.get("default", bool, False, "true or false")
    elif kind == "text":
        table.only(*common, "pattern", "max_length", "split")
        pattern = table.text("pattern", None)
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as error:
                raise table.error("pattern", f"is not a regular expression: {error}") from None
            option["pattern"] = pattern
        option["max_length"] = table.get("max_length", int, TEXT_MAX_LENGTH, "an integer")
        if option["max_length"] <= 0:
            raise table.error("max_length", "must be positive")
        option["split"] = table.get("split", bool, False, "true or false")
        default = table.text("default", "")
    else:
        raise table.error("type", f"must be one of {', '.join(OPTION_TYPES)}")
    try:
        option["default"] = check_value(option, default)
    except OptionError as error:
        raise table.error("default", error.reason) from None
    return option


def _example(
    table: _Table, command: Command | None, schema: dict[str, dict], wanted: Callable[[str], bool]
) -> dict:
    table.only("name", "argv", "files", "stdin", "options", "stdout", "outputs")
    example: dict[str, Any] = {"name": table.text("name")}
    argv = table.texts("argv", None)
    if argv is not None:
        if not argv:
            raise table.error("argv", "must not be empty")
        example["argv"] = list(argv)
    elif command is None:
        raise table.error("argv", "is required when the entry has no command template")
    example["files"] = _files(table.table("files", {}))
    options = table.table("options", {})
    for name, value in options.data.items():
        if name not in schema:
            raise options.error(name, f"names no option of this entry ({', '.join(schema) or 'none'})")
        try:
            check_value(schema[name], value)
        except OptionError as error:
            raise options.error(name, error.reason) from None
    if options.data:
        example["options"] = dict(options.data)
    for key in ("stdin", "stdout"):
        value = table.text(key, None)
        if value is not None:
            example[key] = value
    outputs = table.table("outputs", {})
    for name in outputs.data:
        _path(outputs, name)
        if not wanted(name):
            raise outputs.error(name, "does not match the entry's outputs globs, so it is never returned")
        if not MIME_RE.fullmatch(outputs.text(name)):
            raise outputs.error(name, f"{outputs.data[name]!r} is not a MIME type (type/subtype)")
    if outputs.data:
        example["outputs"] = dict(outputs.data)
    return example


def _files(table: _Table) -> dict[str, str]:
    """A table of relative paths → text contents."""
    return {_path(table, name): table.text(name) for name in table.data}


def _path(table: _Table, name: str) -> str:
    """`name` if it is a relative, normal path (no "..", "." or empty parts)."""
    try:
        if normalize_path(name) == name:
            return name
    except WireError:
        pass
    raise table.error(name, "file names must be relative paths without '..', '.' or empty parts")


def _globs(table: _Table, key: str) -> tuple[str, ...]:
    globs = table.texts(key, ())
    for index, glob in enumerate(globs):
        _glob(table, f"{key}[{index}]", glob)
    return globs


def _glob(table: _Table, key: str, glob: str) -> str:
    """`glob` if it is a relative path glob (see wire.paths.glob_regex) without '..'."""
    if not glob or glob.startswith("/") or ".." in glob.split("/"):
        raise table.error(key, f"{glob!r} must be a relative path glob without '..'")
    return glob


def _mime_types(table: _Table, key: str) -> tuple[str, ...]:
    types = table.texts(key, ())
    for index, mime in enumerate(types):
        if not MIME_RE.fullmatch(mime):
            raise table.error(f"{key}[{index}]", f"{mime!r} is not a MIME type (type/subtype)")
    return types


def _limits(table: _Table) -> dict[str, int]:
    """Limit overrides: names of wire.spec.Limits, each a positive integer within MAX_LIMITS."""
    table.only(*MAX_LIMITS.to_json())
    limits = {}
    for name, maximum in MAX_LIMITS.to_json().items():
        value = table.get(name, int, None, "an integer")
        if value is None:
            continue
        if not 0 < value <= maximum:
            raise table.error(name, f"{value} is not in 1..{maximum} (the service maximum)")
        limits[name] = value
    return limits


def _view(table: _Table) -> dict:
    """Viewer hints: which output is shown first, and viewers chosen by glob (first match wins)."""
    table.only("first", "viewers")
    view: dict[str, Any] = {}
    first = table.text("first", None)
    if first is not None:
        view["first"] = first if first in STREAMS else _glob(table, "first", first)
    viewers = table.table("viewers", {})
    for glob in viewers.data:
        viewer = viewers.text(glob)
        if viewer not in VIEWERS:
            raise viewers.error(glob, f"{viewer!r} is not a viewer (viewers: {', '.join(VIEWERS)})")
        view.setdefault("viewers", {})[_glob(viewers, glob, glob)] = viewer
    return view


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
