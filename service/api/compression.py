"""gzip for answers at least TRIAL_FHIR_GZIP_MIN_BYTES long, when the client's `Accept-Encoding` asks for it:
Starlette's GZipMiddleware (streamed answers too: export files, NDJSON), with `Vary: Accept-Encoding`.

A compressed answer is another representation of the resource, so a strong ETag it carries (an export file's, from
Starlette's FileResponse) is made weak (RFC 9110 §8.8.3: a strong validator is byte-for-byte); FHIR's version ETags
(`W/"3"`) are weak already, and stay as they are. `If-None-Match`/`If-Match` compare versions, so they work the same
whatever the encoding. Brotli is left out: the one ASGI middleware for it (brotli-asgi) is not kept up as Starlette
is, and gzip gives most of the saving on JSON (a 1,000-entry searchset ~10x smaller).
"""

from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class WeakETagWhenEncoded:
    """Makes a strong ETag weak on an answer that went out with a Content-Encoding (in front of the compressor)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_weak(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers", ())
                if any(name.lower() == b"content-encoding" for name, _ in headers):
                    message["headers"] = [(name, b"W/" + value) if name.lower() == b"etag" and not value.startswith(
                        b"W/") else (name, value) for name, value in headers]
            await send(message)

        await self.app(scope, receive, send_weak)


def compressed(app: ASGIApp, *, minimum_size: int, level: int) -> ASGIApp:
    return WeakETagWhenEncoded(GZipMiddleware(app, minimum_size=minimum_size, compresslevel=level))
