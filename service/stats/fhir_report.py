"""A summary as a FHIR R4 MeasureReport (type `summary`): pure mapping, validated with fhir.resources.

| summary                         | MeasureReport                                                             |
|---------------------------------|---------------------------------------------------------------------------|
| the study                       | extension workflow-researchStudy → ResearchStudy/{id}                     |
| catalogue                       | measure = https://trial-fhir.org/Measure/{catalogue}-summary               |
| period, generated               | period, date                                                              |
| arm (name, dose)                | group.code (study-arm code system; text = dose)                           |
| enrolled / completed / withdrawn| group.population (initial-population / summary-statistic#completed / …)  |
| one figure (key, statistic)     | group.stratifier: code = [measure key (+ its LOINC/ad-scores coding),     |
|                                 |   statistic]; one stratum per visit (`all` for safety), measureScore      |
| a suppressed figure (k-anon.)   | measureScore / population `_count` with data-absent-reason `masked`       |
| the figure's analysis population| the statistic code's text: `rate (non-responder-imputation)`, `mean (observed)` |
"""

from fhir_mappings import fhir
from fhir_mappings.terminology import RESEARCH_STUDY_EXT, UCUM
from service.catalogue.compiled import compiled_catalogue
from service.stats.schemas import StudySummary

MEASURE_BASE = "https://trial-fhir.org/Measure"
ARM_SYSTEM = "https://trial-fhir.org/CodeSystem/study-arm"
VISIT_SYSTEM = "https://trial-fhir.org/CodeSystem/visit"
KEY_SYSTEM = "https://trial-fhir.org/CodeSystem/summary-measure"
STATISTIC_SYSTEM = "https://trial-fhir.org/CodeSystem/summary-statistic"
POPULATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/measure-population"
COUNTS = {"n", "n_observed", "n_change", "n_pct_change", "responders", "subjects", "events"}
#: a suppressed figure (de-identified view: fewer than k subjects behind it)
MASKED = {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "masked"}


def _population(code: dict, count: int | None) -> dict:
    return {"code": code, "count": count} if count is not None else {"code": code, "_count": {"extension": [MASKED]}}


def measure_url(catalogue: str) -> str:
    return f"{MEASURE_BASE}/{catalogue}-summary"


def _concept(system: str, code: str, text: str | None = None) -> dict:
    concept: dict = {"coding": [{"system": system, "code": code}]}
    if text:
        concept["text"] = text
    return concept


def _score(value: float | int | str, statistic: str, unit: str) -> dict:
    if isinstance(value, str):  # suppressed (de-identified view, fewer than k subjects): no value, and why
        return {"extension": [MASKED]}
    if statistic in COUNTS or statistic in ("rate", "ci_low", "ci_high"):
        unit = "1"
    elif statistic == "mean_pct_change":
        unit = "%"
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def summary_measure_report(summary: StudySummary, tidy: list[tuple],
                           populations: dict[tuple[str, str], str] | None = None) -> dict:
    """The MeasureReport of `summary`; `tidy` are its (arm, visit, measure, statistic, value) rows, `populations` the
    analysis population of each responder key (by visit, key; `observed` otherwise, `enrolled` for safety)."""
    populations = populations or {}
    safety = {s.measure for arm in summary.arms for s in arm.safety}
    catalogue = compiled_catalogue(summary.catalogue, summary.catalogue_version)
    units = {m.key: m.unit for m in summary.measures}
    codings = {m.key: [{"system": s, "code": c} for s, c in m.codes] for m in catalogue.measures}
    by_arm: dict[str, dict[tuple[str, str], list[dict]]] = {}
    population_of: dict[str, str] = {}
    for arm, visit, key, statistic, value in tidy:
        population_of[key] = "enrolled" if key in safety else populations.get((visit, key), "observed")
        strata = by_arm.setdefault(arm, {}).setdefault((key, statistic), [])
        strata.append({"value": _concept(VISIT_SYSTEM, visit, visit),
                       "measureScore": _score(value, statistic, units.get(key, "1"))})
    groups = []
    for arm in summary.arms:
        stratifiers = []
        for (key, statistic), strata in by_arm.get(arm.name, {}).items():
            key_concept = {"coding": [{"system": KEY_SYSTEM, "code": key}, *codings.get(key, [])], "text": key}
            stratifiers.append({"code": [key_concept, _concept(STATISTIC_SYSTEM, statistic,
                                                               f"{statistic} ({population_of[key]})")],
                                "stratum": strata})
        groups.append({
            "code": _concept(ARM_SYSTEM, arm.name, arm.dose or arm.name),
            "population": [
                _population(_concept(POPULATION_SYSTEM, "initial-population", "enrolled"), arm.enrolled),
                _population(_concept(STATISTIC_SYSTEM, "completed", "completed"), arm.completed),
                _population(_concept(STATISTIC_SYSTEM, "withdrawn", "withdrawn"), arm.withdrawn),
            ],
            "stratifier": stratifiers,
        })
    generated = summary.generated.isoformat().replace("+00:00", "Z")
    day = summary.generated.date().isoformat()
    report = {
        "resourceType": "MeasureReport",
        "extension": [{"url": RESEARCH_STUDY_EXT, "valueReference": {"reference": f"ResearchStudy/{summary.study_id}",
                                                                     "display": summary.title or summary.study_id}}],
        "status": "complete",
        "type": "summary",
        "measure": measure_url(summary.catalogue),
        "date": generated,
        "period": {"start": (summary.period_start.isoformat() if summary.period_start else day),
                   "end": (summary.period_end.isoformat() if summary.period_end else day)},
        "group": groups,
    }
    fhir.MeasureReport.model_validate(report)
    return report
