"""What the server is: its CapabilityStatement, the trial's CodeSystem and its SearchParameters."""

from typing import Annotated

import orjson
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from fhir_mappings.bundle import bundle, entry
from service.api.docs import ANY_ERROR, error_docs, fhir_json
from service.api.http import BaseUrl
from service.conformance import service
from service.responses import FhirJSONResponse
from service.search import service as search_service
from service.search.service import search_parameters

router = APIRouter(prefix="/fhir", default_response_class=FhirJSONResponse, responses=ANY_ERROR)


@router.get("/metadata", tags=["System"], name="capabilities", summary="CapabilityStatement",
            responses={200: fhir_json({"resourceType": "CapabilityStatement", "status": "active", "kind": "instance",
                                       "fhirVersion": "4.0.1", "format": ["application/fhir+json"]},
                                      "What this server supports")})
def capabilities(request: Request, base: BaseUrl) -> Response:
    """The CapabilityStatement: exactly the resource types, interactions, search parameters and operations
    this server supports."""
    return FhirJSONResponse(service.capability_statement(base, request.app.state.capability_contributions,
                                                         smart=request.app.state.settings.auth == "smart"))


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
    found = [cs for cs in service.code_systems().values() if url is None or cs["url"] == url]
    entries = [entry(f"{base}/CodeSystem/{cs['id']}", orjson.dumps(cs), search={"mode": "match"}) for cs in found]
    return FhirJSONResponse(bundle("searchset", entries, total=len(found)))


_EXAMPLE = search_parameters()["Observation-visit"]


@router.get("/SearchParameter/{id}", tags=["SearchParameter"], name="read_SearchParameter",
            summary="Read a SearchParameter",
            responses={200: fhir_json(_EXAMPLE, "The SearchParameter"), **error_docs(404)})
def read_search_parameter(id: Annotated[str, Path(examples=["Observation-visit"])]) -> Response:
    """One of the trial's own search parameters (`Observation-study`, `Observation-arm`, `Observation-visit`,
    `ResearchSubject-arm`); the standard ones are defined by FHIR R4."""
    return FhirJSONResponse(search_service.read_search_parameter(id))


@router.get("/SearchParameter", tags=["SearchParameter"], name="search_SearchParameter",
            summary="Search SearchParameters",
            responses={200: fhir_json({"resourceType": "Bundle", "type": "searchset", "total": 1, "entry": [
                {"fullUrl": "http://127.0.0.1:8000/fhir/SearchParameter/Observation-visit", "resource": _EXAMPLE,
                 "search": {"mode": "match"}}]}, "A searchset Bundle")})
def search_search_parameters(
        base: BaseUrl,
        url: Annotated[str | None, Query(description="canonical URL, e.g. "
                                         "https://trial-fhir.org/SearchParameter/Observation-visit")] = None,
        name: Annotated[str | None, Query(description="computer name, e.g. ObservationVisit")] = None,
        code: Annotated[str | None, Query(description="the parameter as used in a query, e.g. visit")] = None,
        base_type: Annotated[str | None, Query(alias="base", description="resource type, e.g. Observation")] = None,
) -> Response:
    """Find the trial's search parameters by canonical `url`, `name`, `code` or `base` resource type."""
    found = search_service.find_search_parameters(url=url, name=name, code=code, base_type=base_type)
    entries = [entry(f"{base}/SearchParameter/{sp['id']}", orjson.dumps(sp), search={"mode": "match"}) for sp in found]
    return FhirJSONResponse(bundle("searchset", entries, total=len(found)))
