"""HTTP edge rules for every FHIR request, as one pure ASGI middleware:

- `_format` and `Accept` negotiation: JSON only (`json`, `application/json`, `application/fhir+json`);
  asking for `application/json` gets that Content-Type, XML or anything else gets 406;
- request bodies must be JSON (`application/fhir+json` or `application/json`; a PATCH's may be
  `application/json-patch+json`), else 415;
- request bodies larger than `max_body_bytes` get 413 (Content-Length, or counted while streaming).
"""

from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhir_mappings.json_patch import JSON_PATCH, MERGE_PATCH
from fhir_mappings.primitives import CONTROL_RE, whole_number
from service.errors import BadRequest, FhirError, NotAcceptable, PayloadTooLarge, UnsupportedMediaType, error_response
from service.search.limits import MAX_OR_VALUES, MAX_PARAM_REPEATS, check_query, may_break_limits

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
    # a media range asking for another FHIR version (`application/fhir+json; fhirVersion=5.0`) is not one we serve
    wanted = [part.split(";")[0].strip().lower() for part in accept.split(",") if _r4(part)]
    for media in wanted:
        if media in ("application/fhir+json", "application/json+fhir", "*/*", "application/*"):
            return "application/fhir+json"
        if media in ("application/json", "text/json"):
            return "application/json"
    if any(m.startswith("text/html") for m in wanted):  # a browser on a FHIR URL: give it JSON
        return "application/fhir+json"
    return None


def _r4(media: str) -> bool:
    """Does a media type (with parameters) allow FHIR R4? `fhirVersion` absent, or 4.0 / 4.0.x (FHIR's MIME
    parameter, hl7.org/fhir/R4/http.html#version-parameter)."""
    if "fhirversion" not in media.lower():
        return True
    for param in media.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "fhirversion":
            value = value.strip().strip('"')
            return value == "4.0" or value.startswith("4.0.")
    return True


def negotiate(query: dict[str, str], accept: str) -> str:
    """`choose_output`, or a 406 naming `_format` or `Accept`."""
    output = choose_output(query, accept)
    if output is None:
        raise NotAcceptable("This server speaks FHIR JSON only: use _format=json or Accept: application/fhir+json",
                            expression="_format" if "_format" in query else "Accept")
    return output


def check_body(path: str, content_type: str | None, length: str | None, max_body_bytes: int,
               method: str = "POST") -> None:
    """415 unless the body is JSON (or a search form, or a JSON (Merge) Patch on a PATCH), 413 when Content-Length is
    over the limit."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    if not _r4(content_type or ""):
        raise UnsupportedMediaType(f"This server speaks FHIR R4 (fhirVersion=4.0), not what '{content_type}' says",
                                   expression="Content-Type")
    if ctype not in JSON_TYPES and not (path.endswith("/_search") and ctype == "application/x-www-form-urlencoded") \
            and not (method == "PATCH" and ctype in (JSON_PATCH, MERGE_PATCH)):
        raise UnsupportedMediaType(f"Unsupported Content-Type '{ctype or '(none)'}': send application/fhir+json",
                                   expression="Content-Type")
    if length is not None and whole_number(length) and int(length) > max_body_bytes:
        raise PayloadTooLarge(f"Request body of {length} bytes exceeds the limit of {max_body_bytes}",
                              expression="Content-Length")


def body_too_large(max_body_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"Request body exceeds the limit of {max_body_bytes} bytes", expression="Content-Length")


def some_headers(scope: Scope, *names: bytes, first: bool = False) -> dict[bytes, str]:
    """The named request headers (lower-case names), decoding nothing else; of a repeated one the last, or with
    `first` the first (what the routes read: Starlette's `Headers.get`, FastAPI's `Header()`, the host of
    `Request.base_url`)."""
    found: dict[bytes, str] = {}
    for key, value in scope["headers"]:
        key = key.lower()
        if key in names and not (first and key in found):
            found[key] = value.decode("latin-1")
    return found


def edge(scope: Scope, max_body_bytes: int, max_repeats: int = MAX_PARAM_REPEATS,
         max_values: int = MAX_OR_VALUES) -> tuple[str, bool]:
    """The edge rules of one FHIR request: (the response Content-Type, does it carry a body?); raises the 406,
    415 or 413 `FhirError`, and the 400 of `check_query` (of the query, and of an `If-None-Exist` header's).
    Reads only the five headers it needs, and the query only when it may name `_format`, hold a control character
    (percent-encoded) or be long enough to break a limit (the common search GET pays a few µs here, not a dict of
    every header and a parse of the whole query)."""
    headers = some_headers(scope, b"accept", b"content-length", b"content-type", b"transfer-encoding",
                           b"if-none-exist")
    length = headers.get(b"content-length")
    raw_query = scope.get("query_string", b"")
    named = b"_format" in raw_query or b"%" in raw_query  # (the name itself may come percent-encoded)
    query: dict[str, str] = {}
    if named or raw_query.count(b"&") >= max_repeats or raw_query.count(b",") >= max_values:
        pairs = parse_qsl(raw_query.decode("latin-1"), keep_blank_values=True)
        check_query(pairs, max_repeats, max_values)
        query = dict(pairs)
    if_none_exist = headers.get(b"if-none-exist")
    if if_none_exist and may_break_limits(if_none_exist, max_repeats, max_values):  # a query too (conditional create)
        try:
            check_query(parse_qsl(if_none_exist.lstrip("?"), keep_blank_values=True), max_repeats, max_values)
        except BadRequest as err:
            raise BadRequest(f"If-None-Exist: {err}", expression="If-None-Exist") from None
    output = negotiate(query, headers.get(b"accept", ""))
    has_body = scope["method"] in ("POST", "PUT", "PATCH") and (length not in (None, "0")
                                                                or b"transfer-encoding" in headers)
    if has_body:
        check_body(scope["path"], headers.get(b"content-type"), length, max_body_bytes, scope["method"])
    return output, has_body


class FhirFormatMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int, prefix: str = "/fhir", max_repeats: int = MAX_PARAM_REPEATS,
                 max_values: int = MAX_OR_VALUES) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_repeats = max_repeats
        self.max_values = max_values
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            return await self.app(scope, receive, send)
        try:
            output, has_body = edge(scope, self.max_body_bytes, self.max_repeats, self.max_values)
        except FhirError as problem:
            return await error_response(problem.status_code, problem.issues)(scope, receive, send)
        if has_body:
            receive = self._counting(receive, send)

        async def send_with_format(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    (k, b"application/json") if k.lower() == b"content-type" and v.startswith(b"application/fhir+json")
                    else (k, v) for k, v in message.get("headers", [])
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_format if output == "application/json" else send)
        except _BodyTooLarge:
            too_large = body_too_large(self.max_body_bytes)
            await error_response(too_large.status_code, too_large.issues)(scope, receive, send)

    def _counting(self, receive: Receive, send: Send) -> Receive:
        seen = 0
        limit = self.max_body_bytes

        async def counted() -> Message:
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


class ControlCharacterPaths:
    """A URL path holding a control character (`/fhir/Patient/a%00b`, `/studies/a%00b/report`) is refused with a 400
    in front of every route: no id, type, job or file name holds one, and PostgreSQL cannot even compare a string
    holding NUL (that was a 500, found by tests/api/test_hostile_corpus.py)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and CONTROL_RE.search(scope["path"]):
            response = error_response(400, [BadRequest("The URL path holds a control character: no FHIR id, type, "
                                                       "operation or file name holds one").issues[0]])
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
