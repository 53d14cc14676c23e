from __future__ import annotations

import json
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

[[options]]
name = "verbose"
type = "bool"
flag = "-v"

[[options]]
name = "extra"
type = "text"
split = true

[[examples]]
name = "default"
files = { "main.txt" = "x" }
stdout = "x\\n"
"""


CHOICE = 'type = "choice"\nchoices = ["-1", "-2"]'


def write(tmp_path: Path, text: str, name: str = "tool") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def test_the_shipped_catalogue_loads() -> None:
    catalog = load_catalog()
    starters = {
        "busybox",
        "python3",
        "gcc",
        "gpp",
        "graphviz",
        "openscad",
        "imagemagick",
        "gnuplot",
        "pandoc",
    }
    assert starters | {"sqlite3"} <= set(catalog)
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
        assert entry.source["kind"] == "busybox-static" or entry.source["variant"] == "essential"
        json.dumps(entry.to_json())


def test_defaults_are_filled_in(tmp_path: Path) -> None:
    entry = load_entry(write(tmp_path, GOOD))
    assert entry.source == {"kind": "debian", "suite": "bookworm", "variant": "minbase", "packages": ["tool"]}
    assert entry.options == (
        {"name": "level", "type": "choice", "label": "level", "choices": ["-1", "-2"], "default": "-1"},
        {"name": "verbose", "type": "bool", "label": "verbose", "flag": "-v", "default": False},
        {"name": "extra", "type": "text", "label": "extra", "max_length": 256, "split": True, "default": ""},
    )
    assert entry.examples == ({"name": "default", "files": {"main.txt": "x"}, "stdout": "x\n"},)
    assert entry.tags == () and entry.input_types == () and entry.homepage is None
    assert entry.files == {"main.txt": "x"}, "the first example's files"
    assert (entry.limits, entry.outputs, entry.view) == ({}, (), {})


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
        ((CHOICE, 'type = "colour"'), "options[0].type", "must be one of"),
        (('choices = ["-1", "-2"]', 'choices = ["-1"]\ndefault = "-3"'), "options[0].default", "not one of"),
        (('"{level}"', '"{speed}"'), "command[1]", "names no option"),
        (('"{level}"', '["-l", 3]'), "command[1]", "a string or a non-empty list of strings"),
        (('"{level}"', "[]"), "command[1]", "a string or a non-empty list of strings"),
        (('command = ["tool", "{level}", "main.txt"]', "command = []"), "command", "must not be empty"),
        (('"{level}"', '"-v{verbose}"'), "command[1]", "a bool option must be a whole item"),
        (('"{level}"', '"--flags={extra}"'), "command[1]", "a split text option must be a whole item"),
        (('title = "Tool"', 'title = "Tool"\nhomepage = "ftp://x"'), "homepage", "not an http(s) URL"),
        (('title = "Tool"', 'title = "Tool"\ninput_types = ["text"]'), "input_types[0]", "not a MIME type"),
        (('title = "Tool"', 'title = "Tool"\noutput_types = [1]'), "output_types[0]", "must be a string"),
        (('title = "Tool"', 'title = "Tool"\noutputs = ["/etc/*"]'), "outputs[0]", "relative path glob"),
        (('title = "Tool"', 'title = "Tool"\noutputs = ["../*"]'), "outputs[0]", "relative path glob"),
        (('title = "Tool"', 'title = "Tool"\nfiles = { "a/../b" = "x" }'), "files.a/../b", "relative paths"),
        (('title = "Tool"', 'title = "Tool"\nfiles = { "a" = 1 }'), "files.a", "must be a string"),
        (("[source]", "limits = { wall_ms = 60001 }\n[source]"), "limits.wall_ms", "not in 1..60000"),
        (("[source]", "limits = { pids = 0 }\n[source]"), "limits.pids", "not in 1..1024"),
        (("[source]", "limits = { wall_ms = 1.5 }\n[source]"), "limits.wall_ms", "must be an integer"),
        (("[source]", "limits = { cpu = 1 }\n[source]"), "limits.cpu", "unknown key"),
        (("[source]", 'view = { first = "/out.svg" }\n[source]'), "view.first", "relative path glob"),
        (
            ("[source]", 'view = { viewers = { "*.stl" = "vr" } }\n[source]'),
            "view.viewers.*.stl",
            "not a viewer",
        ),
        (("[source]", 'view = { colour = "red" }\n[source]'), "view.colour", "unknown key"),
        (('packages = ["tool"]', 'post_install = "rm -rf /"'), "source.post_install", "list of strings"),
        (('kind = "debian"', 'kind = "busybox-static"'), "source.suite", "unknown key"),
        (('choices = ["-1", "-2"]', "choices = []"), "options[0].choices", "must not be empty"),
        (('choices = ["-1", "-2"]', 'choices = ["-1"]\nmin = 1'), "options[0].min", "unknown key"),
        ((CHOICE, 'type = "number"\nstep = 0'), "options[0].step", "must be positive"),
        ((CHOICE, 'type = "number"\nmin = 3\nmax = 1'), "options[0].max", "must not be below min"),
        (
            (CHOICE, 'type = "number"\nmin = 1\nstep = 2\ndefault = 2'),
            "options[0].default",
            "not a multiple of 2",
        ),
        ((CHOICE, 'type = "bool"'), "options[0].flag", "is required"),
        ((CHOICE, 'type = "bool"\nflag = ""'), "options[0].flag", "must not be empty"),
        (
            (CHOICE, 'type = "bool"\nflag = "-v"\ndefault = "yes"'),
            "options[0].default",
            "true or false",
        ),
        (
            (CHOICE, 'type = "text"\npattern = "("'),
            "options[0].pattern",
            "not a regular expression",
        ),
        (
            (CHOICE, 'type = "text"\npattern = "[0-9]+"\ndefault = "x"'),
            "options[0].default",
            "does not match",
        ),
        ((CHOICE, 'type = "text"\nmax_length = 0'), "options[0].max_length", "must be positive"),
        ((CHOICE, 'type = "text"\nsplit = "yes"'), "options[0].split", "true or false"),
        (('stdout = "x\\n"', 'options = { level = "-3" }'), "examples[0].options.level", "not one of"),
        (
            ('stdout = "x\\n"', 'outputs = { "out.svg" = "svg" }'),
            "examples[0].outputs.out.svg",
            "not a MIME type",
        ),
        (
            ('stdout = "x\\n"', 'outputs = { "/out.svg" = "image/svg+xml" }'),
            "examples[0].outputs./out.svg",
            "relative paths",
        ),
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
    with pytest.raises(CatalogError, match=r"options\[0\]\.default: 4 is not between 0 and 3"):
        load_entry(write(tmp_path, number.replace("max = 3", "max = 3\ndefault = 4")))


def test_load_catalog_reads_every_toml_in_a_folder(tmp_path: Path) -> None:
    write(tmp_path, GOOD)
    write(tmp_path, GOOD.replace('id = "tool"', 'id = "tool2"'), "tool2")
    (tmp_path / "notes.txt").write_text("not an entry")
    assert list(load_catalog(tmp_path)) == ["tool", "tool2"]
