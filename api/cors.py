"""Cross-origin access to the public API, so that the static site can live on another origin and other
projects' pages can call the API (docs/api.md, "Cross-origin use").

A pure ASGI wrapper rather than Starlette's CORSMiddleware: it touches only `/api/v1/` (never the
worker routes under `/api/v1/work/`, which browsers have no business calling), answers preflights
itself, and costs a request without an `Origin` header one scan of its headers. The API takes no
cookies or other credentials, so `*` (the default) is safe: a page on any origin can run programs,
exactly as curl can."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

PUBLIC_PREFIX = "/api/v1/"
PRIVATE_PREFIX = "/api/v1/work/"
ALLOWED_METHODS = b"GET, POST"
ALLOWED_HEADERS = b"Accept, Content-Type, If-None-Match, Prefer, Range"
# Response headers a page may read besides the CORS-safelisted ones.
EXPOSED_HEADERS = (
    b"Content-Location, Content-Range, Accept-Ranges, ETag, Location, Preference-Applied, Retry-After, "
    b"RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset"
)
PREFLIGHT_MAX_AGE = b"600"


class Cors:
    """Adds CORS headers to `/api/v1/` answers for allowed origins and answers their preflights."""

    def __init__(self, app: ASGIApp, origins: tuple[str, ...]) -> None:
        self.app = app
        self.any_origin = "*" in origins
        self.origins = frozenset(origin.encode() for origin in origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(PUBLIC_PREFIX) or path.startswith(PRIVATE_PREFIX):
            await self.app(scope, receive, send)
            return
        origin, preflight = _origin_and_preflight(scope)
        if origin is None:
            await self.app(scope, receive, send)
            return
        allowed = self.any_origin or origin in self.origins
        if preflight:
            await self._answer_preflight(send, origin if allowed else None)
            return
        if not allowed:
            await self.app(scope, receive, send)  # the browser withholds the answer from the page
            return
        extra = [*self._allow(origin), (b"access-control-expose-headers", EXPOSED_HEADERS)]

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def _allow(self, origin: bytes) -> list[tuple[bytes, bytes]]:
        if self.any_origin:
            return [(b"access-control-allow-origin", b"*")]
        return [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]

    async def _answer_preflight(self, send: Send, origin: bytes | None) -> None:
        if origin is None:
            body = json.dumps(
                {"error": {"code": "origin_not_allowed", "message": "this origin may not call the API"}}
            )
            headers = [(b"content-type", b"application/json"), (b"vary", b"Origin")]
            await _respond(send, 403, headers, body.encode())
            return
        headers = [
            *self._allow(origin),
            (b"access-control-allow-methods", ALLOWED_METHODS),
            (b"access-control-allow-headers", ALLOWED_HEADERS),
            (b"access-control-max-age", PREFLIGHT_MAX_AGE),
        ]
        await _respond(send, 204, headers, b"")


def _origin_and_preflight(scope: Scope) -> tuple[bytes | None, bool]:
    """The request's Origin, and whether it is a CORS preflight (OPTIONS naming a method to come)."""
    origin = None
    asks_method = False
    for name, value in scope["headers"]:
        if name == b"origin":
            origin = value
        elif name == b"access-control-request-method":
            asks_method = True
    return origin, asks_method and scope["method"] == "OPTIONS"


async def _respond(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
