"""What both HTTP adapters (the FastAPI routes and the front door) share: reading a FHIR JSON body, the base URL
and the `Context` of a request, and the response of a stored version. One implementation each, so the two
adapters can't answer differently."""

from email.utils import format_datetime
import uuid
from typing import Annotated, Any, Protocol

import orjson
from fastapi import Depends, Request

from fhir_mappings.outcome import informational
from fhir_mappings.validation import MAX_DEPTH, too_deep
from service.core.context import ANONYMOUS, Caller, Context, prefers
from service.core.interactions import Core
from service.core.resources import Stored
from service.errors import ResourceInvalid
from service.responses import FhirJSONResponse


def parse_body(raw: bytes) -> dict[str, Any]:
    """A request body as a FHIR resource's JSON object; 400 naming `body` (or `resourceType`) when it isn't one."""
    if not raw.strip():
        raise ResourceInvalid("The request has no body: send a FHIR resource as JSON", expression="body")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ResourceInvalid(f"Malformed JSON: {exc}", expression="body") from None
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


def base_of(configured: str | None, request_base: str) -> str:
    """The FHIR base URL: TRIAL_FHIR_BASE_URL, else the request's own base (scheme, host, root path) + /fhir."""
    return (configured or request_base.rstrip("/") + "/fhir").rstrip("/")


async def base_url(request: Request) -> str:
    """Async on purpose: a plain `def` dependency costs a worker-thread round trip per request."""
    return base_of(request.app.state.settings.base_url, str(request.base_url))


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


def new_request_id(sent: str | None) -> str:
    """The client's X-Request-ID when it is a sensible one (printable, ≤ 64 characters), else a new one."""
    if sent and len(sent) <= 64 and sent.isprintable() and " " not in sent:
        return sent
    return uuid.uuid4().hex


async def request_context(request: Request) -> Context:
    """The Context of a routed request: who sends it (authenticated here, before the interaction runs), its base
    URL, strictness, request id, client address and query (for the audit)."""
    base = await base_url(request)
    headers = request.headers
    caller = await caller_of(request.app.state, headers.get("authorization"), base)
    client = request.client
    return Context(base, caller, strict=prefers(headers.get("prefer"), "handling=strict"),
                   request_id=new_request_id(headers.get("x-request-id")),
                   client_address=client.host if client else None,
                   query=request.scope.get("query_string", b"").decode("latin-1") or None)


Ctx = Annotated[Context, Depends(request_context)]


async def the_core(request: Request) -> Core:
    core: Core = request.app.state.core  # set by create_app (service/main.py)
    return core


CoreDep = Annotated[Core, Depends(the_core)]


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
