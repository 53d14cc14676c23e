"""The argv a run executes: the spec's own, or the catalogue entry's command template filled from options.

A template item "{name}" becomes the option's value as one argv item (never shell text); an item
whose option is a false bool or an empty text is dropped.
"""

from __future__ import annotations

from api.errors import ApiError
from catalog.entry import CatalogEntry
from wire.spec import RunSpec


def _bad_option(message: str) -> ApiError:
    return ApiError(422, "bad_option", message)


def option_values(entry: CatalogEntry, spec: RunSpec) -> dict[str, object]:
    """The spec's options checked against the entry's schema, with defaults filled in."""
    schema = {option["name"]: option for option in entry.options}
    given = dict(spec.options)
    for name in given:
        if name not in schema:
            known = ", ".join(sorted(schema)) or "none"
            raise _bad_option(f"image {entry.id!r} has no option {name!r} (options: {known})")
    values: dict[str, object] = {}
    for name, option in schema.items():
        value = given.get(name, option.get("default"))
        _check_value(entry.id, option, value)
        values[name] = value
    return values


def _check_value(image_id: str, option: dict, value: object) -> None:
    name, kind = option["name"], option.get("type", "text")
    where = f"option {name!r} of image {image_id!r}"
    if kind == "bool" and not isinstance(value, bool):
        raise _bad_option(f"{where} must be true or false")
    if kind == "choice" and value not in option.get("choices", ()):
        raise _bad_option(f"{where} must be one of {option.get('choices', [])}")
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _bad_option(f"{where} must be a number")
        if ("min" in option and value < option["min"]) or ("max" in option and value > option["max"]):
            raise _bad_option(f"{where} must be between {option.get('min')} and {option.get('max')}")
    if kind == "text" and not isinstance(value, str):
        raise _bad_option(f"{where} must be text")


def build_argv(entry: CatalogEntry, spec: RunSpec) -> tuple[str, ...]:
    values = option_values(entry, spec)
    if spec.argv:
        return spec.argv
    if not entry.command:
        raise ApiError(422, "argv_required", f"image {entry.id!r} has no command template: give argv")
    argv: list[str] = []
    for item in entry.command:
        name = item[1:-1] if item.startswith("{") and item.endswith("}") else None
        if name is None:
            argv.append(item)
            continue
        value = values.get(name)
        if value is None or value is False or value == "":
            continue
        argv.append("true" if value is True else str(value))
    return tuple(argv)
