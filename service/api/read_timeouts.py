"""Slow clients are cut off (issue 12 §2): a request's headers and its body must arrive in bounded time.

A client that opens connections and sends half a request, or headers and then a trickle of body (slowloris),
would otherwise hold a connection and a buffer forever: uvicorn times out idle keep-alive connections only.

* **Body** (`TRIAL_FHIR_BODY_TIMEOUT_S`): `BodyReadTimeout`, pure ASGI middleware, so `service.main:app` has it
  under any server. The whole body must have arrived that long after the request reached the app; if it has not,
  the answer is `408` with an OperationOutcome and `Connection: close` (nothing was applied: no interaction runs
  before its body is complete), or, if an answer had already begun, the app is told the client went away.
* **Headers** (`TRIAL_FHIR_HEADER_TIMEOUT_S`, `TRIAL_FHIR_MAX_HEADER_BYTES`, `TRIAL_FHIR_MAX_HEADER_COUNT`):
  before the headers are complete there is no ASGI request yet, so this lives in the HTTP protocol:
  `TimedHttpToolsProtocol`, uvicorn's httptools protocol with a timer from the connection (or the first byte of
  the next request on a kept-alive one) until the headers are complete; when it fires the connection is
  closed. Too many or too large headers get `431` and the connection is closed. `trial-fhir serve` uses it;
  plain uvicorn gets it with `--http service.api.read_timeouts:TimedHttpToolsProtocol`.
"""

from __future__ import annotations

import asyncio
import logging
from asyncio import TimerHandle
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from fhir_mappings.outcome import issue, outcome
from service.settings import get_settings

log = logging.getLogger("service.read_timeouts")

PROTOCOL_PATH = "service.api.read_timeouts:TimedHttpToolsProtocol"  # uvicorn's `http=` / `--http`


def _outcome_bytes(code: str, text: str) -> bytes:
    return orjson.dumps(outcome([issue(code, text)]))


class BodyReadTimeout:
    """ASGI middleware: the request body must be complete within `timeout_s` of the request reaching the app."""

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app, self.timeout_s = app, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        state = {"body_done": False, "timed_out": False, "started": False}

        async def timed_receive() -> Message:
            if state["timed_out"]:
                return {"type": "http.disconnect"}
            if state["body_done"]:  # later calls wait for a disconnect (streaming answers): no limit on those
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                state["timed_out"] = True
                log.warning("request body not complete after %.1f s: %s %s answered 408", self.timeout_s,
                            scope.get("method"), scope.get("path"))
                if not state["started"]:
                    await self._answer_408(send)
                return {"type": "http.disconnect"}
            if message["type"] != "http.request" or not message.get("more_body", False):
                state["body_done"] = True
            return message

        async def tracked_send(message: Message) -> None:
            if state["timed_out"]:
                return  # the answer was our 408 (or is cut short): whatever the app says after is dropped
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, timed_receive, tracked_send)
        except Exception:
            if not state["timed_out"]:
                raise
            # the app failed on the body it never got (a disconnect): the client has had its 408 already

    async def _answer_408(self, send: Send) -> None:
        body = _outcome_bytes("timeout", f"The request body did not arrive within {self.timeout_s:g} s; the "
                                         "request was not applied.")
        await send({"type": "http.response.start", "status": 408,
                    "headers": [(b"content-type", b"application/fhir+json"),
                                (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class TimedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a deadline on the request headers and caps on their count and size."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()
        self.header_timeout_s = settings.header_timeout_s
        self.max_header_bytes = settings.max_header_bytes
        self.max_header_count = settings.max_header_count
        self.header_timer: TimerHandle | None = None
        self.header_bytes = 0
        self.header_limit_hit: str | None = None

    # the timer runs from the connection, or the first byte of a request, until its headers are complete
    def _start_header_timer(self) -> None:
        self._cancel_header_timer()
        self.header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _header_timeout(self) -> None:
        self.header_timer = None
        if not self.transport.is_closing():
            log.warning("request headers not complete after %.1f s: connection closed", self.header_timeout_s)
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.header_bytes = 0
        self._start_header_timer()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._count_header_bytes(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._count_header_bytes(len(name) + len(value) + 4)
        if len(self.headers) > self.max_header_count:
            self._header_limit(f"more than {self.max_header_count} request headers")

    def _count_header_bytes(self, n: int) -> None:
        self.header_bytes += n
        if self.header_bytes > self.max_header_bytes:
            self._header_limit(f"request line and headers larger than {self.max_header_bytes} bytes")

    def _header_limit(self, what: str) -> None:
        self.header_limit_hit = what
        raise ValueError(what)  # httptools stops parsing; data_received answers through send_400_response

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if not self.header_limit_hit:
            super().send_400_response(msg)
            return
        self._cancel_header_timer()
        body = _outcome_bytes("too-long", f"Request refused: {self.header_limit_hit}.")
        self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                             b"content-type: application/fhir+json\r\ncontent-length: "
                             + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)
        self.transport.close()
