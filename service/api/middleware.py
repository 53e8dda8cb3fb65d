"""HTTP edge rules for every FHIR request, as one pure ASGI middleware:

- `_format` and `Accept` negotiation: JSON only (`json`, `application/json`, `application/fhir+json`);
  asking for `application/json` gets that Content-Type, XML or anything else gets 406;
- request bodies must be JSON (`application/fhir+json` or `application/json`), else 415;
- request bodies larger than `max_body_bytes` get 413 (Content-Length, or counted while streaming).
"""

from urllib.parse import parse_qsl

import orjson

from fhir_mappings.outcome import issue, outcome

JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir", "text/json")
JSON_FORMATS = {"json", "application/json", "application/fhir+json", "application/json+fhir", "text/json"}


def choose_output(query: dict[str, str], accept: str) -> str | None:
    """The response Content-Type the client asked for; None when it asked only for what we can't give."""
    fmt = query.get("_format")
    if fmt is not None:
        fmt = fmt.split(";")[0].strip().lower().replace(" ", "+")  # an unescaped + arrives as a space
        if fmt not in JSON_FORMATS:
            return None
        return "application/json" if fmt == "application/json" else "application/fhir+json"
    if not accept:
        return "application/fhir+json"
    wanted = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    for media in wanted:
        if media in ("application/fhir+json", "application/json+fhir", "*/*", "application/*"):
            return "application/fhir+json"
        if media in ("application/json", "text/json"):
            return "application/json"
    if any(m.startswith("text/html") for m in wanted):  # a browser on a FHIR URL: give it JSON
        return "application/fhir+json"
    return None


def some_headers(scope, *names: bytes) -> dict[bytes, str]:
    """The named request headers (lower-case names; the last of a repeated one), decoding nothing else."""
    found = {}
    for key, value in scope["headers"]:
        key = key.lower()
        if key in names:
            found[key] = value.decode("latin-1")
    return found


class FhirFormatMiddleware:
    def __init__(self, app, max_body_bytes: int, prefix: str = "/fhir") -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.prefix = prefix

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            return await self.app(scope, receive, send)
        # read only the four headers this needs, and the query only when it names _format (the common GET of a
        # search pays a few µs here, not a dict of every header and a parse of the whole query)
        headers = some_headers(scope, b"accept", b"content-length", b"content-type", b"transfer-encoding")
        accept, length, ctype = headers.get(b"accept"), headers.get(b"content-length"), headers.get(b"content-type")
        chunked = b"transfer-encoding" in headers
        raw_query = scope.get("query_string", b"")
        named = b"_format" in raw_query or b"%" in raw_query  # (the name itself may come percent-encoded)
        query = dict(parse_qsl(raw_query.decode("latin-1"), keep_blank_values=True)) if named else {}
        output = choose_output(query, accept or "")
        if output is None:
            return await _reject(send, 406, "not-supported",
                                 "This server speaks FHIR JSON only: use _format=json or Accept: application/fhir+json",
                                 "_format" if "_format" in query else "Accept")
        method = scope["method"]
        has_body = method in ("POST", "PUT", "PATCH") and (length not in (None, "0") or chunked)
        if has_body:
            ctype = (ctype or "").split(";")[0].strip().lower()
            if ctype not in JSON_TYPES and not (scope["path"].endswith("/_search")
                                                and ctype == "application/x-www-form-urlencoded"):
                return await _reject(send, 415, "not-supported",
                                     f"Unsupported Content-Type '{ctype or '(none)'}': send application/fhir+json",
                                     "Content-Type")
            if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
                return await _reject(send, 413, "too-costly",
                                     f"Request body of {length} bytes exceeds the limit of {self.max_body_bytes}",
                                     "Content-Length")
            receive = self._counting(receive, send)

        async def send_with_format(message):
            if message["type"] == "http.response.start":
                message["headers"] = [
                    (k, b"application/json") if k.lower() == b"content-type" and v.startswith(b"application/fhir+json")
                    else (k, v) for k, v in message.get("headers", [])
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_format if output == "application/json" else send)
        except _BodyTooLarge:
            await _reject(send, 413, "too-costly", f"Request body exceeds the limit of {self.max_body_bytes} bytes",
                          "Content-Length")

    def _counting(self, receive, send):
        seen = 0
        limit = self.max_body_bytes

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _BodyTooLarge()
            return message

        return counted


class _BodyTooLarge(Exception):
    pass


async def _reject(send, status: int, code: str, diagnostics: str, expression: str) -> None:
    body = orjson.dumps(outcome([issue(code, diagnostics, expression)]))
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/fhir+json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
