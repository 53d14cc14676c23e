"""Formats shared by the edge, the workers, the guest and the browser: pure Python, standard library only."""

from wire.errors import WireError
from wire.result import Result, RunOutput, Status
from wire.spec import Limits, RunSpec

__all__ = ["Limits", "Result", "RunOutput", "RunSpec", "Status", "WireError"]
