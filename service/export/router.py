"""Bulk Data export endpoints (HL7 FHIR Bulk Data Access IG v2): kick-off, status, cancel, files."""

from typing import Annotated

import orjson
from fastapi import APIRouter, Header, Path, Request
from fastapi.responses import FileResponse, Response

from fhir_mappings.outcome import informational
from service.api.docs import OUTCOME_SCHEMA, body_doc, error_docs, fhir_json
from service.api.http import CoreDep, Ctx, FhirBody
from service.conformance.service import Contribution
from service.responses import FhirJSONResponse

router = APIRouter(tags=["Bulk Data"], default_response_class=FhirJSONResponse, responses={"4XX": {
    "description": "OperationOutcome naming the parameter or header at fault",
    "content": {"application/fhir+json": {"schema": OUTCOME_SCHEMA}}}})

JOB = "5f3c9a60-2d1e-4c4b-9a51-0c1f7d2e8b11"
PreferAsync = Annotated[str | None, Header(alias="Prefer", description="Required: `respond-async`")]
JobId = Annotated[str, Path(description="Export job id (from Content-Location)", examples=[JOB])]
KICK_OFF_DOCS = {
    202: {"description": "Accepted: poll the URL in `Content-Location`",
          "headers": {"Content-Location": {"description": "The status URL", "schema": {"type": "string"},
                                           "example": f"http://127.0.0.1:8000/fhir/$export-status/{JOB}"}},
          "content": {"application/fhir+json": {"schema": {"type": "object"}, "example": informational(
              f"Export job {JOB} queued; poll http://127.0.0.1:8000/fhir/$export-status/{JOB}")}}},
    **error_docs(400)}
PARAMS_DOC = """

Parameters (query, or in a POST kick-off a `Parameters` resource with the same names: `valueString`,
`_since` as `valueInstant`, `patient` as `valueReference`):
* `_type`: comma-separated types among those the server stores (Patient, ResearchStudy, ResearchSubject,
  Observation, AdverseEvent, …; a Patient-level export: those of the Patient compartment) (default: all);
  another type is a 400.
* `_since`: an instant; only resources whose `meta.lastUpdated` is after it.
* `_typeFilter`: FHIR search queries per type, e.g. `Observation?code=https://trial-fhir.org/CodeSystem/ad-scores|EASI&date=ge2024-02-01`;
  several for one type are OR'd. Each is read as the search it is: every search parameter and modifier of the
  type (as in the CapabilityStatement), selecting what `GET /fhir/<type>?<query>` finds. An unknown parameter, a
  malformed value or a result parameter (`_count`, `_sort`, …) is a 400 (the export is never silently wider
  than asked).
* `_elements`: top-level elements to keep, `Observation.code` (that type) or `status` (every type that has it);
  `id`, `meta`, `resourceType` and mandatory elements are always kept, and a subsetted resource carries the
  `SUBSETTED` tag; a type no listed element applies to is written whole. Unknown elements or nested paths: 400.
* `patient`: Patient references (`Patient/123`, repeatable) limiting a Patient-level or Group export to those
  patients' data; a patient the client can't see (or, for a Group, not in it) is a 400.
* `_outputFormat`: `application/fhir+ndjson` (default), `application/ndjson` or `ndjson`; else 400.

Requires `Prefer: respond-async` (400 without it). Answers 202 with `Content-Location`, the status URL.
With `Prefer: respond-async, handling=lenient`, what can't be honoured (an unsupported type or parameter, a type
the client may not read, an unknown element or patient) is left out instead of refused, and each is a warning
OperationOutcome in the manifest's `error` file; a malformed value is a 400 all the same.

What is exported is what the client may read: a `_type` naming a type without a `system/<Type>.r` scope is a 403
naming that scope, and without `_type` only the readable types are exported; a client registered for some studies
gets only their data; a de-identified client gets de-identified resources (pseudonymous Patient ids, shifted
dates). An entry that can't be written (e.g. it fails de-identification) is left out and named in the error file:
the export still completes."""
PARAMETERS_EXAMPLE = {"resourceType": "Parameters", "parameter": [
    {"name": "_type", "valueString": "Patient,Observation"},
    {"name": "_since", "valueInstant": "2024-01-10T00:00:00Z"},
    {"name": "_elements", "valueString": "Observation.code,Observation.valueQuantity,Observation.subject"},
    {"name": "patient", "valueReference": {"reference": "Patient/5e0c2d9a-7f7d-4f7b-9c3e-1d2a3b4c5d6e"}}]}
POST_DOC = body_doc(PARAMETERS_EXAMPLE, "The kick-off parameters as a FHIR Parameters resource")
MANIFEST = {"transactionTime": "2024-03-01T09:30:00.000Z",
            "request": "http://127.0.0.1:8000/fhir/Group/0b9a1c6e-3e55-4a3e-9a7e-4e7d7c2f1a10/$export",
            "requiresAccessToken": False,
            "output": [{"type": "Patient", "url": f"http://127.0.0.1:8000/export-files/{JOB}/Patient.ndjson",
                        "count": 24},
                       {"type": "Observation",
                        "url": f"http://127.0.0.1:8000/export-files/{JOB}/Observation.ndjson", "count": 1480}],
            "error": [{"type": "OperationOutcome",
                       "url": f"http://127.0.0.1:8000/export-files/{JOB}/OperationOutcome.ndjson", "count": 1}]}


def _accepted(request: Request, job_id: str, base: str) -> Response:
    worker = getattr(request.app.state, "export_worker", None)
    if worker is not None:
        worker.wake()
    status_url = f"{base}/$export-status/{job_id}"
    return FhirJSONResponse(informational(f"Export job {job_id} queued; poll {status_url}"), status_code=202,
                            headers={"Content-Location": status_url})


@router.get("/fhir/$export", name="export_system", summary="Export everything (system-level $export)",
            responses=KICK_OFF_DOCS)
async def export_system(request: Request, core: CoreDep, ctx: Ctx, prefer: PreferAsync = None) -> Response:
    job_id = await core.export_kick_off(ctx, list(request.query_params.multi_items()), prefer, str(request.url))
    return _accepted(request, job_id, ctx.base_url)


@router.post("/fhir/$export", name="export_system_post", summary="Export everything (system-level $export, POST)",
             responses=KICK_OFF_DOCS, openapi_extra=POST_DOC)
async def export_system_post(request: Request, core: CoreDep, ctx: Ctx, body: FhirBody,
                             prefer: PreferAsync = None) -> Response:
    job_id = await core.export_kick_off(ctx, [], prefer, str(request.url), body=body)
    return _accepted(request, job_id, ctx.base_url)


SYSTEM_DOC = "Start an asynchronous export of every stored resource, one NDJSON file per type."
export_system.__doc__ = SYSTEM_DOC + PARAMS_DOC
export_system_post.__doc__ = SYSTEM_DOC + " The parameters in a Parameters body." + PARAMS_DOC


@router.get("/fhir/Patient/$export", name="export_patient", summary="Export the patients' data (Patient-level "
            "$export)", responses=KICK_OFF_DOCS)
async def export_patient(request: Request, core: CoreDep, ctx: Ctx, prefer: PreferAsync = None) -> Response:
    job_id = await core.export_kick_off(ctx, list(request.query_params.multi_items()), prefer, str(request.url),
                                        level="patient")
    return _accepted(request, job_id, ctx.base_url)


@router.post("/fhir/Patient/$export", name="export_patient_post", summary="Export the patients' data "
             "(Patient-level $export, POST)", responses=KICK_OFF_DOCS, openapi_extra=POST_DOC)
async def export_patient_post(request: Request, core: CoreDep, ctx: Ctx, body: FhirBody,
                              prefer: PreferAsync = None) -> Response:
    job_id = await core.export_kick_off(ctx, [], prefer, str(request.url), level="patient", body=body)
    return _accepted(request, job_id, ctx.base_url)


PATIENT_DOC = (
    "Start an asynchronous export of every Patient the client may see and their compartment: the resources about "
    "them (ResearchSubject, Observation, AdverseEvent, and every other stored type about a patient), not the "
    "studies themselves. `patient` limits it to some Patients.")
export_patient.__doc__ = PATIENT_DOC + PARAMS_DOC
export_patient_post.__doc__ = PATIENT_DOC + " The parameters in a Parameters body." + PARAMS_DOC


GroupId = Annotated[str, Path(description="Group id = the study's id, or its registry number (e.g. NCT01927705)")]


@router.get("/fhir/Group/{id}/$export", name="export_group", summary="Export one study's data (Group $export)",
            responses={**KICK_OFF_DOCS, **error_docs(400, 404)})
async def export_group(request: Request, id: GroupId, core: CoreDep, ctx: Ctx, prefer: PreferAsync = None
                       ) -> Response:
    job_id = await core.export_kick_off(ctx, list(request.query_params.multi_items()), prefer, str(request.url),
                                        group_id=id)
    return _accepted(request, job_id, ctx.base_url)


@router.post("/fhir/Group/{id}/$export", name="export_group_post", summary="Export one study's data (Group "
             "$export, POST)", responses={**KICK_OFF_DOCS, **error_docs(400, 404)}, openapi_extra=POST_DOC)
async def export_group_post(request: Request, id: GroupId, core: CoreDep, ctx: Ctx, body: FhirBody,
                            prefer: PreferAsync = None) -> Response:
    job_id = await core.export_kick_off(ctx, [], prefer, str(request.url), group_id=id, body=body)
    return _accepted(request, job_id, ctx.base_url)


GROUP_DOC = (
    "Start an asynchronous export of exactly one study's data: the Patients of its cohort Group (withdrawn "
    "members included), their ResearchSubjects in this study, the ResearchStudy, and the Observations and "
    "AdverseEvents recorded for this study. A patient enrolled in two studies never brings the other study's "
    "data along. `patient` limits it to some members.")
export_group.__doc__ = GROUP_DOC + PARAMS_DOC
export_group_post.__doc__ = GROUP_DOC + " The parameters in a Parameters body." + PARAMS_DOC


@router.get("/fhir/$export-status/{job_id}", name="export_status", summary="Status of an export",
            responses={200: {"description": "Complete: the manifest", "content": {"application/json": {
                "schema": {"type": "object"}, "example": MANIFEST}}},
                       202: {"description": "In progress; `X-Progress` says how far, `Retry-After` when to ask again",
                             "headers": {"X-Progress": {"schema": {"type": "string"},
                                                        "example": "running: Observation 40% (4000/10000 resources)"}}},
                       500: {"description": "The export failed (e.g. its worker crashed): OperationOutcome",
                             "content": {"application/fhir+json": {"schema": {
                                 "$ref": "#/components/schemas/OperationOutcome"}}}},
                       **error_docs(404)})
async def export_status(job_id: JobId, core: CoreDep, ctx: Ctx) -> Response:
    """Poll an export: 202 with `X-Progress` while it is queued or running, then 200 with the manifest
    (`transactionTime`, `request`, `requiresAccessToken` (true when the job was started with an access token: its
    files are then served to that client only), `output` [{type, url, count}], `error` [{type: OperationOutcome,
    url, count}]: the file of entries that were left out and of the warnings of a lenient request, if any).
    Each job belongs to the client that started it: another client's job answers 404 (status, files and cancel).
    A failed export answers 500 with an OperationOutcome saying why; an unknown, expired or cancelled
    job 404. Any replica can answer."""
    status = await core.export_status(ctx, job_id)
    if status.body is None:
        return Response(status_code=status.status_code, headers=status.headers)
    return Response(orjson.dumps(status.body), status_code=status.status_code, headers=status.headers,
                    media_type="application/json")


@router.delete("/fhir/$export-status/{job_id}", status_code=202, name="cancel_export",
               summary="Cancel an export and delete its files",
               responses={202: fhir_json(informational(f"Export job {JOB} cancelled; its files are deleted"),
                                         "Cancelled"), **error_docs(404)})
async def cancel_export(job_id: JobId, core: CoreDep, ctx: Ctx) -> Response:
    """Cancel a queued or running export, or delete a finished one: its files are removed and its status
    URL answers 404 from then on."""
    await core.export_cancel(ctx, job_id)
    return FhirJSONResponse(informational(f"Export job {job_id} cancelled; its files are deleted"),
                            status_code=202)


@router.get("/export-files/{job_id}/{file_name}", name="download_export_file", summary="Download an export file",
            responses={200: {"description": "NDJSON: one FHIR resource per line, as stored", "content": {
                "application/fhir+ndjson": {"schema": {"type": "string"},
                                            "example": '{"resourceType":"Patient","id":"5e0c…"}\n'}}},
                       **error_docs(404)})
async def download_export_file(job_id: JobId, file_name: Annotated[str, Path(examples=["Observation.ndjson"])],
                               core: CoreDep, ctx: Ctx) -> Response:
    """One file of a completed export (a URL from the manifest's `output`), streamed from the shared
    export folder as `application/fhir+ndjson`. When the manifest says `requiresAccessToken`, send the token of
    the client that started the export (another client's job is a 404)."""
    path = await core.export_file(ctx, job_id, file_name)
    return FileResponse(path, media_type="application/fhir+ndjson")


#: system, Patient-level and Group $export in the CapabilityStatement (the Group type itself is service/group's)
CAPABILITY = Contribution(operations={
    "system": ({"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
                "documentation": "Bulk Data export of every resource (Prefer: respond-async; GET or POST "
                                 "Parameters); _type, _since, _typeFilter, _elements, _outputFormat"},),
    "Patient": ({"name": "export",
                 "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export",
                 "documentation": "Bulk Data export of the patients' compartments; patient limits it"},),
    "Group": ({"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export",
               "documentation": "Bulk Data export of exactly this study's data"},)})
