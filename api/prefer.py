"""The `Prefer` request header (RFC 7240) as the run routes read it: `respond-async` and `wait=<seconds>`.

A preference the edge does not know, or a value it cannot read (`wait=soon`, `wait=-1`), is ignored, as
the RFC asks: a preference is a hint, never a reason for a 400. `wait` may have a fraction
(`wait=0.3`), which the RFC's delta-seconds does not allow but a page that wants quick runs answered
in one round trip needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Preferences:
    respond_async: bool = False
    wait_s: float | None = None  # None: not given (or not readable)

    def wait(self, default: float, cap: float) -> float:
        """The wait asked for, at most `cap`; `default` when none was."""
        return default if self.wait_s is None else min(self.wait_s, cap)


def parse_prefer(values: list[str]) -> Preferences:
    """The preferences of every `Prefer` header line in `values`; the first of a repeated name wins."""
    respond_async = False
    wait_s: float | None = None
    seen: set[str] = set()
    for value in values:
        for preference in value.split(","):
            name, _, argument = preference.split(";", 1)[0].partition("=")
            name = name.strip().lower()
            if not name or name in seen:
                continue
            seen.add(name)
            if name == "respond-async":
                respond_async = True
            elif name == "wait":
                wait_s = seconds(argument.strip().strip('"'))
    return Preferences(respond_async, wait_s)


def seconds(text: str) -> float | None:
    """`text` as a finite, non-negative number of seconds, else None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None
