from __future__ import annotations

from pathlib import Path

import pytest

from catalog.entry import CATALOG_DIR, CatalogEntry, CatalogError, load_catalog, load_entry

GOOD = """
id = "tool"
title = "Tool"
description = "A tool."
command = ["tool", "{level}", "main.txt"]

[source]
kind = "debian"
suite = "bookworm"
packages = ["tool"]

[[options]]
name = "level"
type = "choice"
choices = ["-1", "-2"]

[[examples]]
name = "default"
files = { "main.txt" = "x" }
stdout = "x\\n"
"""


def write(tmp_path: Path, text: str, name: str = "tool") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def test_the_shipped_catalogue_loads() -> None:
    catalog = load_catalog()
    assert {"busybox", "python3"} <= set(catalog)
    busybox = catalog["busybox"]
    assert isinstance(busybox, CatalogEntry)
    assert busybox.source == {"kind": "busybox-static"}
    assert busybox.path == CATALOG_DIR / "busybox.toml"
    assert any(
        example["argv"] == ["sh", "-c", "echo hello"] for example in busybox.examples if "argv" in example
    )
    python3 = catalog["python3"]
    assert python3.source["kind"] == "debian" and python3.source["suite"] == "bookworm"
    assert python3.command == ("python3", "{optimize}", "main.py")
    for entry in catalog.values():
        assert entry.title and entry.description and entry.tags and entry.examples
        assert all("stdout" in example for example in entry.examples)


def test_defaults_are_filled_in(tmp_path: Path) -> None:
    entry = load_entry(write(tmp_path, GOOD))
    assert entry.source == {"kind": "debian", "suite": "bookworm", "variant": "minbase", "packages": ["tool"]}
    assert entry.options == ({"name": "level", "type": "choice", "label": "level", "choices": ["-1", "-2"],
                              "default": "-1"},)  # fmt: skip
    assert entry.examples == ({"name": "default", "files": {"main.txt": "x"}, "stdout": "x\n"},)
    assert entry.tags == () and entry.input_types == ()


@pytest.mark.parametrize(
    ("change", "key", "words"),
    [
        (('title = "Tool"', ""), "title", "is required"),
        (('title = "Tool"', "title = 3"), "title", "must be a string, not int"),
        (('id = "tool"', 'id = "other"'), "id", "file name"),
        (('id = "tool"', 'id = "Bad/Id"'), "id", "must match"),
        (('title = "Tool"', 'title = "Tool"\ncolour = "red"'), "colour", "unknown key"),
        (('kind = "debian"', 'kind = "rpm"'), "source.kind", "unknown source kind"),
        (('packages = ["tool"]', 'packages = "tool"'), "source.packages", "must be a list of strings"),
        (('packages = ["tool"]', 'packages = ["tool", 3]'), "source.packages[1]", "must be a string"),
        (('packages = ["tool"]', 'packages = ["tool; rm -rf /"]'), "source.packages", "not a Debian package"),
        (('suite = "bookworm"', 'suite = "bookworm"\nvariant = "huge"'), "source.variant", "must be one of"),
        (('type = "choice"', 'type = "colour"'), "options[0].type", "must be one of"),
        (('choices = ["-1", "-2"]', 'choices = ["-1"]\ndefault = "-3"'), "options[0].default", "not one of"),
        (('"{level}"', '"{speed}"'), "command", "names no option"),
        (('command = ["tool", "{level}", "main.txt"]', ""), "examples[0].argv", "required"),
        (('"main.txt" = "x"', '"../main.txt" = "x"'), "examples[0].files.../main.txt", "relative"),
        (('stdout = "x\\n"', "stdout = 1"), "examples[0].stdout", "must be a string"),
        (('stdout = "x\\n"', 'options = { speed = "1" }'), "examples[0].options.speed", "names no option"),
    ],
)
def test_errors_name_the_file_and_the_key(
    tmp_path: Path, change: tuple[str, str], key: str, words: str
) -> None:
    old, new = change
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(CatalogError) as caught:
        load_entry(path)
    assert caught.value.path == path and caught.value.key == key
    assert str(caught.value).startswith(f"{path}: {key}: ")
    assert words in str(caught.value)


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'id = "tool"\ntitle = \n')
    with pytest.raises(CatalogError, match="not valid TOML") as caught:
        load_entry(path)
    assert str(path) in str(caught.value)


def test_number_options_reject_booleans_and_check_bounds(tmp_path: Path) -> None:
    number = GOOD.replace('type = "choice"\nchoices = ["-1", "-2"]', 'type = "number"\nmin = 0\nmax = 3')
    assert load_entry(write(tmp_path, number)).options[0]["default"] == 0
    with pytest.raises(CatalogError, match=r"options\[0\]\.max: must be a number, not bool"):
        load_entry(write(tmp_path, number.replace("max = 3", "max = true")))
    with pytest.raises(CatalogError, match=r"options\[0\]\.default: must lie between"):
        load_entry(write(tmp_path, number.replace("max = 3", "max = 3\ndefault = 4")))


def test_load_catalog_reads_every_toml_in_a_folder(tmp_path: Path) -> None:
    write(tmp_path, GOOD)
    write(tmp_path, GOOD.replace('id = "tool"', 'id = "tool2"'), "tool2")
    (tmp_path / "notes.txt").write_text("not an entry")
    assert list(load_catalog(tmp_path)) == ["tool", "tool2"]
