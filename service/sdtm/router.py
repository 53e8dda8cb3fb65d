"""CDISC SDTM of a study over HTTP: the list of datasets, each as Dataset-JSON v1.1 or SAS XPORT v5, and
Define-XML 2.1. HTTP only: every route calls the interaction core (access, de-identification and audit there)."""

from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from service.api.docs import ANY_ERROR, error_docs
from service.api.http import CoreDep, Ctx
from service.sdtm import service
from service.stats.router import StudyId

router = APIRouter(tags=["SDTM"], responses=ANY_ERROR)

LIST_EXAMPLE = {"study": "7069a300-4611-42ff-bf39-cd6449e5302d", "studyid": "NCT01927705",
                "created": "2024-05-01T08:00:00Z",
                "datasets": [{"name": "DM", "label": "Demographics", "records": 34},
                             {"name": "QS", "label": "Questionnaires", "records": 760}]}
MEDIA = {"json": "application/json", "xpt": "application/octet-stream"}


@router.get("/studies/{study_id}/sdtm", name="list_sdtm", summary="SDTM datasets of a study, with record counts",
            responses={200: {"content": {"application/json": {"example": LIST_EXAMPLE}}}, **error_docs(404)})
async def list_sdtm(study_id: StudyId, core: CoreDep, ctx: Ctx) -> dict[str, Any]:
    """The CDISC SDTM (SDTMIG 3.4) datasets made from the study's live data: DM, SV, QS, LB, AE, DS, EX, the trial
    design TS, TA, TE, TV and SUPPDM/SUPPEX, each with its record count. Each is at
    `/studies/{id}/sdtm/{NAME}.json` (Dataset-JSON v1.1) and `.xpt` (SAS XPORT v5), described by
    `/studies/{id}/sdtm/define.xml`. Needs `r` on ResearchStudy, Patient, ResearchSubject, Observation,
    AdverseEvent, MedicationAdministration and Procedure, in the study; a de-identified client's datasets are made
    from the de-identified resources."""
    return await core.sdtm_datasets(ctx, study_id)


@router.get("/studies/{study_id}/sdtm/{dataset}", name="read_sdtm", summary="One SDTM dataset, or define.xml",
            response_class=FileResponse,
            responses={200: {"description": "Dataset-JSON v1.1, SAS XPORT v5 or Define-XML 2.1", "content": {
                "application/json": {"schema": {"type": "object"}}, "application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"}}, "application/xml": {
                    "schema": {"type": "string"}}}}, **error_docs(404)})
async def read_sdtm(study_id: StudyId, core: CoreDep, ctx: Ctx,
                    dataset: Annotated[str, Path(description="`DM.json`, `DM.xpt`, … or `define.xml`",
                                                 examples=["DM.json"])]) -> FileResponse:
    """One dataset: `{NAME}.json` in Dataset-JSON v1.1 (valid against CDISC's schema), `{NAME}.xpt` in SAS XPORT
    version 5 (8-character names, 40-character labels, character values of at most 200 bytes, ASCII), or
    `define.xml` (Define-XML 2.1 of every dataset). The same store state gives the same bytes: rows sorted by
    USUBJID and the domain's keys, `--SEQ` numbered in that order, and the creation time the latest
    `meta.lastUpdated` of what the datasets come from. 404 for a name that is not one of these."""
    return await _file(core, ctx, study_id, dataset, "SDTM")


async def _file(core: Any, ctx: Any, study_id: str, dataset: str, standard: str) -> FileResponse:
    out_dir = service.scratch_dir()
    try:
        path = await core.sdtm_file(ctx, study_id, dataset, out_dir, standard)
    except BaseException:
        service.remove(out_dir)
        raise
    media = "application/xml" if path.suffix == ".xml" else MEDIA[path.suffix.lstrip(".")]
    return FileResponse(path, media_type=media, filename=path.name, background=BackgroundTask(service.remove, out_dir))


ADAM_EXAMPLE = {"study": "7069a300-4611-42ff-bf39-cd6449e5302d", "studyid": "NCT01927705",
                "created": "2024-05-01T08:00:00Z",
                "datasets": [{"name": "ADSL", "label": "Subject-Level Analysis Dataset", "records": 34},
                             {"name": "ADEASI", "label": "Eczema Area and Severity Index Analysis Data",
                              "records": 99}]}


@router.get("/studies/{study_id}/adam", name="list_adam", summary="ADaM datasets of a study, with record counts",
            responses={200: {"content": {"application/json": {"example": ADAM_EXAMPLE}}}, **error_docs(404)})
async def list_adam(study_id: StudyId, core: CoreDep, ctx: Ctx) -> dict[str, Any]:
    """The CDISC ADaM datasets made from the same pass as the SDTM ones: ADSL (one row per subject: arms,
    population flags ITTFL/SAFFL/EFFFL/COMPLFL, dates, reason for discontinuation) and one BDS dataset per measure
    of the study's catalogue (`AD` + its test code: AVAL, BASE, CHG, PCHG, AVISIT, ABLFL, and CRITy/CRITyFL for the
    study's responder definitions), whose figures are the summaries' (`/studies/{id}/summary`). Each at
    `/studies/{id}/adam/{NAME}.json` or `.xpt`. Access as for SDTM."""
    return await core.sdtm_datasets(ctx, study_id, "ADaM")


@router.get("/studies/{study_id}/adam/{dataset}", name="read_adam", summary="One ADaM dataset",
            response_class=FileResponse,
            responses={200: {"description": "Dataset-JSON v1.1 or SAS XPORT v5", "content": {
                "application/json": {"schema": {"type": "object"}}, "application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"}}}}, **error_docs(404)})
async def read_adam(study_id: StudyId, core: CoreDep, ctx: Ctx,
                    dataset: Annotated[str, Path(description="`ADSL.json`, `ADEASI.xpt`, …",
                                                 examples=["ADSL.json"])]) -> FileResponse:
    """One ADaM dataset as Dataset-JSON v1.1 (`.json`) or SAS XPORT v5 (`.xpt`); 404 for a name the study has
    not (the BDS names follow its catalogue's measures)."""
    return await _file(core, ctx, study_id, dataset, "ADaM")
