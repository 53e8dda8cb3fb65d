"""Trial summaries over HTTP: JSON, tidy CSV, FHIR MeasureReport (`$summary`), SVG charts, an HTML report.

HTTP only: every route calls one function of service/stats/service.py.
"""

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import HTMLResponse, Response

from service.api.docs import ANY_ERROR, error_docs, fhir_json
from service.api.http import CoreDep, Ctx
from service.conformance.service import Contribution
from service.responses import FhirJSONResponse
from service.stats.schemas import SUMMARY_EXAMPLE, StudyProgress, StudySummary

#: ResearchStudy/{id}/$summary in the CapabilityStatement
CAPABILITY = Contribution(operations={"ResearchStudy": ({
    "name": "summary",
    "definition": "https://trial-fhir.org/OperationDefinition/ResearchStudy-summary",
    "documentation": "GET [base]/ResearchStudy/{id}/$summary: the study's efficacy and safety summary per arm "
                     "and visit as a MeasureReport (type summary, one group per arm, stratified by visit).",
},)})

StudyId = Annotated[str, Path(description="Logical id of the ResearchStudy, or its registry number (an identifier "
                                          "value such as NCT01927705, or system|value)", examples=["nct01927705"])]
CSV_EXAMPLE = ("arm,visit,measure,statistic,value,unit,versus\n"
               "high-dose,all,SUBJECTS,enrolled,11,,\n"
               "high-dose,all,SUBJECTS,withdrawn,1,,\n"
               "high-dose,baseline,EASI,n,11,,\n"
               "high-dose,baseline,EASI,mean,26.436363636363637,score,\n"
               "high-dose,baseline,IGE,mean,2411.5,IU/mL,\n"
               "high-dose,week-12,EASI-50,rate,0.6,,\n"
               "high-dose,all,AE-SERIOUS,events,0,,\n"
               "high-dose,week-12,EASI-50,p_value,0.39,,low-dose\n"
               "high-dose,week-12,EASI,pct_change_difference,-19.5,%,low-dose\n")
MEASURE_REPORT_EXAMPLE = {
    "resourceType": "MeasureReport", "status": "complete", "type": "summary",
    "measure": "https://trial-fhir.org/Measure/atopic-dermatitis-summary", "date": "2024-05-01T08:00:00Z",
    "period": {"start": "2024-01-10", "end": "2024-04-30"},
    "group": [{"code": {"coding": [{"system": "https://trial-fhir.org/CodeSystem/study-arm", "code": "high-dose"}],
                        "text": "5.0 × 10^7 hUCB-MSCs"},
               "population": [{"code": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                                              "measure-population", "code": "initial-population"}]},
                               "count": 11}],
               "stratifier": [{"code": [{"coding": [{"system": "https://trial-fhir.org/CodeSystem/summary-measure",
                                                     "code": "EASI"}], "text": "EASI"},
                                        {"coding": [{"system": "https://trial-fhir.org/CodeSystem/summary-statistic",
                                                     "code": "mean"}], "text": "mean"}],
                               "stratum": [{"value": {"coding": [{"system": "https://trial-fhir.org/CodeSystem/visit",
                                                                  "code": "week-12"}], "text": "week-12"},
                                            "measureScore": {"value": 12.1, "unit": "{score}",
                                                             "system": "http://unitsofmeasure.org",
                                                             "code": "{score}"}}]}]}],
}

router = APIRouter(tags=["Summary"], responses=ANY_ERROR)


@router.get("/studies/{study_id}/summary", name="read_summary", summary="Efficacy and safety summary (JSON)",
            response_model=StudySummary,
            responses={200: {"content": {"application/json": {"example": SUMMARY_EXAMPLE}}}, **error_docs(404)})
async def read_summary(study_id: StudyId, core: CoreDep, ctx: Ctx) -> StudySummary:
    """The trial's numbers, computed live: per arm (name, dose, enrolled, completed, withdrawn), per visit and
    measure n, mean, SD, median, min, max, change and % change from baseline; responders (EASI-50/75/90,
    IGA-SUCCESS) with a 95% Wilson interval; the safety table; and the dose comparison between arms (rate
    difference with Fisher's exact p, % change difference with a Mann–Whitney U p).

    Only results with status final, amended or corrected count, at the visits baseline, week-4 and week-12 (the
    value closest to the target day; on a tie the later one). A subject belongs to its actualArm, else its
    assignedArm. Figures are unrounded; a statistic with nothing behind it is `null`, a zero count is `0`.
    Completed = not withdrawn and either a counted result at the last visit or status off-study / follow-up."""
    return await core.study_summary(ctx, study_id)


@router.get("/studies/{study_id}/progress", name="read_progress", summary="Data completeness per visit (JSON)",
            response_model=StudyProgress, responses=error_docs(404))
async def read_progress(study_id: StudyId, core: CoreDep, ctx: Ctx) -> StudyProgress:
    """How far the study's data has come, as of today (UTC), per visit of its catalogue: subjects due (window
    opened, not withdrawn), results expected (due × measures) and received (counted results), subjects overdue
    (window closed without a result) and awaiting (window open, no result yet); its actual adverse events by
    seriousness; when its latest result was obtained. What the dashboard at `/` shows; the same access as
    `/summary` (`r` on Observation, AdverseEvent and ResearchSubject, the study one of the client's)."""
    return await core.study_progress(ctx, study_id)


@router.get("/studies/{study_id}/summary.csv", name="read_summary_csv", summary="Summary as tidy CSV",
            response_class=Response,
            responses={200: {"description": "One row per figure", "content": {"text/csv": {
                "schema": {"type": "string"}, "example": CSV_EXAMPLE}}}, **error_docs(404)})
async def read_summary_csv(study_id: StudyId, core: CoreDep, ctx: Ctx) -> Response:
    """The same figures as `/summary`, one per row, with the columns `arm,visit,measure,statistic,value,unit,versus`.

    `visit` is a visit key (`all` for subject counts and safety rows); `measure` a measure key (EASI, SCORAD, IGA,
    PRURITUS, IGE, EOSINOPHILS, EOSINOPHILS-PCT), a responder key (EASI-50, EASI-75, EASI-90, IGA-SUCCESS), a
    safety key (AE-ANY, AE-SERIOUS, AE-SEVERE, AE-RELATED, AE-WITHDRAWAL) or `SUBJECTS`; `statistic` is enrolled,
    completed, withdrawn (SUBJECTS), n, mean, sd, median, min, max, mean_change, mean_pct_change (measures), n,
    responders, rate, ci_low, ci_high (responders) or subjects, events (safety). Rows with `versus` set compare
    `arm` with that arm: rate_difference, odds_ratio, p_value (Fisher's exact; responder keys) and n, n_versus,
    pct_change_difference, u_statistic, p_value (Mann–Whitney U; measures). `unit` is the figure's unit as people
    write it (`IU/mL`, `×10³/µL`, `score`, `%` for % changes), empty for counts, rates (0–1) and p-values. Values
    are unrounded (counts as integers, other figures as the float's repr). A zero count is written; a statistic
    with nothing behind it (no values, the SD of one value) is left out."""
    text = await core.study_summary_csv(ctx, study_id)
    return Response(text, media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'inline; filename="summary-{study_id}.csv"'})


@router.get("/fhir/ResearchStudy/{study_id}/$summary", name="summary_ResearchStudy", tags=["ResearchStudy"],
            summary="$summary: the summary as a MeasureReport", response_class=FhirJSONResponse,
            responses={200: fhir_json(MEASURE_REPORT_EXAMPLE, "A MeasureReport (type summary)"), **error_docs(404)})
async def summary_operation(study_id: StudyId, core: CoreDep, ctx: Ctx) -> FhirJSONResponse:
    """The figures of `/studies/{id}/summary` as a FHIR R4 MeasureReport, for FHIR-only portals: status
    `complete`, type `summary`, measure `https://trial-fhir.org/Measure/{catalogue}-summary`, one group per arm
    (group.code = arm, populations enrolled/completed/withdrawn), one stratifier per figure (code = measure key
    and statistic) with one stratum per visit (`all` for safety) carrying the value as measureScore."""
    return FhirJSONResponse(await core.study_measure_report(ctx, study_id))


@router.get("/studies/{study_id}/charts/{measure}.svg", name="read_chart", summary="Chart of one measure (SVG)",
            response_class=Response,
            responses={200: {"description": "An SVG image", "content": {"image/svg+xml": {
                "schema": {"type": "string"}, "example": '<svg xmlns="http://www.w3.org/2000/svg" …>…</svg>'}}},
                **error_docs(404)})
async def read_chart(study_id: StudyId, core: CoreDep, ctx: Ctx,
               measure: Annotated[str, Path(description="A measure key (EASI, IGE, …) or a responder key "
                                            "(EASI-50, IGA-SUCCESS, …)", examples=["EASI"])]) -> Response:
    """For a measure, mean ± SD at each visit with one line per arm; for a responder key, the responder rate
    per post-baseline visit as bars, one per arm, with the 95% Wilson interval. 404 for an unknown key."""
    return Response(await core.study_chart(ctx, study_id, measure), media_type="image/svg+xml")


@router.get("/studies/{study_id}/report", name="read_report", summary="Human-readable report (HTML)",
            response_class=HTMLResponse,
            responses={200: {"description": "An HTML page", "content": {"text/html": {
                "schema": {"type": "string"}, "example": "<!DOCTYPE html><html>…</html>"}}}, **error_docs(404)})
async def read_report(study_id: StudyId, core: CoreDep, ctx: Ctx) -> HTMLResponse:
    """One page with the arms, efficacy, responder, safety and dose-comparison tables and their charts."""
    return HTMLResponse(await core.study_report(ctx, study_id))
