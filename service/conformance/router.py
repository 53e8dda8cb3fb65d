"""System-level FHIR endpoints: CapabilityStatement, the trial's CodeSystem, and Bundles."""

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from fhir_mappings.bundle import bundle, entry
from service.bundle import service as bundles
from service.conformance import service
from service.db import WriteSessionDep
from service.examples import TRANSACTION
from service.api.http import BaseUrl, FhirBody
from service.api.fhir_routes import ANY_ERROR, body_doc, error_docs, fhir_json
from service.responses import FhirJSONResponse
from service.settings import SettingsDep

router = APIRouter(prefix="/fhir", default_response_class=FhirJSONResponse, responses=ANY_ERROR)

TRANSACTION_RESPONSE = {"resourceType": "Bundle", "type": "transaction-response", "entry": [
    {"response": {"status": "201 Created", "location": "Patient/5e0c…/_history/1", "etag": 'W/"1"'}},
    {"response": {"status": "201 Created", "location": "ResearchSubject/7a41…/_history/1", "etag": 'W/"1"'}},
    {"response": {"status": "201 Created", "location": "Observation/c3f9…/_history/1", "etag": 'W/"1"'}}]}


@router.get("/metadata", tags=["System"], name="capabilities", summary="CapabilityStatement",
            responses={200: fhir_json({"resourceType": "CapabilityStatement", "status": "active", "kind": "instance",
                                       "fhirVersion": "4.0.1", "format": ["application/fhir+json"]},
                                      "What this server supports")})
def capabilities(base: BaseUrl) -> Response:
    """The CapabilityStatement: exactly the resource types, interactions, search parameters and operations
    this server supports."""
    return FhirJSONResponse(service.capability_statement(base))


@router.post("", tags=["System"], name="transaction_or_batch", summary="Transaction or batch Bundle",
             openapi_extra=body_doc(TRANSACTION, "A Bundle of type transaction (all or nothing) or batch"),
             responses={200: fhir_json(TRANSACTION_RESPONSE, "transaction-response or batch-response Bundle"),
                        **error_docs(400, 404, 409, 412, 413, 415, 422)})
def transaction_or_batch(request: Request, session: WriteSessionDep, settings: SettingsDep, body: FhirBody,
                         base: BaseUrl) -> Response:
    """Process a `transaction` Bundle as one database transaction (any failing entry fails all, with an
    OperationOutcome naming `Bundle.entry[i]`), or a `batch` Bundle entry by entry (each with its own status
    and OperationOutcome). `urn:uuid:` fullUrls and references to them resolve to the new ids; conditional
    creates (`request.ifNoneExist`) and conditional references work inside a transaction.
    `Prefer: return=representation` puts each resulting resource in the response."""
    representation = "return=representation" in request.headers.get("prefer", "").replace(" ", "").lower()
    run = bundles.transaction if body.get("type") == "transaction" else bundles.batch
    return FhirJSONResponse(run(session, body, base, max_entries=settings.max_bundle_entries,
                                enforce_rules=settings.enforce_trial_rules, representation=representation))


@router.get("/CodeSystem/{id}", tags=["CodeSystem"], name="read_CodeSystem", summary="Read a CodeSystem",
            responses={200: fhir_json({"resourceType": "CodeSystem", "id": "ad-scores",
                                       "url": "https://trial-fhir.org/CodeSystem/ad-scores", "status": "active",
                                       "content": "complete", "concept": [{"code": "EASI"}]}, "The CodeSystem"),
                       **error_docs(404)})
def read_code_system(id: Annotated[str, Path(examples=["ad-scores"])]) -> Response:
    """The trial's own CodeSystem (`ad-scores`: EASI, SCORAD, IGA, PRURITUS-NRS and their parts)."""
    return FhirJSONResponse(service.read_code_system(id))


@router.get("/CodeSystem", tags=["CodeSystem"], name="search_CodeSystem", summary="Search CodeSystems",
            responses={200: fhir_json({"resourceType": "Bundle", "type": "searchset", "total": 1}, "searchset")})
def search_code_systems(base: BaseUrl, url: Annotated[str | None, Query(
        description="canonical URL, e.g. https://trial-fhir.org/CodeSystem/ad-scores")] = None) -> Response:
    """Find a CodeSystem by its canonical `url`."""
    import orjson
    found = [cs for cs in service.code_systems().values() if url is None or cs["url"] == url]
    entries = [entry(f"{base}/CodeSystem/{cs['id']}", orjson.dumps(cs), search={"mode": "match"}) for cs in found]
    return FhirJSONResponse(bundle("searchset", entries, total=len(found)))
