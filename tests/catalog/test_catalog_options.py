"""Option values against an entry's schema, and the command template they fill."""

from __future__ import annotations

from pathlib import Path

import pytest

from catalog.entry import CatalogEntry, load_entry
from catalog.options import OptionError, expand_command, option_values

ENTRY = """
id = "tool"
title = "Tool"
description = "A tool."
command = [
    "tool", "{level}", "-O{opt}", ["--scale", "{scale}"], "{verbose}", ["--name", "{name}"],
    "{flags}", "--size={width}x{height}", "main.txt",
]

[source]
kind = "busybox-static"

[[options]]
name = "level"
type = "choice"
choices = ["", "-1", "-2"]

[[options]]
name = "opt"
type = "number"
min = 0
max = 3
default = 2

[[options]]
name = "scale"
type = "number"
min = 0.5
max = 2.0
step = 0.25
default = 1.0

[[options]]
name = "verbose"
type = "bool"
flag = "--verbose"

[[options]]
name = "name"
type = "text"
pattern = '[a-z ;$`]+'
max_length = 20

[[options]]
name = "flags"
type = "text"
split = true

[[options]]
name = "width"
type = "number"
min = 1
max = 4000
step = 10
default = 641

[[options]]
name = "height"
type = "number"
default = 480
"""


@pytest.fixture(scope="module")
def entry(tmp_path_factory: pytest.TempPathFactory) -> CatalogEntry:
    path = tmp_path_factory.mktemp("catalog") / "tool.toml"
    path.write_text(ENTRY)
    return load_entry(path)


def argv(entry: CatalogEntry, **given: object) -> tuple[str, ...]:
    return expand_command(entry, option_values(entry, given))


def test_defaults(entry: CatalogEntry) -> None:
    assert option_values(entry, {}) == {
        "level": "", "opt": 2, "scale": 1.0, "verbose": False, "name": "", "flags": "", "width": 641,
        "height": 480,
    }  # fmt: skip
    assert argv(entry) == ("tool", "-O2", "--scale", "1.0", "--size=641x480", "main.txt")


def test_number_types_come_from_the_schema(entry: CatalogEntry) -> None:
    options = {option["name"]: option for option in entry.options}
    assert options["opt"]["integer"] and options["width"]["integer"] and options["height"]["integer"]
    assert not options["scale"]["integer"]


def test_every_type_fills_its_items(entry: CatalogEntry) -> None:
    assert argv(entry, level="-1", opt=0, scale=1.75, verbose=True, name="x", flags="-a  -b", width=11) == (
        "tool", "-1", "-O0", "--scale", "1.75", "--verbose", "--name", "x", "-a", "-b", "--size=11x480",
        "main.txt",
    )  # fmt: skip


def test_a_number_given_for_a_choice_is_its_text(entry: CatalogEntry, tmp_path: Path) -> None:
    path = tmp_path / "tool.toml"
    path.write_text(ENTRY.replace('choices = ["", "-1", "-2"]', 'choices = ["", "1", "2"]'))
    assert option_values(load_entry(path), {"level": 2})["level"] == "2"


def test_an_integral_float_counts_as_an_integer(entry: CatalogEntry) -> None:
    assert option_values(entry, {"opt": 3.0})["opt"] == 3
    assert argv(entry, opt=3.0)[1] == "-O3"


def test_values_never_become_shell_text(entry: CatalogEntry) -> None:
    """A value with spaces, semicolons and $ stays one argv item, as given."""
    assert argv(entry, name="a b; rm $x `y`")[4:6] == ("--name", "a b; rm $x `y`")


def test_split_text_splits_at_whitespace_only(entry: CatalogEntry) -> None:
    assert argv(entry, flags="-D'a b' \t-x;y")[4:7] == ("-D'a", "b'", "-x;y")


def test_a_false_or_empty_value_drops_its_item_or_group(entry: CatalogEntry) -> None:
    full = argv(entry, name="n", verbose=True)
    assert "--name" in full and "--verbose" in full
    assert "--name" not in argv(entry, name="") and "--verbose" not in argv(entry, verbose=False)


@pytest.mark.parametrize(
    ("given", "option", "words"),
    [
        ({"level": "-3"}, "level", "is not one of"),
        ({"level": 1}, "level", "is not one of"),
        ({"level": True}, "level", "is not one of"),
        ({"opt": 4}, "opt", "is not between 0 and 3"),
        ({"opt": -1}, "opt", "is not between 0 and 3"),
        ({"opt": 1.5}, "opt", "must be a whole number"),
        ({"opt": True}, "opt", "must be a number"),
        ({"opt": "2"}, "opt", "must be a number"),
        ({"scale": 0.6}, "scale", "not a multiple of 0.25 from 0.5"),
        ({"scale": 2.25}, "scale", "is not between"),
        ({"width": 20}, "width", "not a multiple of 10 from 1"),
        ({"verbose": 1}, "verbose", "must be true or false"),
        ({"verbose": "true"}, "verbose", "must be true or false"),
        ({"name": "Upper"}, "name", "does not match"),
        ({"name": "x" * 21}, "name", "longer than 20"),
        ({"name": 3}, "name", "must be a string"),
        ({"flags": "x" * 257}, "flags", "longer than 256"),
        ({"colour": "red"}, "colour", "has no such option"),
    ],
)
def test_bad_values_name_the_option(entry: CatalogEntry, given: dict, option: str, words: str) -> None:
    with pytest.raises(OptionError, match=words) as caught:
        option_values(entry, given)
    assert caught.value.option == option
    assert (caught.value.status, caught.value.code) == (422, "bad_option")
    assert caught.value.message.startswith(f"option {option!r}: ")


def test_the_empty_text_is_accepted_whatever_the_pattern(entry: CatalogEntry) -> None:
    assert option_values(entry, {"name": ""})["name"] == ""


def test_an_entry_without_options_or_command(tmp_path: Path) -> None:
    path = tmp_path / "bare.toml"
    path.write_text('id = "bare"\ntitle = "B"\ndescription = "B"\n[source]\nkind = "busybox-static"\n')
    bare = load_entry(path)
    assert option_values(bare, {}) == {} and expand_command(bare, {}) == ()
    with pytest.raises(OptionError, match=r"options: none"):
        option_values(bare, {"x": 1})
