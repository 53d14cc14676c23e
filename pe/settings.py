"""One typed settings object, read from `PE_*` environment variables; every field is also a `pe` flag."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

RUNNER_KINDS = ("sandbox", "vm")
# A CSP source for frame_ancestors (api/sitepolicy.py), strictly enough that no value can end the
# directive or add another: 'self', 'none', *, a scheme (https:), or a host with an optional scheme,
# `*.` wildcard and port.
FRAME_SOURCE = re.compile(
    r"'self'|'none'|\*|[a-z][a-z0-9+.-]*:|([a-z][a-z0-9+.-]*://)?(\*\.)?[A-Za-z0-9.-]+(:(\d+|\*))?"
)


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pe"


@dataclass(frozen=True)
class Settings:
    """Everything an operator can set. The docstring of each field is its help text (see `FIELD_HELP`)."""

    host: str = "127.0.0.1"
    port: int = 8000
    state: str = "memory"
    runners: tuple[str, ...] = ("sandbox",)
    worker_token: str = ""
    worker_image_cache_bytes: int = 10 << 30
    max_connections: int = 1000
    idle_timeout_s: float = 60.0
    max_streams: int = 100
    grace_s: float = 20.0
    gist_api_url: str = "https://api.github.com"
    gist_fresh_s: float = 60.0
    gist_token: str = ""
    cache_dir: Path = field(default_factory=_default_cache_dir)
    slots: int = field(default_factory=lambda: os.cpu_count() or 1)
    max_body_bytes: int = 20 << 20
    run_store_bytes: int = 256 << 20
    queue_size: int = 1000
    client_queue_size: int = 100
    lease_s: float = 30.0
    worker_wait_s: float = 20.0
    tls_cert: str = ""
    tls_key: str = ""
    log_level: str = "info"
    trusted_proxies: tuple[str, ...] = ()
    forwarded_header: str = "x-forwarded-for"
    cors_origins: tuple[str, ...] = ("*",)
    frame_ancestors: tuple[str, ...] = ("*",)
    rate_requests_per_s: float = 20.0
    rate_requests_burst: int = 100
    rate_runs_per_s: float = 1.0
    rate_runs_burst: int = 20
    rate_fresh_per_s: float = 0.1
    rate_fresh_burst: int = 5
    vm_accel: str = "auto"
    vm_pool_mib: int = 1024

    @property
    def images_dir(self) -> Path:
        return self.cache_dir / "images"

    @property
    def worker_images_dir(self) -> Path:
        """The image cache of `pe worker` (worker/imagecache.py)."""
        return self.cache_dir / "worker-images"

    def __post_init__(self) -> None:
        for runner in self.runners:
            if runner not in RUNNER_KINDS:
                raise ValueError(f"PE_RUNNERS: unknown runner {runner!r} (known: {', '.join(RUNNER_KINDS)})")
        if not self.runners:
            raise ValueError("PE_RUNNERS: at least one runner is needed")
        if self.state != "memory" and not self.state.startswith("redis://"):
            raise ValueError(f"PE_STATE: expected 'memory' or a redis:// URL, got {self.state!r}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("PE_TLS_CERT and PE_TLS_KEY must be given together")
        for name in (
            "port",
            "max_connections",
            "max_streams",
            "slots",
            "max_body_bytes",
            "queue_size",
            "client_queue_size",
            "lease_s",
            "worker_wait_s",
            "worker_image_cache_bytes",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"PE_{name.upper()}: must be positive")
        for cidr in self.trusted_proxies:
            try:
                ipaddress.ip_network(cidr)
            except ValueError as error:
                raise ValueError(f"PE_TRUSTED_PROXIES: {error}") from None
        if self.vm_pool_mib < 0:
            raise ValueError("PE_VM_POOL_MIB: must be 0 (no pool) or more")
        if self.gist_fresh_s < 0:
            raise ValueError("PE_GIST_FRESH_S: must be 0 (always ask again) or more")
        if self.vm_accel not in ("auto", "kvm", "tcg"):
            raise ValueError("PE_VM_ACCEL: expected 'auto', 'kvm' or 'tcg'")
        if self.forwarded_header not in ("x-forwarded-for", "forwarded"):
            raise ValueError("PE_FORWARDED_HEADER: expected 'x-forwarded-for' or 'forwarded'")
        for source in self.frame_ancestors:
            if not FRAME_SOURCE.fullmatch(source):
                raise ValueError(
                    f"PE_FRAME_ANCESTORS: {source!r} is not a frame-ancestors source "
                    "(e.g. *, 'self', https:, https://docs.example.org, https://*.example.org)"
                )
        for bucket in ("requests", "runs", "fresh"):
            if getattr(self, f"rate_{bucket}_per_s") < 0 or getattr(self, f"rate_{bucket}_burst") < 1:
                raise ValueError(f"PE_RATE_{bucket.upper()}_PER_S must be >= 0 (0: off), _BURST >= 1")

    @property
    def runner_default(self) -> str:
        return self.runners[0]


FIELD_HELP: dict[str, str] = {
    "host": "address to listen on",
    "port": "TCP port to listen on",
    "state": "where queues, results and counters live: 'memory' or a redis:// URL",
    "runners": "runner kinds this service offers, comma separated; the first is the default",
    "worker_token": "bearer token that workers present on /api/v1/work/ routes",
    "worker_image_cache_bytes": "bytes of images a `pe worker` keeps (least recently used go first)",
    "max_connections": "most client connections kept open at once",
    "idle_timeout_s": "seconds an idle connection is kept before GOAWAY and close",
    "max_streams": "most concurrent HTTP/2 streams per connection",
    "grace_s": "seconds a stopping edge (SIGTERM) gives accepted requests to be answered",
    "gist_api_url": "base URL of the GitHub-shaped gist API",
    "gist_fresh_s": "seconds a gist's latest revision is served from the cache before the API is asked again",
    "gist_token": "bearer token for the gist API (GitHub allows 60 requests an hour without one)",
    "cache_dir": "folder for images, mounts and build caches",
    "slots": "runs executed at once by the in-process worker",
    "max_body_bytes": "largest request body accepted (413 above)",
    "run_store_bytes": "bytes of results kept for GET /api/v1/runs/<id> (least recently used go first)",
    "queue_size": "most jobs waiting for a worker (503 above)",
    "client_queue_size": "most jobs one client may have waiting (429 above)",
    "lease_s": "seconds a worker holds a job unless it renews the lease; then the job runs elsewhere",
    "worker_wait_s": "longest a worker's pull waits for a job (long poll); unseen twice as long, it is gone",
    "tls_cert": "PEM certificate file; serves HTTPS (HTTP/2 by ALPN) when given with tls_key",
    "tls_key": "PEM private key file for tls_cert",
    "log_level": "debug, info, warning or error",
    "trusted_proxies": "proxy networks (comma-separated CIDRs) whose forwarding header names the client",
    "forwarded_header": "the header trusted proxies name the client in: x-forwarded-for or forwarded",
    "cors_origins": "origins whose pages may call the API (comma-separated; * for any, empty for none)",
    "frame_ancestors": "sites that may frame /embed/ (CSP frame-ancestors sources, comma-separated; * for"
    " any, empty for none); the other pages allow only 'self'",
    "rate_requests_per_s": "run and result requests per second per client (0: no limit)",
    "rate_requests_burst": "run and result requests a client may make at once",
    "rate_runs_per_s": "runs not answered from the cache per second per client (0: no limit)",
    "rate_runs_burst": "runs not answered from the cache a client may start at once",
    "rate_fresh_per_s": 'fresh runs ("cache": false) per second per client (0: no limit)',
    "rate_fresh_burst": "fresh runs a client may start at once",
    "vm_accel": "QEMU accelerator of the vm runner: kvm, tcg, or auto (KVM when a probe boot works)",
    "vm_pool_mib": "guest memory the vm runner's warm pool of pre-booted guests may hold (0: no pool)",
}


def env_name(name: str) -> str:
    return "PE_" + name.upper()


def _convert(raw: str, kind: Any) -> Any:
    if kind is int:
        return int(raw)
    if kind is float:
        return float(raw)
    if kind is Path:
        return Path(raw).expanduser()
    if kind == tuple[str, ...]:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return raw


def load_settings(overrides: dict[str, str] | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Settings from the environment, then from `overrides` (raw strings, e.g. command-line flags)."""
    environ = os.environ if environ is None else environ
    hints = get_type_hints(Settings)
    values: dict[str, Any] = {}
    for item in dataclasses.fields(Settings):
        raw = environ.get(env_name(item.name))
        if overrides and overrides.get(item.name) is not None:
            raw = overrides[item.name]
        if raw is None:
            continue
        try:
            values[item.name] = _convert(raw, hints[item.name])
        except ValueError as error:
            raise ValueError(f"{env_name(item.name)}: cannot read {raw!r}: {error}") from None
    return Settings(**values)
