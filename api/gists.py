"""`GET /api/v1/gists/<id>` and `GET /api/v1/gists/<id>/<rev>`: a gist's files and its checked pe.toml,
from the GitHub-shaped gist API at `PE_GIST_API_URL` (docs/gists.md).

The edge asks `{base}/gists/{id}` (or `/{id}/{rev}`) and answers a small JSON of its own:
`{"id", "rev", "files": {name: text | {"base64"}}, "config"?}`, where `config` is the gist's pe.toml,
checked here (wire/petoml.py for its shape, the catalogue for the image and option values) so that every
client gets the same answer, and pe.toml itself is not among `files`.

Answers are cached in memory, bounded in bytes: a revision never changes, so it is kept until evicted;
the latest revision is served for `PE_GIST_FRESH_S` seconds, then asked again with the upstream's ETag
(`If-None-Match`, a 304 costs no transfer), and served stale when the upstream is rate limited or down.
Truncated files are fetched from their `raw_url`, only from the upstream's own origin or GitHub's raw
host. Sizes are bounded: files, bytes per file, bytes in all.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import re
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.app import Edge, counted, etag_matches, request_header
from api.clients import client_key
from api.errors import ApiError
from api.lru import ByteLru
from api.ratelimit import quota_headers
from catalog.entry import CatalogEntry
from catalog.options import OptionError, check_value
from wire.errors import WireError
from wire.paths import normalize_path
from wire.petoml import FILE_NAME, GistConfig, PeTomlError, parse_pe_toml

# GitHub's gist ids are 20 or 32 lowercase hex digits (old ones decimal), revisions 40: bounded hex-ish.
GIST_ID = re.compile(r"[0-9a-f]{1,64}")
GIST_REV = re.compile(r"[0-9a-f]{4,64}")
MAX_FILES = 100
MAX_FILE_BYTES = 4 << 20  # any one file (the run API takes 16 MiB of input in all)
MAX_TOTAL_BYTES = 8 << 20  # all files together
MAX_UPSTREAM_BYTES = 16 << 20  # one upstream answer: JSON with every file's content up to 1 MB each
CACHE_BYTES = 32 << 20
TIMEOUT = httpx.Timeout(10.0, connect=5.0)
GITHUB_RAW = "https://gist.githubusercontent.com"  # where GitHub's raw_url points
IMMUTABLE = "public, max-age=31536000, immutable"


@dataclass
class Cached:
    body: bytes  # our JSON answer
    rev: str
    etag: str  # the upstream's, for If-None-Match ("" for a revision: never asked again)
    checked: float  # time.monotonic() when the upstream last confirmed it


def gist_cache(max_bytes: int = CACHE_BYTES) -> ByteLru[tuple[str, str], Cached]:
    """Answers by (id, rev or ""), least recently used first, at most `max_bytes` of bodies."""
    return ByteLru(max_bytes, lambda item: len(item.body))


class GistProxy:
    """Fetches, normalises and caches gists from the upstream at `base_url`."""

    def __init__(
        self, base_url: str, fresh_s: float, catalog: dict[str, CatalogEntry], token: str = ""
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.fresh_s = fresh_s
        self.token = token
        self.catalog = catalog
        self.cache = gist_cache()
        self.inflight: dict[tuple[str, str], asyncio.Future[Cached]] = {}
        upstream = urlsplit(self.base_url)
        self.raw_origins = {f"{upstream.scheme}://{upstream.netloc}", GITHUB_RAW}

    async def get(self, gist_id: str, rev: str) -> Cached:
        """The answer for a gist (`rev` "" for its latest revision). Requests for a gist the upstream is
        being asked about wait for that answer (one upstream request, not one each)."""
        key = (gist_id, rev)
        cached = self.cache.get(key)
        if cached is not None and (rev or time.monotonic() - cached.checked < self.fresh_s):
            return cached
        if key not in self.inflight:
            self.inflight[key] = asyncio.ensure_future(self.ask_upstream(gist_id, rev, cached))
            self.inflight[key].add_done_callback(lambda _: self.inflight.pop(key, None))
        return await asyncio.shield(self.inflight[key])  # one client leaving does not cancel the others

    async def ask_upstream(self, gist_id: str, rev: str, cached: Cached | None) -> Cached:
        """Ask the upstream (conditionally when `cached`), cache and return the answer."""
        path = f"/gists/{gist_id}/{rev}" if rev else f"/gists/{gist_id}"
        headers = {"Accept": "application/vnd.github+json"}
        if self.token:  # to the API only, never to a raw_url's host
            headers["Authorization"] = f"Bearer {self.token}"
        if cached is not None and cached.etag:
            headers["If-None-Match"] = cached.etag
        try:
            async with httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False) as client:
                status, upstream_headers, body = await fetch(client, self.base_url + path, headers)
                if status == 304 and cached is not None:
                    cached.checked = time.monotonic()
                    return cached
                upstream_error(status, upstream_headers, gist_id)
                answer, answer_rev = await self.normalise(client, gist_id, rev, body)
        except ApiError as error:
            if cached is not None and error.status in (502, 503):
                cached.checked = time.monotonic()  # not asked again for PE_GIST_FRESH_S
                return cached  # stale beats nothing while the upstream cannot answer
            raise
        item = Cached(answer, answer_rev, upstream_headers.get("etag", ""), time.monotonic())
        self.cache.put((gist_id, rev), item)
        if answer_rev and not rev:  # the latest revision is also that revision, for good
            self.cache.put((gist_id, answer_rev), Cached(answer, answer_rev, "", item.checked))
        return item

    async def normalise(
        self, client: httpx.AsyncClient, gist_id: str, rev: str, body: bytes
    ) -> tuple[bytes, str]:
        """Our answer from the upstream's gist JSON for revision `rev` ("": the latest, the first in its
        history), with truncated files fetched; and its revision."""
        try:
            gist = json.loads(body)
            listed = gist["files"]
            history = gist.get("history") or [{}]
            rev = rev or str(history[0].get("version") or "")
        except (ValueError, KeyError, TypeError, AttributeError, IndexError):
            raise unavailable("the gist API's answer is not a gist") from None
        if not isinstance(listed, dict):
            raise unavailable("the gist API's answer is not a gist")
        if gist.get("truncated") or len(listed) > MAX_FILES:
            raise too_large(f"the gist has more than {MAX_FILES} files")
        files: dict[str, str | dict[str, str]] = {}
        total = 0
        for name, meta in sorted(listed.items()):
            data = await self.file_bytes(client, name, meta)
            total += len(data)
            if total > MAX_TOTAL_BYTES:
                raise too_large(f"the gist's files are over {MAX_TOTAL_BYTES >> 20} MiB together")
            files[checked_name(name)] = as_content(data)
        answer: dict = {"id": gist_id, "rev": rev}
        config_text = files.pop(FILE_NAME, None)
        if config_text is not None:
            if not isinstance(config_text, str):
                raise PeTomlError("", "is not UTF-8 text")
            answer["config"] = check_config(config_text, self.catalog, files).to_json()
        answer["files"] = files
        return json.dumps(answer, ensure_ascii=False).encode(), rev

    async def file_bytes(self, client: httpx.AsyncClient, name: str, meta: object) -> bytes:
        """A listed file's bytes: its `content`, unless the API truncated it or it is not `size` bytes in
        UTF-8 (a binary file): then from its `raw_url`."""
        if not isinstance(meta, dict):
            raise unavailable(f"the gist API's entry for {name!r} is not a file")
        size = meta.get("size")
        if isinstance(size, int) and size > MAX_FILE_BYTES:
            raise too_large(f"{name} is {size} bytes, over {MAX_FILE_BYTES >> 20} MiB")
        content = meta.get("content")
        if isinstance(content, str) and not meta.get("truncated"):
            data = content.encode()
            if size is None or len(data) == size:
                return data
        raw_url = str(meta.get("raw_url") or "")
        parts = urlsplit(raw_url)
        if f"{parts.scheme}://{parts.netloc}" not in self.raw_origins:
            raise unavailable(f"{name} is truncated and its raw_url is not on an allowed host")
        status, headers, data = await fetch(client, raw_url, {}, limit=MAX_FILE_BYTES)
        upstream_error(status, headers, name)
        return data


async def fetch(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], limit: int = MAX_UPSTREAM_BYTES
) -> tuple[int, httpx.Headers, bytes]:
    """GET `url`: status, headers and body (at most `limit` bytes, else 413). A failure to connect or a
    timeout is 502 gist_upstream_unavailable."""
    try:
        async with client.stream("GET", url, headers=headers) as response:
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > limit:
                    raise too_large(f"the gist API's answer is over {limit >> 20} MiB")
            return response.status_code, response.headers, bytes(body)
    except httpx.HTTPError as error:
        raise unavailable(f"cannot reach the gist API ({type(error).__name__})") from None


def upstream_error(status: int, headers: httpx.Headers, what: str) -> None:
    """Raise the error for an upstream answer other than 200."""
    if status == 200:
        return
    if status == 404:
        raise ApiError(404, "gist_not_found", f"no gist {what} (or it is secret or was deleted)")
    retry_after = rate_limit_wait(status, headers)
    if retry_after is not None:
        raise ApiError(
            503,
            "gist_rate_limited",
            f"the gist API is rate limiting this server; try again in {retry_after} s",
            {"Retry-After": str(retry_after)},
        )
    raise unavailable(f"the gist API answered {status}")


def rate_limit_wait(status: int, headers: httpx.Headers) -> int | None:
    """Seconds to wait when the upstream says it is rate limiting us (GitHub: 403 or 429 with
    `retry-after`, or `x-ratelimit-remaining: 0` and the reset time in epoch seconds); else None."""
    if status not in (403, 429):
        return None
    if headers.get("retry-after", "").isdigit():
        return max(1, int(headers["retry-after"]))
    if headers.get("x-ratelimit-remaining") == "0":
        reset = headers.get("x-ratelimit-reset", "")
        wait = int(reset) - time.time() if reset.isdigit() else 60
        return max(1, math.ceil(wait))
    return 60 if status == 429 else None


def check_config(text: str, catalog: dict[str, CatalogEntry], files: dict | None = None) -> GistConfig:
    """A gist's pe.toml, checked: its shape (wire/petoml.py), then its image and option values against the
    catalogue, and that the files it opens are in the gist. PeTomlError names the key at fault."""
    config = parse_pe_toml(text)
    image_id = config.image.split("@", 1)[0]
    if image_id and image_id not in catalog:
        raise PeTomlError("image", f"no image {image_id!r} in the catalogue")
    if config.options and not image_id:
        raise PeTomlError("options", "give the image the options are for")
    if image_id:
        schema = {option["name"]: option for option in catalog[image_id].options}
        for name, value in config.options.items():
            if name not in schema:
                known = ", ".join(schema) or "none"
                raise PeTomlError(
                    f"options.{name}", f"image {image_id!r} has no such option (options: {known})"
                )
            try:
                check_value(schema[name], value)
            except OptionError as error:
                raise PeTomlError(f"options.{name}", error.reason) from None
    for index, name in enumerate(config.open):
        if files is not None and name not in files:
            raise PeTomlError(f"open[{index}]", f"no file {name!r} in the gist")
    return config


def checked_name(name: str) -> str:
    try:
        if normalize_path(name) == name:
            return name
    except WireError:
        pass
    raise ApiError(422, "bad_gist", f"the gist's file name {name!r} cannot be a file in the working folder")


def as_content(data: bytes) -> str | dict[str, str]:
    """Text when `data` is UTF-8 without NUL (as the playground keeps files), else {"base64"}."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        text = None
    if text is None or "\0" in text:
        return {"base64": base64.b64encode(data).decode()}
    return text


def too_large(message: str) -> ApiError:
    return ApiError(413, "gist_too_large", message)


def unavailable(message: str) -> ApiError:
    return ApiError(502, "gist_upstream_unavailable", message)


async def get_gist(request: Request) -> Response:
    edge: Edge = request.app.state.edge
    quota = await edge.rate_limits.charge(client_key(request, edge.proxies), edge.rate_limits.requests)
    gist_id, rev = request.path_params["gist_id"], request.path_params.get("rev", "")
    if not GIST_ID.fullmatch(gist_id):
        raise ApiError(400, "bad_gist_id", "a gist id is 1 to 64 lowercase hex digits")
    if rev and not GIST_REV.fullmatch(rev):
        raise ApiError(400, "bad_gist_rev", "a gist revision is 4 to 64 lowercase hex digits")
    proxy: GistProxy = request.app.state.gists
    answer = await proxy.get(gist_id, rev)
    etag = f'"{answer.rev}"' if answer.rev else ""
    cache_control = IMMUTABLE if rev else f"public, max-age={math.floor(proxy.fresh_s)}"
    headers = {"Cache-Control": cache_control, **quota_headers(quota)}
    if etag:
        headers["ETag"] = etag
        if etag_matches(request_header(request, b"if-none-match"), etag):
            return Response(status_code=304, headers=headers)
    return Response(answer.body, media_type="application/json", headers=headers)


def gist_proxy(edge: Edge) -> GistProxy:
    settings = edge.settings
    return GistProxy(settings.gist_api_url, settings.gist_fresh_s, edge.images.catalog, settings.gist_token)


def gist_routes() -> list[Route]:
    return [
        Route("/api/v1/gists/{gist_id}", counted("gists", get_gist), methods=["GET"]),
        Route("/api/v1/gists/{gist_id}/{rev}", counted("gists", get_gist), methods=["GET"]),
    ]
