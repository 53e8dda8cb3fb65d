"""gzip for answers at least TRIAL_FHIR_GZIP_MIN_BYTES long, when the client's `Accept-Encoding` asks for it:
Starlette's gzip responder (streamed answers too: export files, NDJSON), with `Vary: Accept-Encoding`.

The decision is taken from the answer's start: an answer whose `Content-Length` is below the threshold (almost
every read and search page), or that is encoded already, goes out as it is, untouched and without the responder's
per-request machinery (a Headers parse of the request, two responder objects, a content-type normalisation: ~30 µs
a request, measured with bench/ops.py, for answers it would not have compressed anyway). Only an answer that may be
compressed — large, or streamed without a length — is handed to Starlette's `GZipResponder` (or its
`IdentityResponder` when the client does not accept gzip, which adds the `Vary`), message by message from its start,
exactly as `GZipMiddleware` would have. A streamed answer with a length below the threshold (a small export file) is
sent as it is, where `GZipMiddleware` would compress any stream.

A compressed answer is another representation of the resource, so a strong ETag it carries (an export file's, from
Starlette's FileResponse) is made weak (RFC 9110 §8.8.3: a strong validator is byte-for-byte); FHIR's version ETags
(`W/"3"`) are weak already, and stay as they are. `If-None-Match`/`If-Match` compare versions, so they work the same
whatever the encoding. Brotli is left out: the one ASGI middleware for it (brotli-asgi) is not kept up as Starlette
is, and gzip gives most of the saving on JSON (a 1,000-entry searchset ~10x smaller).
"""

from starlette.middleware.gzip import GZipResponder, IdentityResponder
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def _weak_etags(message: Message) -> None:
    """A strong ETag made weak on an answer start that carries a Content-Encoding."""
    headers = message.get("headers", ())
    if any(name.lower() == b"content-encoding" for name, _ in headers):
        message["headers"] = [(name, b"W/" + value) if name.lower() == b"etag" and not value.startswith(b"W/")
                              else (name, value) for name, value in headers]


def _small_or_encoded(start: Message, minimum_size: int) -> bool:
    """Whether an answer goes out as it is, from its start message: encoded already, or a Content-Length below
    the threshold."""
    for name, value in start.get("headers", ()):
        name = name.lower()
        if name == b"content-encoding":
            return True
        if name == b"content-length":
            try:
                return int(value) < minimum_size
            except ValueError:
                return False
    return False


class Compressed:
    def __init__(self, app: ASGIApp, *, minimum_size: int, level: int) -> None:
        self.app = app
        self.minimum_size = minimum_size
        self.level = level

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        accepts_gzip = False
        for name, value in scope["headers"]:
            if name == b"accept-encoding" and b"gzip" in value:
                accepts_gzip = True
                break
        route = None  # send as it is, or a Starlette responder's send_with_compression, once the start is seen

        async def send_weak(message: Message) -> None:
            if message["type"] == "http.response.start":
                _weak_etags(message)
            await send(message)

        async def deciding_send(message: Message) -> None:
            nonlocal route
            if route is None:
                if message["type"] != "http.response.start":
                    return await send(message)
                if _small_or_encoded(message, self.minimum_size):
                    route = send
                else:
                    # used as its __call__ would, after it set its `send`: the app is running already
                    responder = GZipResponder(self.app, self.minimum_size, compresslevel=self.level) \
                        if accepts_gzip else IdentityResponder(self.app, self.minimum_size)
                    responder.send = send_weak
                    route = responder.send_with_compression
            await route(message)

        await self.app(scope, receive, deciding_send)


def compressed(app: ASGIApp, *, minimum_size: int, level: int) -> ASGIApp:
    return Compressed(app, minimum_size=minimum_size, level=level)

