"""Run spec parsing (JSON and cpio forms), path rules and the request hash."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wire import spec as spec_module
from wire.cpio import Entry, dir_entry, file_entry, symlink_entry, write_archive
from wire.errors import WireError
from wire.spec import (
    DEFAULT_LIMITS,
    MAX_INPUT_BYTES,
    MAX_LIMITS,
    Limits,
    RunSpec,
    normalize_path,
    parse_spec,
    parse_spec_cpio,
    parse_spec_json,
    request_hash,
    spec_to_cpio,
)

DIGEST = "sha256:" + "ab" * 32
FULL = {
    "image": "python3",
    "argv": ["python3", "main.py", "--flag", "ünï"],
    "env": {"B": "2", "A": "1", "_x9": ""},
    "files": {
        "main.py": {"text": "print('hi')\n"},
        "data/blob.bin": {"base64": "AAEC/w=="},
        "data/empty": {"text": ""},
    },
    "stdin": {"text": "input\n"},
    "options": {"opt": "-O2", "n": 3, "ratio": 0.5, "verbose": True},
    "limits": {"wall_ms": 2000, "memory_mib": 512},
    "runner": "sandbox",
    "cache": False,
}


def test_full_spec():
    spec = parse_spec(FULL)
    assert spec.image == "python3" and spec.image_id == "python3" and spec.image_digest is None
    assert spec.argv == ("python3", "main.py", "--flag", "ünï")
    assert spec.env == (("A", "1"), ("B", "2"), ("_x9", ""))
    assert spec.files == (
        ("data/blob.bin", b"\0\1\2\xff"),
        ("data/empty", b""),
        ("main.py", b"print('hi')\n"),
    )
    assert spec.stdin == b"input\n"
    assert spec.options == (("n", 3), ("opt", "-O2"), ("ratio", 0.5), ("verbose", True))
    assert spec.limits == dataclasses.replace(DEFAULT_LIMITS, wall_ms=2000, memory_mib=512)
    assert (spec.runner, spec.cache) == ("sandbox", False)


def test_minimal_spec_defaults():
    spec = parse_spec({"image": "gcc-13@sha256:" + "0" * 64})
    assert (spec.image_id, spec.image_digest) == ("gcc-13", "sha256:" + "0" * 64)
    assert spec == RunSpec("gcc-13@sha256:" + "0" * 64, (), (), (), b"", (), DEFAULT_LIMITS, None, True)
    nulls = {key: None for key in ("argv", "env", "files", "stdin", "options", "limits", "runner", "cache")}
    assert parse_spec({"image": "gcc-13@sha256:" + "0" * 64, **nulls}) == spec


def test_stdin_forms():
    assert parse_spec({"image": "x", "stdin": "plain ✓"}).stdin == "plain ✓".encode()
    assert parse_spec({"image": "x", "stdin": {"base64": "/w=="}}).stdin == b"\xff"
    assert parse_spec({"image": "x", "stdin": {"base64": "AAEC\nAwQF\n"}}).stdin == bytes(range(6))


def test_the_limits_the_request_gave_are_remembered():
    spec = parse_spec({"image": "x", "limits": {"pids": 100, "wall_ms": 2000, "memory_mib": None}})
    assert spec.limit_overrides == (("pids", 100), ("wall_ms", 2000))
    assert spec.limits == dataclasses.replace(DEFAULT_LIMITS, pids=100, wall_ms=2000)
    assert spec.to_json()["limits"] == {"pids": 100, "wall_ms": 2000}, "only what the request gave"
    assert parse_spec({"image": "x"}).limit_overrides == ()


def test_limits_merged_puts_later_layers_on_top():
    merged = DEFAULT_LIMITS.merged({"wall_ms": 10_000, "pids": 10}, {"wall_ms": 2000})
    assert merged == dataclasses.replace(DEFAULT_LIMITS, wall_ms=2000, pids=10)
    assert DEFAULT_LIMITS.merged() == DEFAULT_LIMITS


def test_defaults_are_capped_by_a_lower_maximum():
    low = dataclasses.replace(MAX_LIMITS, wall_ms=1000)
    assert parse_spec({"image": "x"}, max_limits=low).limits.wall_ms == 1000
    with pytest.raises(WireError, match=r"1\.\.1000"):
        parse_spec({"image": "x", "limits": {"wall_ms": 1001}}, max_limits=low)


def test_json_and_cpio_round_trips():
    spec = parse_spec(FULL)
    assert parse_spec(spec.to_json()) == spec
    assert parse_spec_json(json.dumps(spec.to_json()).encode()) == spec
    assert parse_spec_cpio(spec_to_cpio(spec)) == spec
    assert spec.to_json()["files"]["data/blob.bin"] == {"base64": "AAEC/w=="}
    assert spec.to_json()["stdin"] == {"text": "input\n"}


def test_cpio_form_binary_and_merge():
    obj = {"image": "x", "files": {"a.txt": {"text": "from json"}}}
    archive = write_archive(
        [
            dir_entry("d"),
            file_entry("spec.json", json.dumps(obj).encode()),
            file_entry("d/raw.bin", bytes(range(256))),
            file_entry("spec.json", b"an input file that happens to be called spec.json"),
        ]
    )
    spec = parse_spec_cpio(archive)
    assert dict(spec.files) == {
        "a.txt": b"from json",
        "d/raw.bin": bytes(range(256)),
        "spec.json": b"an input file that happens to be called spec.json",
    }


@pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio is not installed")
def test_cpio_form_made_by_gnu_cpio(tmp_path):
    (tmp_path / "spec.json").write_text(json.dumps({"image": "python3", "argv": ["python3", "main.py"]}))
    (tmp_path / "main.py").write_text("print(1)\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub/in.bin").write_bytes(b"\0\xff")
    names = b"spec.json\n./main.py\nsub\nsub/in.bin\n"
    archive = subprocess.run(
        ["cpio", "-o", "-H", "newc", "--quiet"], cwd=tmp_path, input=names, capture_output=True, check=True
    ).stdout
    spec = parse_spec_cpio(archive)
    assert spec.files == (("main.py", b"print(1)\n"), ("sub/in.bin", b"\0\xff"))


def error(call) -> WireError:
    with pytest.raises(WireError) as info:
        call()
    return info.value


def spec_with(**changes) -> dict:
    return {"image": "python3", **changes}


BAD_SPECS = [
    # (spec, status, code, words in the message)
    ([], 400, "bad_request", "JSON object"),
    ({}, 400, "bad_request", "image: is required"),
    (spec_with(extra=1), 400, "bad_request", "unknown key 'extra'"),
    (spec_with(image=3), 400, "bad_request", "image: must be a string"),
    (spec_with(image="../etc"), 400, "bad_request", "image:"),
    (spec_with(image="x@sha256:abc"), 400, "bad_request", "image:"),
    (spec_with(argv="python3 main.py"), 400, "bad_request", "argv: must be an array"),
    (spec_with(argv=["a", 1]), 400, "bad_request", "argv[1]: must be a string"),
    (spec_with(argv=["a\0b"]), 400, "bad_request", "argv[0]: contains NUL"),
    (spec_with(argv=["\ud800"]), 400, "bad_request", "argv[0]: is not valid Unicode"),
    (spec_with(argv=["x"] * 1001), 413, "too_large", "argv"),
    (spec_with(env=["A=1"]), 400, "bad_request", "env: must be an object"),
    (spec_with(env={"1A": "x"}), 400, "bad_request", "env: '1A'"),
    (spec_with(env={"A-B": "x"}), 400, "bad_request", "env: 'A-B'"),
    (spec_with(env={"A": 1}), 400, "bad_request", "env.A: must be a string"),
    (spec_with(env={"A": "\0"}), 400, "bad_request", "env.A: contains NUL"),
    (spec_with(env={f"K{i}": "" for i in range(257)}), 413, "too_large", "env"),
    (spec_with(files=[]), 400, "bad_request", "files: must be an object"),
    (spec_with(files={"a": "text"}), 400, "bad_request", "files['a']"),
    (spec_with(files={"a": {"text": "x", "base64": ""}}), 400, "bad_request", "files['a']"),
    (spec_with(files={"a": {"data": "x"}}), 400, "bad_request", "files['a']"),
    (spec_with(files={"a": {"text": 1}}), 400, "bad_request", "files['a'].text: must be a string"),
    (spec_with(files={"a": {"base64": "@@@"}}), 400, "bad_request", "files['a'].base64: is not valid base64"),
    (spec_with(files={"a": {"base64": "AAE"}}), 400, "bad_request", "is not valid base64"),
    (spec_with(files={"/etc/passwd": {"text": ""}}), 400, "bad_path", "absolute"),
    (spec_with(files={"../x": {"text": ""}}), 400, "bad_path", "'..'"),
    (spec_with(files={"a/../b": {"text": ""}}), 400, "bad_path", "'..'"),
    (spec_with(files={"a/..": {"text": ""}}), 400, "bad_path", "'..'"),
    (spec_with(files={"": {"text": ""}}), 400, "bad_path", "empty"),
    (spec_with(files={"./": {"text": ""}}), 400, "bad_path", "empty"),
    (spec_with(files={"a\0b": {"text": ""}}), 400, "bad_path", "NUL"),
    (spec_with(files={"\udcff": {"text": ""}}), 400, "bad_path", "Unicode"),
    (spec_with(files={"a" * 4097: {"text": ""}}), 400, "bad_path", "4096 bytes"),
    (spec_with(files={"é" * 2049: {"text": ""}}), 400, "bad_path", "4096 bytes"),
    (spec_with(files={"a": {"text": ""}, "./a": {"text": ""}}), 400, "bad_path", "'a' is given twice"),
    (spec_with(files={"a//b": {"text": ""}, "a/b/": {"text": ""}}), 400, "bad_path", "twice"),
    (spec_with(files={"a": {"text": ""}, "a/b": {"text": ""}}), 400, "bad_path", "'a' is a file and also"),
    (
        spec_with(files={"x/y/z": {"text": ""}, "x/y": {"text": ""}, "x!": {"text": ""}}),
        400,
        "bad_path",
        "'x/y'",
    ),
    (spec_with(files={f"f{i}": {"text": ""} for i in range(1001)}), 413, "too_large", "files"),
    (spec_with(stdin=5), 400, "bad_request", "stdin"),
    (spec_with(stdin={"base64": "!"}), 400, "bad_request", "stdin.base64"),
    (spec_with(options=[]), 400, "bad_request", "options: must be an object"),
    (spec_with(options={"o": None}), 422, "bad_option", "options.o"),
    (spec_with(options={"o": [1]}), 422, "bad_option", "options.o"),
    (spec_with(options={"o": {"a": 1}}), 422, "bad_option", "options.o"),
    (spec_with(options={"o": float("nan")}), 422, "bad_option", "options.o"),
    (spec_with(options={"o": "a\0"}), 422, "bad_option", "options.o"),
    (spec_with(limits=5), 400, "bad_request", "limits: must be an object"),
    (spec_with(limits={"cpu": 5}), 422, "bad_limit", "unknown 'cpu'"),
    (spec_with(limits={"wall_ms": 0}), 422, "bad_limit", "limits.wall_ms: 0 is not in 1..60000"),
    (spec_with(limits={"pids": -1}), 422, "bad_limit", "limits.pids"),
    (spec_with(limits={"memory_mib": 2049}), 422, "bad_limit", "limits.memory_mib: 2049"),
    (spec_with(limits={"wall_ms": "5"}), 400, "bad_request", "limits.wall_ms: must be an integer"),
    (spec_with(limits={"wall_ms": 5.0}), 400, "bad_request", "limits.wall_ms"),
    (spec_with(limits={"wall_ms": True}), 400, "bad_request", "limits.wall_ms"),
    (spec_with(runner="docker"), 422, "bad_runner", "runner: 'docker'"),
    (spec_with(runner=1), 400, "bad_request", "runner: must be a string"),
    (spec_with(cache="yes"), 400, "bad_request", "cache: must be a boolean"),
    (spec_with(stdin="x" * MAX_INPUT_BYTES, argv=["y"]), 413, "too_large", "over 16777216"),
]


@pytest.mark.parametrize(("obj", "status", "code", "words"), BAD_SPECS)
def test_bad_specs(obj, status, code, words):
    e = error(lambda: parse_spec(obj))
    assert (e.status, e.code) == (status, code), e.message
    assert words in e.message
    assert e.to_json() == {"error": {"code": code, "message": e.message}}


def test_input_exactly_at_the_bound_is_accepted():
    assert len(parse_spec(spec_with(stdin="x" * MAX_INPUT_BYTES)).stdin) == MAX_INPUT_BYTES


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{", "not valid JSON"),
        (b"", "not valid JSON"),
        (b'{"image": "x"} trailing', "not valid JSON"),
        (b'{"image": "x", "options": {"o": NaN}}', "NaN is not allowed"),
        (b'{"image": "x", "options": {"o": -Infinity}}', "not allowed"),
        (b'{"image": "x", "options": {"o": 1e999}}', "out of range"),
        (b'{"image": "x", "options": {"o": 1' + b"0" * 5000 + b"}}", "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
        (b'{"image": "\xff"}', "not UTF-8"),
        (b"null", "JSON object"),
    ],
)
def test_bad_json_bodies(body, words):
    e = error(lambda: parse_spec_json(body))
    assert (e.status, e.code) == (400, "bad_request")
    assert words in e.message


def test_body_size_bound(monkeypatch):
    monkeypatch.setattr(spec_module, "MAX_BODY_BYTES", 100)
    body = json.dumps(spec_with(stdin="x" * 100)).encode()
    for parse in (parse_spec_json, parse_spec_cpio):
        e = error(lambda parse=parse: parse(body))
        assert (e.status, e.code) == (413, "too_large")


def cpio_spec(*entries: Entry, obj: dict | None = None) -> bytes:
    head = file_entry("spec.json", json.dumps(obj or {"image": "x"}).encode())
    return write_archive([head, *entries])


@pytest.mark.parametrize(
    ("archive", "status", "code", "words"),
    [
        (b"not cpio at all" * 10, 400, "bad_cpio", "bad magic"),
        (cpio_spec()[:-4], 400, "bad_cpio", "truncated"),
        (write_archive([]), 400, "bad_cpio", "no spec.json"),
        (
            write_archive([file_entry("main.py", b""), file_entry("spec.json", b"{}")]),
            400,
            "bad_cpio",
            "first",
        ),
        (write_archive([file_entry("spec.json", b"{")]), 400, "bad_request", "spec.json is not valid JSON"),
        (cpio_spec(symlink_entry("l", "/etc/passwd")), 400, "bad_cpio", "regular files"),
        (cpio_spec(file_entry("a", b""), file_entry("./a", b"")), 400, "bad_path", "twice"),
        (cpio_spec(file_entry("a", b""), file_entry("a/b", b"")), 400, "bad_path", "also a directory"),
        (
            cpio_spec(file_entry("a", b""), obj={"image": "x", "files": {"./a": {"text": ""}}}),
            400,
            "bad_path",
            "in spec.json and in the archive",
        ),
        (cpio_spec(obj={"image": "x", "limits": {"pids": 0}}), 422, "bad_limit", "limits.pids"),
        (cpio_spec(file_entry("big", bytes(MAX_INPUT_BYTES + 1))), 413, "too_large", "input"),
    ],
)
def test_bad_cpio_specs(archive, status, code, words):
    e = error(lambda: parse_spec_cpio(archive))
    assert (e.status, e.code) == (status, code), e.message
    assert words in e.message


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("a", "a"),
        ("./a", "a"),
        ("a//b", "a/b"),
        ("a/./b/", "a/b"),
        ("dir\\file", "dir\\file"),
        ("...", "..."),
        ("..a/b..", "..a/b.."),
        (" spaced name ", " spaced name "),
        ("ünï/✓", "ünï/✓"),
    ],
)
def test_normalize_path(path, expected):
    assert normalize_path(path) == expected


# --- the request hash --------------------------------------------------------------------------------

BASE = parse_spec(FULL)
GOLDEN = "7d9fb181ca6e385a404b90021520ca786a0c7ab4d8234aa572d6bb931b23d302"


def rhash(spec: RunSpec = BASE, digest: str = DIGEST, runner: str = "sandbox") -> str:
    return request_hash(spec, image_digest=digest, runner=runner)


def test_hash_golden_value():
    """The run id is a public contract: this value must never change without a version bump."""
    assert rhash() == GOLDEN


def test_hash_follows_the_documented_encoding():
    sha = lambda data: hashlib.sha256(data).hexdigest()  # noqa: E731
    doc = {
        "v": 1,
        "image": DIGEST,
        "argv": list(BASE.argv),
        "env": [["A", "1"], ["B", "2"], ["_x9", ""]],
        "stdin": sha(b"input\n"),
        "files": [
            ["data/blob.bin", sha(b"\0\1\2\xff")],
            ["data/empty", sha(b"")],
            ["main.py", sha(b"print('hi')\n")],
        ],
        "limits": BASE.limits.to_json(),
        "runner": "sandbox",
    }
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert rhash() == sha(text.encode())


def replaced(**changes) -> RunSpec:
    return dataclasses.replace(BASE, **changes)


@pytest.mark.parametrize(
    "other",
    [
        pytest.param(lambda: rhash(digest="sha256:" + "ac" * 32), id="digest"),
        pytest.param(lambda: rhash(runner="vm"), id="runner"),
        pytest.param(lambda: rhash(replaced(argv=BASE.argv[:-1])), id="argv-shorter"),
        pytest.param(lambda: rhash(replaced(argv=(*BASE.argv[:-1], "ünï "))), id="argv-item"),
        pytest.param(lambda: rhash(replaced(argv=("python3 main.py", "--flag", "ünï"))), id="argv-joined"),
        pytest.param(lambda: rhash(replaced(env=(("A", "1"), ("B", "3"), ("_x9", "")))), id="env-value"),
        pytest.param(lambda: rhash(replaced(env=(("A", "1"), ("C", "2"), ("_x9", "")))), id="env-key"),
        pytest.param(lambda: rhash(replaced(env=BASE.env[:2])), id="env-removed"),
        pytest.param(lambda: rhash(replaced(stdin=b"input")), id="stdin"),
        pytest.param(lambda: rhash(replaced(files=BASE.files[:2])), id="file-removed"),
        pytest.param(
            lambda: rhash(replaced(files=(*BASE.files[:2], ("main.py", b"print(2)\n")))), id="content"
        ),
        pytest.param(
            lambda: rhash(replaced(files=(*BASE.files[:2], ("main2.py", BASE.files[2][1])))), id="path"
        ),
        pytest.param(lambda: rhash(replaced(limits=dataclasses.replace(BASE.limits, pids=65))), id="limits"),
        pytest.param(
            lambda: rhash(replaced(stdin=BASE.files[2][1], files=(*BASE.files[:2], ("main.py", b"input\n")))),
            id="stdin-and-file-swapped",
        ),
    ],
)
def test_hash_changes_with_every_hashed_field(other):
    assert other() != GOLDEN


def test_hash_ignores_options_cache_and_presentation():
    same = dict(FULL)
    same["options"] = {"something": "else"}
    same["cache"] = True
    same["env"] = dict(reversed(list(FULL["env"].items())))
    same["files"] = {
        "./data//blob.bin": {"base64": "AAEC/w=="},
        "main.py": {"base64": base64.b64encode(b"print('hi')\n").decode()},
        "data/empty/": {"text": ""},
    }
    same["stdin"] = "input\n"
    assert rhash(parse_spec(same)) == GOLDEN
    assert rhash(parse_spec_cpio(spec_to_cpio(BASE))) == GOLDEN


def test_hash_is_unambiguous_across_fields():
    one = replaced(argv=("a",), env=(("B", "c"),))
    two = replaced(argv=("a", "B", "c"), env=())
    assert rhash(one) != rhash(two)
    assert rhash(replaced(argv=("a,b",))) != rhash(replaced(argv=("a", "b")))


# --- properties ---------------------------------------------------------------------------------------

text = st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=20)
component = st.text(st.characters(codec="utf-8", exclude_characters="/\0"), min_size=1, max_size=8).filter(
    lambda part: part not in (".", "..")
)
specs = st.fixed_dictionaries(
    {"image": st.from_regex(r"[a-z][a-z0-9._-]{0,10}", fullmatch=True)},
    optional={
        "argv": st.lists(text, max_size=5),
        "env": st.dictionaries(
            st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True), text, max_size=4
        ),
        "files": st.dictionaries(
            st.lists(component.filter(lambda part: part != "leaf"), max_size=3).map(
                lambda d: "/".join([*d, "leaf"])
            ),
            st.one_of(
                st.builds(lambda t: {"text": t}, text),
                st.builds(lambda b: {"base64": base64.b64encode(b).decode()}, st.binary(max_size=50)),
            ),
            max_size=4,
        ),
        "stdin": st.one_of(
            text, st.builds(lambda b: {"base64": base64.b64encode(b).decode()}, st.binary(max_size=50))
        ),
        "options": st.dictionaries(
            text,
            st.one_of(text, st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans()),
        ),
        "limits": st.fixed_dictionaries(
            {}, optional={"wall_ms": st.integers(1, 60_000), "pids": st.integers(1, 1024)}
        ),
        "runner": st.sampled_from(["sandbox", "vm"]),
        "cache": st.booleans(),
    },
)


@settings(max_examples=150, deadline=2000)
@given(specs)
def test_every_form_round_trips(obj):
    spec = parse_spec(obj)
    assert parse_spec(spec.to_json()) == spec
    assert parse_spec_json(json.dumps(spec.to_json()).encode()) == spec
    assert parse_spec_cpio(spec_to_cpio(spec)) == spec
    assert rhash(parse_spec_cpio(spec_to_cpio(spec))) == rhash(spec)


def test_limits_to_json_and_back():
    assert Limits.from_json(MAX_LIMITS.to_json()) == MAX_LIMITS
    assert list(DEFAULT_LIMITS.to_json()) == [
        "wall_ms",
        "memory_mib",
        "pids",
        "stream_bytes",
        "output_bytes",
        "file_bytes",
    ]
