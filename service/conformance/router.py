"""What the server is: its CapabilityStatement, the trial's CodeSystem and its SearchParameters."""

from collections.abc import Callable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from fhir_mappings.bundle import bundle, entry
from service.api.docs import ANY_ERROR, error_docs, fhir_json
from service.api.http import BaseUrl, OptionalFhirBody
from service.api.methods import flat_routes
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
    routes = [(method, route.path) for route in flat_routes(request.app.routes)
              for method in sorted(getattr(route, "methods", None) or ()) if method != "HEAD"]
    return FhirJSONResponse(service.capability_statement(base, request.app.state.capability_contributions,
                                                         smart=request.app.state.settings.auth == "smart",
                                                         routes=routes))


# -- terminology operations: GET with query parameters, POST with a Parameters body (or the query). Declared before
# the reads, so `CodeSystem/$lookup` is not read as the CodeSystem with id "$lookup". Public, as the CodeSystem and
# ValueSets themselves are: they answer from the catalogues, never from stored data.

def _parameters_body(**inputs: str) -> dict[str, Any]:
    """The OpenAPI request body of a terminology operation's POST: a Parameters, with an example of `inputs`."""
    example = {"resourceType": "Parameters", "parameter": [{"name": k, "valueString": v} for k, v in inputs.items()]}
    return {"requestBody": {"required": False, "description": "A Parameters resource with the inputs",
                            "content": {"application/fhir+json": {"schema": {"type": "object"}, "example": example}}}}


_AD = "https://trial-fhir.org/CodeSystem/ad-scores"
_LOOKUP_EXAMPLE = {"resourceType": "Parameters", "parameter": [
    {"name": "name", "valueString": "ADScores"}, {"name": "version", "valueString": "1.0.0"},
    {"name": "display", "valueString": "Eczema Area and Severity Index (EASI)"}]}
_VALIDATE_CODE_EXAMPLE = {"resourceType": "Parameters", "parameter": [
    {"name": "result", "valueBoolean": True},
    {"name": "display", "valueString": "Eczema Area and Severity Index (EASI)"}]}
_EXPAND_EXAMPLE = {"resourceType": "ValueSet", "id": "ad-scores", "url": "https://trial-fhir.org/ValueSet/ad-scores",
                   "status": "active", "expansion": {"timestamp": "2026-01-01T00:00:00.000Z", "total": 1, "offset": 0,
                                                     "contains": [{"system": "https://trial-fhir.org/CodeSystem/"
                                                                   "ad-scores", "code": "EASI"}]}}


def _operation(path: str, tag: str, name: str, summary: str, doc: str, example: dict[str, Any],
               run: Callable[[list[tuple[str, str]], dict[str, Any] | None, str | None], dict[str, Any]],
               inputs: dict[str, str]) -> None:
    """Declare one terminology operation twice: GET (query) and POST (Parameters body), named `name` and
    `name_post`."""
    responses = {200: fhir_json(example, "The operation's result"), **error_docs(400, 404)}

    async def get(request: Request) -> Response:
        return FhirJSONResponse(run(request.query_params.multi_items(), None, request.path_params.get("id")))

    async def post(request: Request, body: OptionalFhirBody) -> Response:
        return FhirJSONResponse(run(request.query_params.multi_items(), body, request.path_params.get("id")))

    get.__doc__ = doc
    post.__doc__ = doc + " The inputs in a Parameters body (or the query)."
    router.add_api_route(path, get, methods=["GET"], tags=[tag], name=name, summary=summary, responses=responses)
    router.add_api_route(path, post, methods=["POST"], tags=[tag], name=f"{name}_post", summary=f"{summary} (POST)",
                         responses=responses, openapi_extra=_parameters_body(**inputs))


_operation("/CodeSystem/$lookup", "CodeSystem", "lookup_CodeSystem", "Look up a code",
           "`CodeSystem/$lookup?system=…&code=…` (or `coding`): the code's name, version, display and definition "
           "(a Parameters); 404 naming `system` or `code` for one this server does not hold.",
           _LOOKUP_EXAMPLE, lambda q, b, _: service.lookup_code(q, b), {"system": _AD, "code": "EASI"})
for _path, _name in (("/CodeSystem/$validate-code", "validate_code_CodeSystem"),
                     ("/CodeSystem/{id}/$validate-code", "validate_code_CodeSystem_instance")):
    _operation(_path, "CodeSystem", _name, "Validate a code in a CodeSystem",
               "`$validate-code` on the trial's CodeSystem (`url`, or the id in the path): `code` (with `display`), "
               "a `coding` or a `codeableConcept`; a Parameters whose `result` says whether it is one of its codes.",
               _VALIDATE_CODE_EXAMPLE, lambda q, b, i: service.validate_code_in("CodeSystem", q, b, i),
               {"code": "EASI"} if "{id}" in _path else {"url": _AD, "code": "EASI"})
for _path, _name in (("/ValueSet/$validate-code", "validate_code_ValueSet"),
                     ("/ValueSet/{id}/$validate-code", "validate_code_ValueSet_instance")):
    _operation(_path, "ValueSet", _name, "Validate a code in a ValueSet",
               "`$validate-code` on one of the trial's ValueSets (`url`, or the id in the path): `system` and `code` "
               "(with `display`), a `coding` or a `codeableConcept`; a Parameters whose `result` says whether it is in "
               "the value set.", _VALIDATE_CODE_EXAMPLE, lambda q, b, i: service.validate_code_in("ValueSet", q, b, i),
               {"system": _AD, "code": "EASI"} if "{id}" in _path
               else {"url": "https://trial-fhir.org/ValueSet/ad-scores", "system": _AD, "code": "EASI"})
for _path, _name in (("/ValueSet/$expand", "expand_ValueSet"), ("/ValueSet/{id}/$expand", "expand_ValueSet_instance")):
    _operation(_path, "ValueSet", _name, "Expand a ValueSet",
               "`$expand` of one of the trial's ValueSets (`url`, or the id in the path): its codes in "
               "`expansion.contains`; `filter` keeps those whose code or display contains the text, `offset` and "
               "`count` page them (`expansion.total` counts every match).",
               _EXPAND_EXAMPLE, lambda q, b, i: service.expand_value_set(q, b, i),
               {"filter": "easi"} if "{id}" in _path
               else {"url": "https://trial-fhir.org/ValueSet/ad-scores", "filter": "easi"})


@router.get("/ValueSet/{id}", tags=["ValueSet"], name="read_ValueSet", summary="Read a ValueSet",
            responses={200: fhir_json({k: v for k, v in _EXPAND_EXAMPLE.items() if k != "expansion"}, "The ValueSet"),
                       **error_docs(404)})
def read_value_set(id: Annotated[str, Path(examples=["ad-scores"])]) -> Response:
    """One of the trial's ValueSets: `ad-scores` (every code of its CodeSystem) and `atopic-dermatitis-measures`
    (the codes an Observation may carry)."""
    return FhirJSONResponse(service.read_value_set(id))


@router.get("/ValueSet", tags=["ValueSet"], name="search_ValueSet", summary="Search ValueSets",
            responses={200: fhir_json({"resourceType": "Bundle", "type": "searchset", "total": 1}, "searchset")})
def search_value_sets(base: BaseUrl, url: Annotated[str | None, Query(
        description="canonical URL, e.g. https://trial-fhir.org/ValueSet/ad-scores")] = None) -> Response:
    """Find a ValueSet by its canonical `url`."""
    found = [vs for vs, _ in service.all_value_sets().values() if url is None or vs["url"] == url]
    entries = [entry(f"{base}/ValueSet/{vs['id']}", orjson.dumps(vs), search={"mode": "match"}) for vs in found]
    return FhirJSONResponse(bundle("searchset", entries, total=len(found)))


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
    """A search parameter of a stored type as this server answers it (id `<Type>-<code>`: `Observation-code`,
    `Observation-visit`, `Observation-id` for `_id`): exactly the modifiers, comparators and chains a search takes
    on it, and the FHIR R4 definition it narrows (`derivedFrom`; none for the trial's own `study`, `arm`,
    `visit`). The CapabilityStatement's `searchParam.definition` is its `url`."""
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
    """Find the search parameters of the stored types by canonical `url`, `name`, `code` or `base` resource type."""
    found = search_service.find_search_parameters(url=url, name=name, code=code, base_type=base_type)
    entries = [entry(f"{base}/SearchParameter/{sp['id']}", orjson.dumps(sp), search={"mode": "match"}) for sp in found]
    return FhirJSONResponse(bundle("searchset", entries, total=len(found)))
