"""Path globs (catalogue output globs and viewer hints): `*`, `?` within a component, `**` across."""

from __future__ import annotations

import pytest

from wire.paths import glob_matcher, glob_regex


@pytest.mark.parametrize(
    ("glob", "matches", "misses"),
    [
        ("*.svg", ["a.svg", ".svg"], ["d/a.svg", "a.svgz", "a.png"]),
        ("out.*", ["out.png", "out."], ["out", "d/out.png", "xout.png"]),
        ("out/**", ["out/a", "out/a/b"], ["out", "outx/a"]),
        ("a/**/b.txt", ["a/b.txt", "a/x/b.txt", "a/x/y/b.txt"], ["b.txt", "a/xb.txt"]),
        ("**/*.csv", ["t.csv", "d/t.csv"], ["t.csvx"]),
        ("?.txt", ["a.txt"], ["ab.txt", "/.txt"]),
        ("[ab].txt", ["[ab].txt"], ["a.txt"]),
        ("a+b(c).txt", ["a+b(c).txt"], ["aab(c).txt"]),
    ],
)
def test_glob_regex(glob: str, matches: list[str], misses: list[str]) -> None:
    regex = glob_regex(glob)
    assert all(regex.fullmatch(path) for path in matches)
    assert not any(regex.fullmatch(path) for path in misses)


def test_no_globs_match_everything() -> None:
    assert glob_matcher(())("any/path")
    assert not glob_matcher(("*.svg",))("x.png")
