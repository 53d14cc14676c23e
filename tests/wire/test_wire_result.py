"""result.json and the two response forms."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wire.cpio import dir_entry, file_entry, read_archive, write_archive
from wire.errors import WireError
from wire.result import (
    FileInfo,
    Result,
    Status,
    iter_pack_output,
    output_from_json,
    output_to_json,
    pack_output,
    unpack_output,
)

KEYS = [
    "id", "image", "status", "exit_code", "signal", "wall_ms", "cpu_ms", "max_rss_kib",
    "stdout", "stderr", "files", "limits", "runner", "cached", "message",
]  # fmt: skip


def test_result_json_shape(sample_output):
    obj = sample_output.result.to_json()
    assert list(obj) == KEYS
    assert obj["image"] == {"id": "python3", "digest": "sha256:" + "cd" * 32}
    assert obj["status"] == "timeout" and type(obj["status"]) is str
    assert obj["stderr"] == {"bytes": 3, "truncated": True}
    assert obj["files"][0] == {"path": "out/plot.png", "size": 264, "mime": "image/png", "truncated": False}
    assert obj["limits"]["wall_ms"] == 5000
    assert json.loads(json.dumps(obj)) == obj
    assert Result.from_json(json.loads(json.dumps(obj))) == sample_output.result


def test_status_values():
    assert [str(s) for s in Status] == ["ok", "exit", "signal", "timeout", "oom", "output_limit", "error"]


def test_integer_times_read_as_floats(sample_output):
    obj = sample_output.result.to_json()
    obj["wall_ms"] = 12
    result = Result.from_json(obj)
    assert result.wall_ms == 12.0 and isinstance(result.wall_ms, float)


def broken(change):
    """A function that breaks a result.json object in place and returns it."""

    def apply(obj: dict) -> dict:
        change(obj)
        return obj

    return apply


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda o: [], "result must be an object"),
        (broken(lambda o: o.pop("id")), "result.id must be str"),
        (broken(lambda o: o.update(image="python3")), "result.image must be an object"),
        (broken(lambda o: o["image"].pop("digest")), "result.image.digest"),
        (broken(lambda o: o.update(status="crashed")), "unknown 'crashed'"),
        (broken(lambda o: o.update(exit_code="0")), "result.exit_code must be int"),
        (broken(lambda o: o.update(exit_code=True)), "result.exit_code must be int"),
        (broken(lambda o: o.update(wall_ms="1")), "result.wall_ms must be float"),
        (broken(lambda o: o.update(max_rss_kib=1.5)), "result.max_rss_kib"),
        (broken(lambda o: o["stdout"].update(truncated=0)), "result.stdout.truncated must be bool"),
        (broken(lambda o: o.update(files={})), "result.files must be list"),
        (broken(lambda o: o["files"][1].pop("mime")), "result.files[1].mime"),
        (broken(lambda o: o["limits"].pop("pids")), "result.limits"),
        (broken(lambda o: o["limits"].update(pids="64")), "result.limits.pids"),
        (broken(lambda o: o.update(cached=None)), "result.cached"),
    ],
)
def test_from_json_rejects(sample_output, edit, words):
    with pytest.raises(WireError) as info:
        Result.from_json(edit(sample_output.result.to_json()))
    assert (info.value.status, info.value.code) == (400, "bad_result")
    assert words in info.value.message


def test_nullable_fields(sample_output):
    obj = sample_output.result.to_json()
    obj["signal"] = None
    obj["exit_code"] = 3
    result = Result.from_json(obj)
    assert (result.exit_code, result.signal) == (3, None)


def test_pack_layout(sample_output):
    archive = pack_output(sample_output)
    entries = read_archive(archive)
    names = [e.name for e in entries]
    assert names == [
        "result.json",
        "stdout",
        "stderr",
        "files/out/plot.png",
        "files/report.txt",
        "files/empty",
    ]
    assert json.loads(entries[0].data) == sample_output.result.to_json()
    assert entries[1].data == b"tick\n\n" and entries[2].data == b"\xff\xfe\x00"
    assert all(e.is_file and e.mode & 0o777 == 0o644 for e in entries)
    assert b"".join(iter_pack_output(sample_output)) == archive


def test_pack_round_trip(sample_output):
    assert unpack_output(pack_output(sample_output)) == sample_output


def test_iter_pack_output_does_not_copy_outputs(sample_output):
    big = dataclasses.replace(sample_output, stdout=b"x" * 100_000)
    big.result.stdout.bytes = 100_000
    assert any(piece is big.stdout for piece in iter_pack_output(big))


def test_pack_needs_matching_files(sample_output):
    missing = dataclasses.replace(sample_output, files={"report.txt": b""})
    with pytest.raises(ValueError, match=r"result\.files lists"):
        pack_output(missing)
    with pytest.raises(ValueError, match=r"result\.files lists"):
        output_to_json(missing)


def test_unpack_tolerates_directories_and_order(sample_output):
    parts = read_archive(pack_output(sample_output))
    shuffled = [dir_entry("files"), dir_entry("files/out"), *reversed(parts)]
    assert unpack_output(write_archive(shuffled)) == sample_output


def test_unpack_defaults_missing_streams(sample_output):
    empty = copy.deepcopy(sample_output)
    empty.result.files = []
    empty.files = {}
    parts = [e for e in read_archive(pack_output(empty)) if e.name == "result.json"]
    out = unpack_output(write_archive(parts))
    assert (out.stdout, out.stderr, out.files) == (b"", b"", {})


def result_json(sample_output) -> bytes:
    return json.dumps(sample_output.result.to_json()).encode()


@pytest.mark.parametrize(
    ("entries", "words"),
    [
        (lambda o: [file_entry("stdout", b"")], "no result.json"),
        (lambda o: [file_entry("result.json", b"{not json")], "not valid JSON"),
        (lambda o: [file_entry("result.json", b"\xff")], "not valid JSON"),
        (lambda o: [file_entry("result.json", result_json(o)), file_entry("other", b"")], "unexpected entry"),
        (
            lambda o: [
                file_entry("result.json", result_json(o)),
                file_entry("stdout", b""),
                file_entry("stdout", b""),
            ],
            "twice",
        ),
        (
            lambda o: [file_entry("result.json", result_json(o)), file_entry("files/x", b"")],
            "result.files lists",
        ),
    ],
)
def test_unpack_rejects(sample_output, entries, words):
    with pytest.raises(WireError) as info:
        unpack_output(write_archive(entries(sample_output)))
    assert info.value.status == 400
    assert words in info.value.message


def test_unpack_rejects_broken_cpio(sample_output):
    with pytest.raises(WireError) as info:
        unpack_output(pack_output(sample_output)[:-20])
    assert info.value.code == "bad_cpio"


def test_output_json(sample_output):
    obj = output_to_json(sample_output)
    assert obj["stdout"] == {"bytes": 6, "truncated": False, "text": "tick\n\n"}
    assert obj["stderr"] == {"bytes": 3, "truncated": True, "base64": "//4A"}
    assert obj["files"][1] == {
        "path": "report.txt",
        "size": 13,
        "mime": "text/plain; charset=utf-8",
        "truncated": False,
        "text": "résumé ✓\n",
    }
    assert set(obj["files"][0]) == {"path", "size", "mime", "truncated", "base64"}
    assert obj["files"][2]["text"] == ""
    assert {key: value for key, value in obj.items() if key not in ("stdout", "stderr", "files")} == {
        key: value
        for key, value in sample_output.result.to_json().items()
        if key not in ("stdout", "stderr", "files")
    }
    assert output_from_json(json.loads(json.dumps(obj))) == sample_output


def test_output_from_json_rejects_duplicate_files(sample_output):
    obj = output_to_json(sample_output)
    obj["files"][1] = dict(obj["files"][0])
    with pytest.raises(WireError, match=r"result\.files lists"):
        output_from_json(obj)


def test_output_from_json_needs_contents(sample_output):
    obj = output_to_json(sample_output)
    del obj["files"][0]["base64"]
    with pytest.raises(WireError, match=r"files\[.out/plot\.png.\]"):
        output_from_json(obj)


files = st.dictionaries(
    st.text(st.characters(codec="utf-8", exclude_characters="/\0."), min_size=1, max_size=10),
    st.binary(max_size=100),
    max_size=5,
)


@settings(max_examples=100, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200), st.binary(max_size=200), files)
def test_output_forms_round_trip(sample_output, stdout, stderr, files):
    out = copy.deepcopy(sample_output)
    out.stdout, out.stderr, out.files = stdout, stderr, files
    out.result.files = [
        FileInfo(path, len(data), "application/octet-stream", False) for path, data in files.items()
    ]
    assert unpack_output(pack_output(out)) == out
    assert output_from_json(json.loads(json.dumps(output_to_json(out)))) == out
