"""HEAD, OPTIONS and `Allow`, for every URL, from the app's own route table (R4 http.html: a server SHOULD
support HEAD wherever it supports GET; `Allow` lists what a URL really supports, on a 405 and in answer to OPTIONS).

HEAD is answered as the GET it stands for (the same access check and audit), without the body; OPTIONS (other than a
CORS preflight, which the CORS middleware outside answers) with the URL's methods and no body.
"""

from collections.abc import Iterable
from typing import Any

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def flat_routes(routes: Iterable[Any]) -> Iterable[Any]:
    """Every route of a route table, included routers flattened."""
    for route in routes:
        if hasattr(route, "effective_route_contexts"):
            yield from route.effective_route_contexts()
        else:
            yield route


def allowed_methods(app: Any, scope: Scope) -> list[str]:
    """The methods some route of `app` answers at this request's path (HEAD beside GET, OPTIONS beside any)."""
    path_scope = {**scope, "method": "GET"}
    methods: set[str] = set()
    for route in flat_routes(app.routes):
        match, _ = route.matches({**path_scope, "method": "\x00"})  # any method: a path match is PARTIAL
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    if "GET" in methods:
        methods.add("HEAD")
    if methods:
        methods.add("OPTIONS")
    order = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return sorted(methods, key=lambda m: order.index(m) if m in order else len(order))


class Methods:
    """HEAD as GET without the body, OPTIONS with `Allow`, in front of `inner` (the front door or the routes)."""

    def __init__(self, inner: ASGIApp, app: Any) -> None:
        self.inner = inner
        self.app = app  # whose route table says what each URL supports

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("HEAD", "OPTIONS"):
            return await self.inner(scope, receive, send)
        if scope["method"] == "OPTIONS":
            allowed = allowed_methods(self.app, scope)
            status = 200 if allowed else 404
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"allow", ", ".join(allowed).encode()), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b""}
            await send(message)
        as_get = {**scope, "method": "GET"}
        await self.inner(as_get, receive, headers_only)
        if "route" in as_get:  # the route that answered, for the request log and metrics (service/ops/layer.py)
            scope["route"] = as_get["route"]
