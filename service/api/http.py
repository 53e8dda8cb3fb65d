"""What both HTTP adapters (the FastAPI routes and the front door) share: reading a FHIR JSON body, the base URL
and the `Context` of a request, and the response of a stored version. One implementation each, so the two
adapters can't answer differently."""

import ipaddress
from dataclasses import replace
from datetime import datetime
from email.utils import format_datetime, parsedate_to_datetime
from functools import lru_cache
from typing import Annotated, Any, Protocol

from fastapi import Depends, Query, Request
from starlette.types import Scope

from fhir_mappings.json_patch import JSON_PATCH, MERGE_PATCH, MergePatch
from fhir_mappings.outcome import informational
from fhir_mappings.validation import MAX_DEPTH, too_deep
from service.api.middleware import JSON_TYPES
from service.audit.events import event_for, new_id, outcome_for
from service.core.context import ANONYMOUS, Caller, Context, prefers
from service.core.interactions import Core
from service.core.resources import Stored, read_json
from service.errors import BadRequest, ResourceInvalid, Unauthorized, UnsupportedMediaType
from service.export.service import parse_since  # the same _since as $export
from service.ops.observed import current as current_request
from service.responses import FhirJSONResponse
from service.settings import Settings


def parse_body(raw: bytes) -> dict[str, Any]:
    """A request body as a FHIR resource's JSON object; 400 naming `body` (or `resourceType`) when it isn't one."""
    if not raw.strip():
        raise ResourceInvalid("The request has no body: send a FHIR resource as JSON", expression="body")
    data = read_json(raw)  # malformed JSON and names given twice: 400
    if not isinstance(data, dict):
        raise ResourceInvalid("The body must be a JSON object (a FHIR resource)", expression="body")
    if "resourceType" not in data:
        raise ResourceInvalid("The body has no resourceType", expression="resourceType")
    # a Bundle is read without recursion and each entry's resource is depth-checked on its own (naming the
    # entry), so its body needs no walk here: that walk cost as much per Observation as the structure checks
    if data.get("resourceType") != "Bundle" and too_deep(data, MAX_DEPTH + 8):
        raise ResourceInvalid(f"The body is nested deeper than {MAX_DEPTH} levels", expression="body")
    return data


async def fhir_body(request: Request) -> dict[str, Any]:
    return parse_body(await request.body())


FhirBody = Annotated[dict[str, Any], Depends(fhir_body)]


async def optional_fhir_body(request: Request) -> dict[str, Any] | None:
    """A FHIR resource body, or None when there is none (an operation whose inputs may all be in the query)."""
    raw = await request.body()
    return parse_body(raw) if raw.strip() else None


OptionalFhirBody = Annotated[dict[str, Any] | None, Depends(optional_fhir_body)]


async def patch_body(request: Request) -> Any:
    """A PATCH's body: a JSON Patch (`application/json-patch+json`: an array of operations, checked when applied) or
    a JSON Merge Patch (`application/merge-patch+json`, or an object sent as `application/json` or
    `application/fhir+json`, as fhirpy's `patch()` sends it); 415 for other media types (FHIRPath Patch is not
    supported), 400 naming `body` when it is not JSON, or repeats a name."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in (JSON_PATCH, MERGE_PATCH, *JSON_TYPES):
        raise UnsupportedMediaType(f"A PATCH takes a JSON Patch (Content-Type: {JSON_PATCH}) or a JSON Merge Patch "
                                   f"({MERGE_PATCH}), not '{ctype or '(none)'}'; FHIRPath Patch is not supported",
                                   expression="Content-Type")
    raw = await request.body()
    if not raw.strip():
        raise BadRequest("The PATCH has no body: send a JSON Patch (an array of operations) or a JSON Merge Patch "
                         "(an object)", expression="body")
    document = read_json(raw)
    if ctype == JSON_PATCH:
        return document
    if isinstance(document, dict) and document.get("resourceType") == "Parameters":
        raise UnsupportedMediaType("A Parameters body is a FHIRPath Patch, which this server does not support: send a "
                                   f"JSON Patch ({JSON_PATCH}) or a JSON Merge Patch ({MERGE_PATCH})",
                                   expression="body")
    if not isinstance(document, dict):
        raise BadRequest(f"A JSON Merge Patch ({ctype}) is a JSON object; an array of operations is a JSON Patch "
                         f"({JSON_PATCH})", expression="body")
    return MergePatch(document)


PatchBody = Annotated[Any, Depends(patch_body)]


def base_of(configured: str | None, request_base: str) -> str:
    """The FHIR base URL: TRIAL_FHIR_BASE_URL, else the request's own base (scheme, host, root path) + /fhir."""
    return (configured or request_base.rstrip("/") + "/fhir").rstrip("/")


class TrustedProxies:
    """The `trusted_proxies` setting, parsed once: addresses (`10.0.0.5`) and networks (`10.0.0.0/24`). Only a
    peer in it may tell us, with X-Forwarded-*, who the client is and which URL it used; from anyone else those
    headers are the client's own claims."""

    def __init__(self, entries: tuple[str, ...]) -> None:
        self.addresses = frozenset(e for e in entries if "/" not in e)
        self.networks = tuple(ipaddress.ip_network(e, strict=False) for e in entries if "/" in e)

    def __bool__(self) -> bool:
        return bool(self.addresses or self.networks)

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, str):
            return False
        if address in self.addresses:
            return True
        if not self.networks:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:  # a unix socket path, "testclient", …
            return False
        return any(ip in network for network in self.networks)


@lru_cache(maxsize=8)
def _proxies(entries: tuple[str, ...]) -> TrustedProxies:
    return TrustedProxies(entries)


def trusted_proxies(settings: Settings) -> TrustedProxies:
    return _proxies(tuple(settings.trusted_proxies))


def peer_address(scope: Scope) -> str | None:
    """The address at the other end of the connection (not rewritten: `serve` runs uvicorn without its proxy
    headers, so this is what the socket says)."""
    client = scope.get("client")
    return str(client[0]) if client else None


def _header(scope: Scope, name: bytes) -> str | None:
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


def client_address(scope: Scope, settings: Settings) -> str | None:
    """Who sent the request, for logs and audit: the peer; when the peer is a trusted proxy, the rightmost
    address of X-Forwarded-For that is not a trusted proxy (the one our own proxies vouch for: what is left of it
    a client may have written itself), or the leftmost when every hop is trusted."""
    peer = peer_address(scope)
    proxies = trusted_proxies(settings)
    if not proxies or peer not in proxies:
        return peer
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    hops = [hop.strip() for key, value in headers if key == b"x-forwarded-for"
            for hop in value.decode("latin-1").split(",") if hop.strip()]
    for hop in reversed(hops):
        if hop not in proxies:
            return hop
    return hops[0] if hops else peer


def forwarded_scope(scope: Scope, settings: Settings) -> Scope:
    """The scope as the client sent it to our trusted proxy: scheme and host from the first X-Forwarded-Proto
    and X-Forwarded-Host value when the peer is a trusted proxy; the scope itself otherwise (the usual case,
    and then nothing is copied)."""
    proxies = trusted_proxies(settings)
    if not proxies or peer_address(scope) not in proxies:
        return scope
    proto, host = _header(scope, b"x-forwarded-proto"), _header(scope, b"x-forwarded-host")
    if proto is None and host is None:
        return scope
    forwarded = dict(scope)
    if proto is not None and (proto := proto.split(",")[0].strip().lower()) in ("http", "https"):
        forwarded["scheme"] = proto
    if host is not None and (host := host.split(",")[0].strip()):
        forwarded["headers"] = [(b"host", host.encode("latin-1")),
                                *((k, v) for k, v in scope["headers"] if k != b"host")]
    return forwarded


def is_https(scope: Scope, settings: Settings) -> bool:
    """Did the request reach us (or our trusted proxy) over TLS?"""
    if scope.get("scheme") == "https":
        return True
    proxies = trusted_proxies(settings)
    if not proxies or peer_address(scope) not in proxies:
        return False
    proto = _header(scope, b"x-forwarded-proto")
    return proto is not None and proto.split(",")[0].strip().lower() == "https"


def public_base(scope: Scope, settings: Settings) -> str:
    """The FHIR base URL clients are told (Location, paging links): TRIAL_FHIR_BASE_URL; else what a trusted proxy
    says the client used (X-Forwarded-Proto/-Host); else the request's own scheme, Host and root path. Without
    a base URL or a trusted proxy the Host header is the client's choice (see README, "Security")."""
    if settings.base_url:
        return base_of(settings.base_url, "")
    return base_of(None, str(Request(forwarded_scope(scope, settings)).base_url))


async def base_url(request: Request) -> str:
    """Async on purpose: a plain `def` dependency costs a worker-thread round trip per request."""
    return public_base(request.scope, request.app.state.settings)


BaseUrl = Annotated[str, Depends(base_url)]


class Authenticates(Protocol):
    """What checks access tokens (service/auth/verify.py `Authenticator`)."""

    async def authenticate(self, authorization: str | None, base_url: str) -> Caller: ...


async def caller_of(state: Any, authorization: str | None, base: str) -> Caller:
    """Who sends a request, for both adapters: with TRIAL_FHIR_AUTH=smart the client its bearer token names
    (401 for a missing or invalid one, raised by the authenticator), else the anonymous, unrestricted caller."""
    authenticator: Authenticates | None = getattr(state, "authenticator", None)
    if state.settings.auth == "off" or authenticator is None:
        if state.settings.auth != "off":
            raise RuntimeError("TRIAL_FHIR_AUTH=smart but the app has no authenticator")
        return ANONYMOUS
    return await authenticator.authenticate(authorization, base)


async def context_of(state: Any, scope: Scope, base: str, *, authorization: str | None, prefer: str | None,
                     request_id: str | None) -> Context:
    """The Context of a request, for both adapters: who sends it (authenticated here, once, before any
    interaction runs: a refused token is audited, then answered 401), its base URL, strictness, request id,
    client address and query (what the audit records)."""
    observed = current_request()  # the observing layer made (or took) the request's id: the log's is the audit's
    ctx = Context(base, ANONYMOUS, strict=prefers(prefer, "handling=strict"),
                  request_id=observed.request_id if observed is not None else new_request_id(request_id),
                  client_address=client_address(scope, state.settings),
                  query=scope.get("query_string", b"").decode("latin-1") or None,
                  consistent=prefers(prefer, "consistency=strong"))
    try:
        caller = await caller_of(state, authorization, base)
    except Unauthorized as refused:
        core: Core = state.core
        await core.record([event_for(replace(ctx, caller=Caller(name="unauthenticated")), subtype="operation",
                                     operation="authenticate", outcome=outcome_for(401), status=401)])
        raise refused
    if observed is not None:
        observed.client = caller.name
    return replace(ctx, caller=caller)


def new_request_id(sent: str | None) -> str:
    """The client's X-Request-ID when it is a sensible one (printable, ≤ 64 characters), else a new one."""
    if sent and len(sent) <= 64 and sent.isprintable() and " " not in sent:
        return sent
    return new_id()  # unique without reading os.urandom per request (a uuid4 each was ~5% of a search's CPU)


async def request_context(request: Request) -> Context:
    """The Context of a routed request (`context_of`)."""
    headers = request.headers
    return await context_of(request.app.state, request.scope, await base_url(request),
                            authorization=headers.get("authorization"), prefer=headers.get("prefer"),
                            request_id=headers.get("x-request-id"))


Ctx = Annotated[Context, Depends(request_context)]


#: the paging and `_since` of instance, type and system history
HistoryCount = Annotated[int, Query(alias="_count", ge=1, le=1000)]
HistoryPage = Annotated[str | None, Query(alias="_page", description="paging cursor")]


async def history_since(since: Annotated[str | None, Query(
        alias="_since", description="Only versions made at or after this instant",
        examples=["2024-01-01T00:00:00Z"])] = None) -> datetime | None:
    """`_since` of a history, as `$export` reads it (400 naming `_since` for what is not an instant)."""
    return parse_since(since) if since else None


HistorySince = Annotated[datetime | None, Depends(history_since)]


#: history `_at` (the core reads it: service/core/interactions.py `history_period`)
HistoryAt = Annotated[str | None, Query(
    alias="_at", description="Only versions that were current at some moment of this date's period (a year, month, "
    "day or instant, as in date searches)", examples=["2024-01-15"])]


async def the_core(request: Request) -> Core:
    core: Core = request.app.state.core  # set by create_app (service/main.py)
    return core


CoreDep = Annotated[Core, Depends(the_core)]


def not_modified_since(header: str | None, last_updated: datetime) -> bool:
    """`If-Modified-Since` (RFC 9110 §13.1.3): is the version no newer than the date the client holds? HTTP dates
    have whole seconds; an unreadable date is ignored, as the RFC says."""
    if not header:
        return False
    try:
        since = parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return False
    if since.tzinfo is None:
        return False
    return last_updated.replace(microsecond=0) <= since


def version_headers(stored: Stored, base: str, *, location: bool = False) -> dict[str, str]:
    headers = {"ETag": stored.etag, "Last-Modified": format_datetime(stored.last_updated, usegmt=True)}
    if location:
        headers["Location"] = f"{base}/{stored.location}"
    return headers


def stored_response(stored: Stored, base: str, prefer: str | None, *, status_code: int = 200,
                    location: bool = False) -> FhirJSONResponse:
    """The stored JSON as it is, honouring `Prefer: return=minimal | representation | OperationOutcome`."""
    headers = version_headers(stored, base, location=location)
    if prefers(prefer, "return=minimal"):
        return FhirJSONResponse(b"", status_code=status_code, headers=headers)
    if prefers(prefer, "return=operationoutcome"):
        return FhirJSONResponse(informational(f"{stored.resource_type}/{stored.id} version {stored.version_id}"),
                                status_code=status_code, headers=headers)
    assert stored.content is not None  # a delete is never answered with its version
    return FhirJSONResponse(stored.content.encode(), status_code=status_code, headers=headers)
