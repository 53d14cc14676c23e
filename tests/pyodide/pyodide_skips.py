"""A pytest plugin loaded only inside Pyodide (tests/pyodide/run_pytest.mjs): skips, with the reason, the
`wire/` tests that need something a browser's Python does not have, and prints a summary line that the
outer test (tests/wire/test_in_pyodide.py) reads.

Pyodide cannot start processes and has no kernel to mount with, so the tests that make their input with
a host tool (GNU cpio, mkfs.erofs, lz4) or compare with a loop mount cannot run there. Every entry must
match at least one collected test, so this table cannot go stale silently."""

from __future__ import annotations

import json
import sys

import pytest

NO_PROCESSES = "Pyodide cannot start processes"
MKFS = f"its images are made by mkfs.erofs ({NO_PROCESSES})"
LZ4 = f"its blocks are made by the lz4 tool ({NO_PROCESSES})"
GNU_CPIO = f"compares with GNU cpio ({NO_PROCESSES})"
DEEP_JSON = (
    "100,000 nested brackets overflow the JavaScript engine's stack, a fatal Pyodide error where CPython"
    " raises RecursionError (the page never parses a spec; the edge does)"
)
SKIPS = {
    "test_wire_cpio_gnu.py": GNU_CPIO,
    "test_wire_spec.py::test_cpio_form_made_by_gnu_cpio": GNU_CPIO,
    "test_wire_spec.py::test_bad_json_bodies[body7-not valid JSON]": DEEP_JSON,
    "test_wire_erofs.py::test_image_holds_the_tree": MKFS,
    "test_wire_erofs.py::test_reads_at_any_offset_match_the_file": MKFS,
    "test_wire_erofs.py::test_multi_device_image_reads_chunks_from_its_blob": MKFS,
    "test_wire_erofs.py::test_paths_resolve_like_a_filesystem": MKFS,
    "test_wire_erofs.py::test_reads_are_bounded": MKFS,
    "test_wire_erofs.py::test_superblock_checks": MKFS,
    "test_wire_erofs.py::test_store_image_matches_its_kernel_mount": "compares with the kernel's loop mount",
    "test_wire_erofs_fuzz.py": MKFS,
    "test_wire_erofs_lz4.py::test_reference_encoder_blocks_decode": LZ4,
    "test_wire_erofs_lz4.py::test_any_data_round_trips_through_the_reference_encoder": LZ4,
}
outcomes: dict[str, int] = {}


def table_entry(nodeid: str) -> str | None:
    """The SKIPS key that covers a test id like `tests/wire/test_x.py::test_y[param]` (the id itself, the
    test with any parameters, or its file), or None."""
    test = nodeid.rsplit("/", 1)[-1]
    for key in (test, test.split("[", 1)[0], test.split("::", 1)[0]):
        if key in SKIPS:
            return key
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    used = set()
    for item in items:
        key = table_entry(item.nodeid)
        if key is not None:
            used.add(key)
            # In front of the tests' own skipif marks, so this reason is the one reported.
            item.add_marker(pytest.mark.skipif(True, reason=f"in Pyodide: {SKIPS[key]}"), append=False)
    stale = set(SKIPS) - used
    if stale:
        raise pytest.UsageError(f"pyodide_skips.py names tests that were not collected: {sorted(stale)}")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or report.outcome != "passed":
        outcomes[report.outcome] = outcomes.get(report.outcome, 0) + 1


def pytest_unconfigure() -> None:
    summary = {"platform": sys.platform, "python": list(sys.version_info[:2]), **outcomes}
    print("PYODIDE-SUMMARY " + json.dumps(summary))
