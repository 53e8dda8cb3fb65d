"""HTTP helpers shared by the FHIR routers: the JSON body, the base URL, and the headers of a version."""

from email.utils import format_datetime
from typing import Annotated, Any

import orjson
from fastapi import Depends, Request

from fhir_mappings.outcome import informational
from fhir_mappings.validation import MAX_DEPTH, too_deep
from service.errors import ResourceInvalid
from service.core.resources import Stored
from service.responses import FhirJSONResponse


async def fhir_body(request: Request) -> Any:
    raw = await request.body()
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


FhirBody = Annotated[dict, Depends(fhir_body)]


async def base_url(request: Request) -> str:
    """Async on purpose: a plain `def` dependency costs a worker-thread round trip per request."""
    configured = request.app.state.settings.base_url
    return (configured or str(request.base_url).rstrip("/") + "/fhir").rstrip("/")


BaseUrl = Annotated[str, Depends(base_url)]


def version_headers(stored: Stored, base: str, *, location: bool = False) -> dict[str, str]:
    headers = {"ETag": stored.etag, "Last-Modified": format_datetime(stored.last_updated, usegmt=True)}
    if location:
        headers["Location"] = f"{base}/{stored.location}"
    return headers


def resource_response(request: Request, stored: Stored, base: str, *, status_code: int = 200,
                      location: bool = False) -> FhirJSONResponse:
    """The stored JSON as it is, honouring `Prefer: return=minimal | representation | OperationOutcome`."""
    headers = version_headers(stored, base, location=location)
    prefer = request.headers.get("prefer", "").replace(" ", "").lower()
    if "return=minimal" in prefer:
        return FhirJSONResponse(b"", status_code=status_code, headers=headers)
    if "return=operationoutcome" in prefer:
        return FhirJSONResponse(informational(f"{stored.resource_type}/{stored.id} version {stored.version_id}"),
                                status_code=status_code, headers=headers)
    return FhirJSONResponse(stored.content.encode(), status_code=status_code, headers=headers)
