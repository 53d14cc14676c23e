"""Who may put the site's pages in a frame (docs/embedding.md, "Who may frame what").

The embed page (`/embed/`) is made to be framed by other sites: its `frame-ancestors` are the
`frame_ancestors` setting (default `*`). Every other page — the full playground above all — may only be
framed by the site itself (`'self'`), so no other site can overlay it to trick a click (clickjacking).
The rule travels as a `Content-Security-Policy` response header: a `<meta>` CSP cannot carry
`frame-ancestors`, so a static host must send the same header itself.

The site's assets (`/assets/`) may be read by any site (`Access-Control-Allow-Origin: *`): embed.js,
running in another site's page, imports the output viewers (`assets/viewers.js`, an ES module, which
browsers fetch with CORS). They are the public files of the site, with no credentials involved."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

EMBED_PREFIX = "/embed"
ASSETS_PREFIX = "/assets/"
ANY_ORIGIN = (b"access-control-allow-origin", b"*")


def frame_ancestors(sources: tuple[str, ...]) -> bytes:
    """The CSP header value for `sources` (`'none'` when empty), checked by Settings (FRAME_SOURCE)."""
    return ("frame-ancestors " + (" ".join(sources) or "'none'")).encode()


class FramePolicy:
    """Adds `Content-Security-Policy: frame-ancestors …` to the HTML pages `app` serves: the embed
    page's sources for paths under /embed, `'self'` for the others; and `ANY_ORIGIN` to /assets/."""

    def __init__(self, app: ASGIApp, embed_sources: tuple[str, ...]) -> None:
        self.app = app
        self.embed_policy = frame_ancestors(embed_sources)
        self.page_policy = frame_ancestors(("'self'",))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        is_embed = path == EMBED_PREFIX or path.startswith(EMBED_PREFIX + "/")
        policy = self.embed_policy if is_embed else self.page_policy
        is_asset = path.startswith(ASSETS_PREFIX)

        async def send_with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers", [])
                is_html = any(
                    name == b"content-type" and value.startswith(b"text/html") for name, value in headers
                )
                if is_html:
                    message = {**message, "headers": [*headers, (b"content-security-policy", policy)]}
                elif is_asset:
                    message = {**message, "headers": [*headers, ANY_ORIGIN]}
            await send(message)

        await self.app(scope, receive, send_with_policy)
