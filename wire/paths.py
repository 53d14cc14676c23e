"""Path rules shared by run specs and cpio archives (kept apart so `cpio` and `spec` need not import each
other)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from wire.errors import WireError

MAX_PATH_BYTES = 4096


def normalize_path(path: str) -> str:
    """`path` as a relative, normalised POSIX path ("./a//b/" -> "a/b").

    Raises WireError(400, "bad_path") for non-strings, empty paths, absolute paths, NUL, any ".."
    component, text that is not encodable as UTF-8 (lone surrogates) and paths over 4096 bytes.
    Backslashes are ordinary characters, as on Linux.
    """
    if not isinstance(path, str):
        raise WireError(400, "bad_path", f"path must be a string, not {type(path).__name__}")
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        raise WireError(400, "bad_path", f"path {path!r} is not valid Unicode") from None
    if size > MAX_PATH_BYTES:
        raise WireError(400, "bad_path", f"path {path[:64]!r}… is longer than {MAX_PATH_BYTES} bytes")
    if "\0" in path:
        raise WireError(400, "bad_path", f"path {path!r} contains NUL")
    if path.startswith("/"):
        raise WireError(400, "bad_path", f"path {path!r} is absolute")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise WireError(400, "bad_path", f"path {path!r} contains '..'")
    if not parts:
        raise WireError(400, "bad_path", f"path {path!r} is empty")
    return "/".join(parts)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A compiled regex for a glob over whole relative paths: `*` and `?` match within one path
    component, `**` matches across components (`a/**/b` also matches `a/b`); every other character,
    brackets included, stands for itself."""
    parts = []
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            parts.append("(?:.*/)?")
            index += 3
        elif pattern.startswith("**", index):
            parts.append(".*")
            index += 2
        else:
            char = pattern[index]
            parts.append("[^/]*" if char == "*" else "[^/]" if char == "?" else re.escape(char))
            index += 1
    return re.compile("".join(parts), re.S)


def glob_matcher(patterns: Iterable[str]) -> Callable[[str], bool]:
    """Whether a relative path matches any of `patterns` (see `glob_regex`); all paths when none."""
    regexes = [glob_regex(pattern) for pattern in patterns]
    if not regexes:
        return lambda path: True
    return lambda path: any(regex.fullmatch(path) for regex in regexes)
