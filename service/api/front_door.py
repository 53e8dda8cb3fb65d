"""The front door: the one adapter for the two hot paths, `GET /fhir/{type}` (a portal's search) and
`POST /fhir/{type}` (an EHR's create), answered in front of FastAPI.

FastAPI's and Starlette's layers (middleware, exception wrappers, routing over some 70 routes, dependency
solving, request and response objects) cost as much CPU as a search itself and ~40% of a single POST (see
bench/README.md). Here those requests take the edge rules (`service.api.middleware.edge`: 406, 415, 413), the
body reader and the response of the routed adapter (`service.api.http`), call the same interaction of the core,
and render failures through the same function as the app's exception handlers (`service.errors.failure_response`).
Every such request is answered here, once: nothing is passed on or run again. Everything else goes to the app.

The FastAPI routes for these two operations stay, documented in the OpenAPI; with TRIAL_FHIR_FRONT_DOOR=false
they answer instead, and tests/api/test_documented_operations.py sends every documented operation both ways and
compares the answers.
"""

import logging
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.http import (
    base_of,
    context_of,
    parse_body,
    peer_address,
    public_base,
    stored_response,
    trusted_proxies,
)
from service.api.middleware import body_too_large, edge, some_headers
from service.core.interactions import Core
from service.errors import BadRequest, FhirError, failure_response
from service.ops.observed import current as current_request
from service.responses import FHIR_JSON

log = logging.getLogger("trial_fhir")


class FrontDoor:
    def __init__(self, app: ASGIApp, core: Core, resource_types: Iterable[str], state: Any) -> None:
        self.app = app  # what answers every other request
        self.core = core
        self.state = state  # the app's state: its settings and authenticator (service.api.http.caller_of)
        self.paths = {f"/fhir/{t}": t for t in resource_types}
        self.templates = {t: path for path, t in self.paths.items()}
        self._bases: dict[tuple[Any, ...], str] = {}  # (scheme, host, server, root path) -> base
        self.proxies = trusted_proxies(core.settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "POST"):
            return await self.app(scope, receive, send)
        path, root = scope["path"], scope.get("root_path", "")
        resource_type = self.paths.get(path[len(root):] if root and path.startswith(root) else path)
        if resource_type is None:
            return await self.app(scope, receive, send)
        observed = current_request()
        if observed is not None:  # the request log's and the metrics' route (FastAPI's routing is not run)
            observed.route = self.templates[resource_type]
        # The edge's errors (406, 415, 413), a body found over the limit while read and a fault (500) are FHIR JSON
        # whatever the client asked, as in the app (FhirFormatMiddleware answers the first two itself, and
        # ServerErrorMiddleware, outside it, the third); from the interaction on, the type asked for.
        output = FHIR_JSON
        try:
            settings = self.core.settings
            asked, has_body = edge(scope, settings.max_body_bytes, settings.max_param_repeats, settings.max_or_values)
            headers = some_headers(scope, b"prefer", b"host", b"if-none-exist", b"authorization", b"x-request-id",
                                   first=True)
            prefer = headers.get(b"prefer")
            base = self._base(scope, headers.get(b"host", ""))
            ctx = await context_of(self.state, scope, base, authorization=headers.get(b"authorization"),
                                   prefer=prefer, request_id=headers.get(b"x-request-id"))
            if scope["method"] == "GET":
                params = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
                output = asked
                found = await self.core.search(ctx, resource_type, params)
            else:
                raw = await self._body(receive) if has_body else b""
                output = asked
                stored = await self.core.create(ctx, resource_type, parse_body(raw),
                                                if_none_exist=headers.get(b"if-none-exist"))
                response = stored_response(stored, ctx.base_url, prefer, status_code=stored.status, location=True)
        except FhirError as exc:  # a 4xx: rendered as the app renders it
            response = failure_response(exc, scope["method"], path)
        except Exception as exc:  # a database fault's 503 (service/faults.py), or the app's 500 (traceback to the log)
            output = FHIR_JSON
            response = failure_response(exc, scope["method"], path)
        else:
            if scope["method"] == "GET":  # the searchset as it is: no Response object on the hottest path
                await send({"type": "http.response.start", "status": 200, "headers": [
                    (b"content-length", str(len(found)).encode()), (b"content-type", output.encode())]})
                await send({"type": "http.response.body", "body": found})
                return
        if output != FHIR_JSON:
            response.headers["content-type"] = output
        await response(scope, receive, send)

    async def _body(self, receive: Receive) -> bytes:
        """The request body, 413 as soon as it grows past the limit (Content-Length was checked by `edge`)."""
        limit = self.core.settings.max_body_bytes
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise BadRequest("The client went away before sending the whole body", expression="body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise body_too_large(limit)
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    def _base(self, scope: Scope, host: str) -> str:
        """What `service.api.http.base_url(request)` gives (`public_base`: TRIAL_FHIR_BASE_URL, else what a trusted
        proxy forwards, else scheme, host and root path of the request, + /fhir), kept per origin."""
        settings = self.core.settings
        if settings.base_url:
            return base_of(settings.base_url, "")
        if self.proxies and peer_address(scope) in self.proxies:  # forwarded: not kept (the key would grow)
            return public_base(scope, settings)
        key = (scope.get("scheme"), host, tuple(scope.get("server") or ()), scope.get("root_path", ""))
        base = self._bases.get(key)
        if base is None:
            base = public_base(scope, settings)
            if len(self._bases) < 256:  # the Host header is the client's: don't keep every one
                self._bases[key] = base
        return base
