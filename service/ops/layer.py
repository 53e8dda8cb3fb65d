"""The observing layer: the outermost ASGI layer of the app (service/main.py), so every request, whichever adapter
answers it (the front door, FastAPI's routes, the edge's own refusals, /docs), is logged and counted once, here.

Per request it takes the client's `X-Request-Id` (when printable and at most 64 characters) or makes one, sends it
back as `X-Request-Id` and hands it to the interaction core (the audit's request id is the same), then writes one
request log line (service/ops/logs.py) and the request metrics (service/ops/metrics.py). The route is the template
(`/fhir/Observation/{id}`), never the path: ids and queries stay out of logs and out of label values. A request no
route matched is `<unmatched>`.

Liveness, readiness and metrics requests are counted but not logged when they succeed (probes every few seconds
would drown the log).
"""

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.http import new_request_id
from service.ops import metrics
from service.ops.logs import REQUEST_LOGGER
from service.ops.observed import CURRENT, Observed

log = logging.getLogger(REQUEST_LOGGER)

UNMATCHED = "<unmatched>"
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})


def route_of(scope: Scope, observed: Observed) -> str:
    """The route template that answered: FastAPI's (scope["route"]), else the one the front door noted."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    return observed.route or UNMATCHED


class Observe:
    def __init__(self, app: ASGIApp, *, request_log: bool, count: bool) -> None:
        self.app = app
        self.request_log = request_log
        self.count = count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        sent = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                sent = value.decode("latin-1")
                break
        observed = Observed(new_request_id(sent))
        echoed = (b"x-request-id", observed.request_id.encode("latin-1"))
        status = 500  # unless an answer starts

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), echoed]
            await send(message)

        token = CURRENT.set(observed)
        try:
            await self.app(scope, receive, send_observed)
        finally:
            CURRENT.reset(token)
            elapsed = time.perf_counter() - start
            route = route_of(scope, observed)
            method = scope["method"]
            if self.count:
                metrics.observe_request(method, route, status, elapsed)
            if self.request_log and not (route in QUIET_ROUTES and status < 400):
                self._log(observed, method, route, status, elapsed)

    @staticmethod
    def _log(observed: Observed, method: str, route: str, status: int, elapsed: float) -> None:
        fields = {"request_id": observed.request_id, "method": method, "route": route, "status": status,
                  "latency_ms": round(elapsed * 1000, 2), "client_id": observed.client}
        issue = observed.issue
        if issue is not None and 400 <= status < 500:
            fields["issue_code"] = issue.code
            if issue.expression:
                fields["issue_expression"] = list(issue.expression)
        level = logging.WARNING if status >= 500 else logging.INFO
        if log.isEnabledFor(level):  # the record made directly: Logger.log would walk the stack for the caller's line
            log.handle(log.makeRecord(REQUEST_LOGGER, level, __file__, 0, "%s %s %d", (method, route, status), None,
                                      extra=fields))
