"""FHIR Group endpoints: each study's cohort, derived on read from its research subjects."""

from typing import Annotated

from fastapi import APIRouter, Header, Path, Request
from fastapi.responses import Response

from service.api.docs import OUTCOME_SCHEMA, error_docs, fhir_json
from service.api.http import CoreDep, Ctx
from service.conformance.service import Contribution
from service.responses import FhirJSONResponse

router = APIRouter(prefix="/fhir/Group", tags=["Group"], default_response_class=FhirJSONResponse, responses={"4XX": {
    "description": "OperationOutcome", "content": {"application/fhir+json": {"schema": OUTCOME_SCHEMA}}}})

GROUP_EXAMPLE = {
    "resourceType": "Group", "id": "0b9a1c6e-3e55-4a3e-9a7e-4e7d7c2f1a10",
    "meta": {"lastUpdated": "2024-03-01T09:30:00.000Z"}, "type": "person", "actual": True,
    "name": "Cohort of hUCB-MSCs in moderate-to-severe atopic dermatitis (Phase I/IIa)", "quantity": 2,
    "characteristic": [{"code": {"coding": [{"system": "https://trial-fhir.org/CodeSystem/group-characteristic",
                                             "code": "research-study"}], "text": "Enrolled in the research study"},
                        "valueReference": {"reference": "ResearchStudy/0b9a1c6e-3e55-4a3e-9a7e-4e7d7c2f1a10"},
                        "exclude": False}],
    "member": [{"entity": {"reference": "Patient/5e0c2a4b-1111-4d7e-8f00-000000000001"},
                "period": {"start": "2024-01-10"}, "inactive": False},
               {"entity": {"reference": "Patient/5e0c2a4b-1111-4d7e-8f00-000000000002"},
                "period": {"start": "2024-01-12", "end": "2024-02-20"}, "inactive": True}]}
GroupId = Annotated[str, Path(description="The id of the study whose cohort this is (Group/X is the cohort of "
                                          "ResearchStudy/X), or the study's registry number (e.g. NCT01927705)",
                              examples=["0b9a1c6e-3e55-4a3e-9a7e-4e7d7c2f1a10"])]


@router.get("/{id}", name="read_Group", summary="Read a study's cohort Group",
            responses={200: fhir_json(GROUP_EXAMPLE, "The cohort Group"), **error_docs(404)})
async def read_group(id: GroupId, core: CoreDep, ctx: Ctx) -> Response:
    """The cohort of ResearchStudy/{id} as a FHIR Group (`type` person, `actual` true), the target of
    `ResearchStudy.enrollment`. One member per ResearchSubject of the study, current as of this request:
    subjects who withdrew (status withdrawn, off-study, ineligible or not-registered) stay members with
    `inactive: true` and, when known, `period.end`, because their data up to withdrawal belongs to the
    trial. Use `GET /fhir/Group/{id}/$export` to pull the study's data."""
    return FhirJSONResponse(await core.read_group(ctx, id))


@router.get("", name="search_Group", summary="Search cohort Groups",
            responses={200: fhir_json({"resourceType": "Bundle", "type": "searchset", "total": 1, "entry": [
                {"fullUrl": "http://127.0.0.1:8000/fhir/Group/0b9a1c6e-3e55-4a3e-9a7e-4e7d7c2f1a10",
                 "resource": GROUP_EXAMPLE, "search": {"mode": "match"}}]}, "A searchset Bundle"),
                       **error_docs(400)})
async def search_groups(request: Request, core: CoreDep, ctx: Ctx,
                        prefer: Annotated[str | None, Header(alias="Prefer", description="`handling=strict` turns "
                                                             "unknown parameters into 400")] = None) -> Response:
    """Every study's cohort Group, or those named by `_id` (comma-separated). Other parameters are ignored
    with a warning OperationOutcome entry, or rejected (400) with `Prefer: handling=strict`."""
    return FhirJSONResponse(await core.search_groups(ctx, list(request.query_params.multi_items())))


#: the Group type in the CapabilityStatement (its $export is service/export's)
CAPABILITY = Contribution(resources=({
    "type": "Group",
    "profile": "http://hl7.org/fhir/StructureDefinition/Group",
    "documentation": "Each study's cohort (Group/X = enrolled patients of ResearchStudy/X), derived from its "
                     "research subjects; withdrawn subjects are inactive members.",
    "interaction": [{"code": "read"}, {"code": "search-type"}],
    "searchParam": [{"name": "_id", "type": "token"}]},))
