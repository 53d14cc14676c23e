"""What a worker runs (`Job`) and the interface every runner implements (`Runner`).

Lifecycle of a runner: construct it (cheap, no I/O), then call `run` as often as wanted, concurrently;
the first `run` starts it (the sandbox runner mounts its tmpfs, makes its mount namespace and its
cgroups then; `await runner.start()` does it ahead of time and raises if the host cannot run
sandboxes). `close` waits for nothing: call it once the runs are over (the pull worker drains
first); it releases what `start` made. A closed runner may be started again by another `run`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from catalog.store import ImageLocation
from wire.result import Result, RunOutput, Status, StreamInfo
from wire.spec import Limits, RunSpec, parse_spec

T = TypeVar("T")


@dataclass(frozen=True)
class Job:
    id: str  # the request hash
    spec: RunSpec
    argv: tuple[str, ...]  # the spec's argv, or the catalogue entry's command filled from the options
    image_id: str
    image_digest: str  # "sha256:<hex>" of the image's own erofs file; runners find it with an ImageLocator
    runner: str
    outputs: tuple[str, ...] = ()  # globs of the output files to return (wire.paths); all when empty

    def to_json(self) -> dict:
        """A JSON form for queues shared between processes (the Redis state); no host paths in it.
        The spec travels in its public form, plus the limits the edge settled on."""
        return {
            "id": self.id,
            "spec": self.spec.to_json(),
            "limits": self.spec.limits.to_json(),
            "argv": list(self.argv),
            "image_id": self.image_id,
            "image_digest": self.image_digest,
            "runner": self.runner,
            "outputs": list(self.outputs),
        }

    @classmethod
    def from_json(cls, obj: dict) -> Job:
        """The inverse of `to_json` (WireError if the spec in it is not valid)."""
        spec = dataclasses.replace(parse_spec(obj["spec"]), limits=Limits.from_json(obj["limits"]))
        return cls(
            id=obj["id"],
            spec=spec,
            argv=tuple(obj["argv"]),
            image_id=obj["image_id"],
            image_digest=obj["image_digest"],
            runner=obj["runner"],
            outputs=tuple(obj["outputs"]),
        )


class StartOnce(Generic[T]):
    """A runner's start-up: run once and shared by concurrent callers, tried again by the next caller
    after it failed, and forgotten by `reset` (a closed runner starts again on its next use)."""

    def __init__(self, setup: Callable[[], Coroutine[Any, Any, T]]) -> None:
        self._setup = setup
        self._future: asyncio.Future[T] | None = None

    async def get(self) -> T:
        if self._future is None:
            self._future = asyncio.ensure_future(self._setup())
        future = self._future
        try:
            return await asyncio.shield(future)
        except Exception:
            if self._future is future:
                self._future = None
            raise

    async def reset(self) -> T | None:
        """Forget the start-up and return what it made, for the caller to release (None if none began
        or it failed)."""
        future, self._future = self._future, None
        if future is None:
            return None
        try:
            return await future
        except Exception:
            return None


class ImageLocator(Protocol):
    def locate(self, digest: str) -> ImageLocation:
        """Where the image with this digest is; LookupError when this host does not have it."""
        ...


class Runner(Protocol):
    name: str

    async def run(self, job: Job) -> RunOutput:
        """Never raises for the program's own failures; infrastructure failures give status "error"."""
        ...

    async def close(self) -> None: ...


def error_output(job: Job, message: str) -> RunOutput:
    """The output of a run the service could not carry out."""
    result = Result(
        id=job.id,
        image_id=job.image_id,
        image_digest=job.image_digest,
        status=Status.ERROR,
        exit_code=None,
        signal=None,
        wall_ms=0.0,
        cpu_ms=0.0,
        max_rss_kib=0,
        stdout=StreamInfo(0, False),
        stderr=StreamInfo(0, False),
        files=[],
        limits=job.spec.limits,
        runner=job.runner,
        message=message,
    )
    return RunOutput(result, b"", b"")
