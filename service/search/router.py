"""The trial's own search parameters as FHIR SearchParameter resources (read and search)."""

from typing import Annotated

import orjson
from fastapi import APIRouter, Path, Query
from fastapi.responses import Response

from fhir_mappings.bundle import bundle, entry
from fhir_mappings.search import search_parameters
from service.api.http import BaseUrl
from service.api.fhir_routes import ANY_ERROR, error_docs, fhir_json
from service.responses import FhirJSONResponse
from service.search import service

router = APIRouter(prefix="/fhir/SearchParameter", tags=["SearchParameter"], default_response_class=FhirJSONResponse,
                   responses=ANY_ERROR)

_EXAMPLE = search_parameters()["Observation-visit"]


@router.get("/{id}", name="read_SearchParameter", summary="Read a SearchParameter",
            responses={200: fhir_json(_EXAMPLE, "The SearchParameter"), **error_docs(404)})
def read_search_parameter(id: Annotated[str, Path(examples=["Observation-visit"])]) -> Response:
    """One of the trial's own search parameters (`Observation-study`, `Observation-arm`, `Observation-visit`,
    `ResearchSubject-arm`); the standard ones are defined by FHIR R4."""
    return FhirJSONResponse(service.read_search_parameter(id))


@router.get("", name="search_SearchParameter", summary="Search SearchParameters",
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
    found = service.find_search_parameters(url=url, name=name, code=code, base_type=base_type)
    entries = [entry(f"{base}/SearchParameter/{sp['id']}", orjson.dumps(sp), search={"mode": "match"}) for sp in found]
    return FhirJSONResponse(bundle("searchset", entries, total=len(found)))
