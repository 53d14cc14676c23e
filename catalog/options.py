"""Option values: checked against an entry's options schema, then expanded into its command's argv.

A command template is a list of items and groups (lists of items). In an item, `{name}` stands for
the value of option `name`. An item that is exactly `{name}` becomes the value as one argv item (a
bool option's `flag`; a text option with `split`: one item per whitespace-separated word); an item
with text around its placeholders becomes one item with the values put in. An item, or a whole
group, is left out when an option it names is false or the empty string, so `["-o", "{out}"]`
gives both items or neither. Values never pass through a shell: spaces, quotes and semicolons stay
inside their item. See docs/catalog.md for the schema.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from wire.errors import WireError
from wire.spec import OptionValue

if TYPE_CHECKING:
    from catalog.entry import CatalogEntry

PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# How far a float may be off the min + k * step grid and still count as on it.
STEP_TOLERANCE = 1e-9


class OptionError(WireError):
    """An option value the entry's schema refuses; the edge answers 422 `bad_option`."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(422, "bad_option", f"option {option!r}: {message}")
        self.option = option
        self.reason = message


def placeholders(item: str) -> list[str]:
    """The option names a template item refers to, in order."""
    return PLACEHOLDER_RE.findall(item)


def check_value(option: Mapping, value: object) -> OptionValue:
    """`value` if option accepts it (an integral float becomes an int for an integer option);
    OptionError otherwise."""
    name, kind = option["name"], option["type"]
    if kind == "choice":
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)  # `pe run --option segments=64` sends a JSON number
        if not isinstance(value, str) or value not in option["choices"]:
            raise OptionError(name, f"{value!r} is not one of {', '.join(map(repr, option['choices']))}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise OptionError(name, f"must be true or false, not {value!r}")
        return value
    if kind == "number":
        return _number(option, value)
    if not isinstance(value, str):
        raise OptionError(name, f"must be a string, not {value!r}")
    if len(value) > option["max_length"]:
        raise OptionError(name, f"is longer than {option['max_length']} characters")
    if value and "pattern" in option and not re.fullmatch(option["pattern"], value):
        raise OptionError(name, f"{value!r} does not match {option['pattern']}")
    return value


def _number(option: Mapping, value: object) -> int | float:
    name = option["name"]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise OptionError(name, f"must be a number, not {value!r}")
    if option["integer"]:
        if value != int(value):
            raise OptionError(name, f"must be a whole number, not {value!r}")
        value = int(value)
    low, high = option.get("min", -math.inf), option.get("max", math.inf)
    if not low <= value <= high:
        raise OptionError(name, f"{value!r} is not between {option.get('min')} and {option.get('max')}")
    if "step" in option:
        steps = (value - option.get("min", 0)) / option["step"]
        if abs(steps - round(steps)) > STEP_TOLERANCE:
            raise OptionError(
                name, f"{value!r} is not a multiple of {option['step']} from {option.get('min', 0)}"
            )
    return value


def option_values(entry: CatalogEntry, given: Mapping[str, object]) -> dict[str, OptionValue]:
    """Every option of `entry` with its value: the given one, checked, else the default."""
    schema = {option["name"]: option for option in entry.options}
    for name in given:
        if name not in schema:
            raise OptionError(
                name, f"image {entry.id!r} has no such option (options: {', '.join(schema) or 'none'})"
            )
    return {name: check_value(option, given.get(name, option["default"])) for name, option in schema.items()}


def expand_command(entry: CatalogEntry, values: Mapping[str, OptionValue]) -> tuple[str, ...]:
    """The entry's command template filled from `values` (as `option_values` returns them)."""
    schema = {option["name"]: option for option in entry.options}
    argv: list[str] = []
    for element in entry.command or ():
        group = (element,) if isinstance(element, str) else element
        names = [name for item in group for name in placeholders(item)]
        if any(values[name] is False or values[name] == "" for name in names):
            continue
        for item in group:
            names = placeholders(item)
            if len(names) == 1 and item == f"{{{names[0]}}}":
                argv += _whole(schema[names[0]], values[names[0]])
            else:
                argv.append(PLACEHOLDER_RE.sub(lambda match: str(values[match.group(1)]), item))
    return tuple(argv)


def _whole(option: Mapping, value: OptionValue) -> Sequence[str]:
    """The argv items of an option that is a whole template item."""
    if option["type"] == "bool":
        return [option["flag"]]
    if option.get("split"):
        return str(value).split()
    return [str(value)]
