"""The one exception type of `wire/`: bad input, carrying the HTTP answer the edge gives for it."""

from __future__ import annotations


class WireError(ValueError):
    """Bad input. `status` is the HTTP status the edge answers with, `code` a short machine name."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status  # 400 malformed, 413 too large, 422 well-formed but not acceptable
        self.code = code
        self.message = message

    def to_json(self) -> dict[str, dict[str, str]]:
        """The error body of the public API: `{"error": {"code", "message"}}`."""
        return {"error": {"code": self.code, "message": self.message}}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.code!r}, {self.message!r})"
