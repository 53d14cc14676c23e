"""Path rules shared by run specs and cpio archives (kept apart so `cpio` and `spec` need not import each
other)."""

from __future__ import annotations

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
