"""Observation <-> MeasurementRecord: one result of a catalogue measure for an enrolled subject.

| domain field (`measurement`) | FHIR path                                    | code system / notes                         |
|------------------------------|----------------------------------------------|---------------------------------------------|
| `id`                         | `Observation.id`                             |                                             |
| `patient_id`                 | `Observation.subject`                        | Reference(Patient): literal, conditional or by identifier |
| `study_id`, `subject_id`     | extension `workflow-researchStudy`, else the patient's enrolment | R4 core extension http://hl7.org/fhir/StructureDefinition/workflow-researchStudy |
| `measure`                    | `Observation.code.coding[]`                  | a code of one of the study catalogue's ObservationDefinitions |
| `code_system`, `code`        | the matching `Observation.code.coding`       |                                             |
| `category`                   | `Observation.category[0].coding[0].code`     | observation-category (survey, laboratory)   |
| `status`                     | `Observation.status`                         | http://hl7.org/fhir/observation-status (required) |
| `value`, `unit`              | `Observation.valueQuantity.value` / `.code`  | converted to the measure's UCUM unit         |
| `original_value`, `original_unit` | `Observation.valueQuantity.value` / `.code` (or `.unit`) | as sent                     |
| `effective`, `local_date`    | `Observation.effectiveDateTime` or `effectivePeriod.start` | instant in UTC; date as written |
| `study_day`, `visit`         | derived: local date − day 0 (`ResearchSubject.period.start`) | baseline / week-4 / week-12 / unscheduled |
| `visit`, `study_day` (out)  | `Observation.meta.tag` (added by the server) | https://trial-fhir.org/CodeSystem/visit `week-4`; https://trial-fhir.org/CodeSystem/study-day `28` |
| parts of a composite score   | `Observation.component[]` (the codes of the ObservationDefinition's `composite-score` parts) | the total checked against its FHIRPath expression (±0.05) |
"""  # noqa: E501 (the mapping table is wider than the code)

from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, cast

from fhir_mappings import fhir
from fhir_mappings.dates import parse_datetime
from fhir_mappings.outcome import Issue, issue
from fhir_mappings.terminology import (
    OBSERVATION_STATUS,
    RESEARCH_STUDY_EXT,
    STUDY_DAY_SYSTEM,
    UCUM,
    VISIT_SYSTEM,
    Catalogue,
    Composite,
    Measure,
)
from service.observation.models import MeasurementRecord
from service.trial.models import Enrolment

TOLERANCE = Decimal("0.05")


def study_extension_reference(payload: dict[str, Any]) -> dict[str, Any] | None:
    for ext in payload.get("extension") or []:
        if ext.get("url") == RESEARCH_STUDY_EXT:
            return ext.get("valueReference") or {}
    return None


def find_measure(payload: dict[str, Any], catalogue: Catalogue) -> tuple[Measure, dict[str, Any]] | None:
    for coding in (payload.get("code") or {}).get("coding") or []:
        measure = catalogue.measure_for(coding.get("system"), coding.get("code"))
        if measure is not None:
            return measure, coding
    return None


def unknown_code_issue(payload: dict[str, Any], catalogue: Catalogue) -> Issue:
    codes = ", ".join(f"{c.get('system')}|{c.get('code')}" for c in (payload.get("code") or {}).get("coding") or [])
    known = ", ".join(f"{m.key} ({m.codes[0][0]}|{m.codes[0][1]})" for m in catalogue.measures)
    return issue("code-invalid", f"Observation.code [{codes or 'no coding'}] is not a measure of this study; "
                 f"known measures: {known}", "Observation.code.coding")


def _decimal(value: object) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        result = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return result if result.is_finite() else None


def quantity_unit(quantity: dict[str, Any]) -> str | None:
    """The unit a quantity is in: its UCUM code, else its human-readable unit."""
    if quantity.get("code") and quantity.get("system", UCUM) == UCUM:
        code: str = quantity["code"]
        return code
    return quantity.get("unit") or quantity.get("code")


def check_observation(payload: dict[str, Any], measure: Measure) -> list[Issue]:
    """Value-set bindings and trial rules for one result of `measure`."""
    issues = []
    status = payload.get("status")
    if status not in OBSERVATION_STATUS:
        issues.append(issue("code-invalid", f"Unknown Observation status '{status}': use one of "
                            f"{sorted(OBSERVATION_STATUS)}", "Observation.status"))
    quantity = payload.get("valueQuantity")
    if quantity is None:
        other = next((k for k in payload if k.startswith("value")), None)
        where = f"Observation.{other}" if other else "Observation.value[x]"
        return issues + [issue("required", f"{measure.key} needs a valueQuantity in {measure.unit}", where)]
    value = _decimal(quantity.get("value"))
    if value is None:
        return issues + [issue("required", f"{measure.key} needs a numeric value", "Observation.valueQuantity.value")]
    unit = quantity_unit(quantity)
    if unit is None:
        return issues + [issue("required", f"{measure.key} needs a unit ({measure.unit})",
                               "Observation.valueQuantity.code")]
    canonical = measure.to_canonical(value, unit)
    if canonical is None:
        return issues + [issue("code-invalid", f"Unit '{unit}' is not accepted for {measure.key}: use one of "
                               f"{sorted(measure.units)}", "Observation.valueQuantity.code")]
    issues += _check_value(measure, value, canonical, "Observation.valueQuantity.value")
    if payload.get("component") and measure.parts:
        issues += _check_parts(measure, canonical, payload["component"])
    return issues


def _check_value(measure: Measure, value: Decimal, canonical: Decimal, where: str) -> list[Issue]:
    if measure.integer and value != value.to_integral_value():
        return [issue("value", f"{measure.key} must be a whole number, got {value}", where)]
    # `value` is finite (`_decimal` keeps no NaN or Infinity), so its exponent is an int, never 'n'/'N'/'F'
    if measure.max_decimals is not None and -cast(int, value.as_tuple().exponent) > measure.max_decimals \
            and value != value.quantize(Decimal(1).scaleb(-measure.max_decimals)):
        return [issue("value", f"{measure.key} has at most {measure.max_decimals} decimal(s), got {value}", where)]
    if (measure.min is not None and canonical < measure.min) or (measure.max is not None and canonical > measure.max):
        upper = measure.max if measure.max is not None else "∞"
        why = " (a plausibility limit: a data-entry or unit error?)" if measure.category == "laboratory" else ""
        return [issue("value", f"{measure.key} {canonical} {measure.unit} is outside {measure.min}…{upper}{why}",
                      where)]
    return []


def _component_values(components: list[dict[str, Any]], composite: Composite
                      ) -> tuple[dict[str, tuple[int, Decimal | None]], list[Issue]]:
    """{part name: (component index, value)} of the components that are parts of `composite`."""
    names = {(p.system, p.code): p.name for p in composite.parts}
    values: dict[str, tuple[int, Decimal | None]] = {}
    for i, comp in enumerate(components):
        for coding in (comp.get("code") or {}).get("coding") or []:
            name = names.get((coding.get("system"), coding.get("code")))
            if name is not None:
                raw = (comp.get("valueQuantity") or {}).get("value", comp.get("valueInteger"))
                values[name] = (i, _decimal(raw))
    codes = {p.name: p.code for p in composite.parts}
    missing = [issue("required", f"Component {codes[name]} has no value", f"Observation.component[{i}].value[x]")
               for name, (i, v) in values.items() if v is None]
    return values, missing


def _check_parts(measure: Measure, total: Decimal, components: list[dict[str, Any]]) -> list[Issue]:
    """The parts sent as components against the total: all of them or none, each within its range, and the
    total as the catalogue's expression computes it from them (±TOLERANCE)."""
    composite = measure.parts
    if composite is None:
        return []
    values, issues = _component_values(components, composite)
    if issues or not values:
        return issues
    missing = [p.code for p in composite.parts if p.name not in values]
    if missing:
        return [issue("required", f"{measure.key} components are incomplete, missing: {', '.join(missing)}",
                      "Observation.component")]
    for part in composite.parts:
        i, v = values[part.name]
        if v is not None and ((part.min is not None and v < part.min) or (part.max is not None and v > part.max)):
            issues.append(issue("value", f"{part.code} must be within {part.min}…{part.max}, got {v}",
                                f"Observation.component[{i}].valueQuantity.value"))
    if issues:
        return issues
    computed = composite.evaluate({name: v or Decimal(0) for name, (_, v) in values.items()})
    if computed is None:
        return [issue("value", f"{measure.key} can't be computed from its components", "Observation.component")]
    if abs(computed - total) > TOLERANCE:
        issues.append(issue("value", f"{measure.key} total {total} does not match its components ({computed:.2f})",
                            "Observation.valueQuantity.value"))
    return issues


def effective_of(payload: dict[str, Any]) -> str | None:
    return payload.get("effectiveDateTime") or (payload.get("effectivePeriod") or {}).get("start") \
        or payload.get("effectiveInstant")


def measurement_row(payload: dict[str, Any], id: str, enrolment: Enrolment, measure: Measure,
                    coding: dict[str, Any]) -> dict[str, Any]:
    """The typed row of an Observation that passed `check_observation`, as the plain dict of its columns (building
    a MeasurementRecord costs about as much as parsing the Observation, ~100 us). Its `study_day` and `visit` are
    the trial's to assign (service/trial/service.py `assign_visit`): None and "unscheduled" here."""
    quantity = payload["valueQuantity"]
    unit = quantity_unit(quantity)
    value = _decimal(quantity["value"])
    canonical = measure.to_canonical(value, unit) if value is not None and unit is not None else None
    assert canonical is not None, "check_observation accepts only a numeric value in a unit of the measure"
    instant, local = parse_datetime(effective_of(payload))
    category = None
    for cat in payload.get("category") or []:
        codings = cat.get("coding") or []
        if codings and codings[0].get("code"):
            category = codings[0]["code"]
            break
    return dict(
        id=id, patient_id=enrolment.patient_id, study_id=enrolment.study_id, subject_id=enrolment.subject_id,
        measure=measure.key, code_system=coding.get("system") or "", code=coding.get("code") or "",
        category=category, status=payload["status"], value=float(canonical),
        unit=measure.unit, original_value=str(quantity["value"]), original_unit=unit,
        effective=instant, local_date=local, study_day=None, visit="unscheduled",
    )


def with_derived_tags(meta: dict[str, Any] | None, visit: str, study_day: int | None) -> dict[str, Any]:
    """`meta` with the values the server derives put in `meta.tag`: the assigned visit (VISIT_SYSTEM) and, when
    known, the study day (STUDY_DAY_SYSTEM), so that a reader of the resource (an export) needs no copy of the
    visit windows. Tags of those two systems are the server's: any the client sent are replaced; every other tag
    and element of `meta` is kept as sent."""
    tags = [t for t in (meta or {}).get("tag") or []
            if not (isinstance(t, dict) and t.get("system") in (VISIT_SYSTEM, STUDY_DAY_SYSTEM))]
    tags.append({"system": VISIT_SYSTEM, "code": visit})
    if study_day is not None:
        tags.append({"system": STUDY_DAY_SYSTEM, "code": str(study_day)})
    return {**(meta or {}), "tag": tags}


def _part_system(measure: Measure, code: str) -> str:
    """The code system of the part of `measure` coded `code` (that of the measure's own code, for none)."""
    parts = measure.parts.parts if measure.parts else ()
    return next((p.system for p in parts if p.code == code), measure.codes[0][0])


def observation_to_fhir(record: MeasurementRecord, measure: Measure, effective: str | None = None,
                        components: Sequence[tuple[str, float]] = ()) -> fhir.Observation:
    """An Observation for a measurement (the demo cohort is built this way)."""
    system, code = record.code_system or measure.codes[0][0], record.code or measure.codes[0][1]
    category = "laboratory" if measure.category == "laboratory" else "survey"
    return fhir.Observation(
        id=record.id,
        status=record.status,
        category=[fhir.CodeableConcept(coding=[fhir.Coding(
            system="http://terminology.hl7.org/CodeSystem/observation-category", code=category)])],
        code=fhir.CodeableConcept(coding=[fhir.Coding(system=system, code=code, display=measure.display)],
                                  text=measure.display),
        subject=fhir.Reference(reference=f"Patient/{record.patient_id}"),
        extension=[fhir.Extension(url=RESEARCH_STUDY_EXT,
                                  valueReference=fhir.Reference(reference=f"ResearchStudy/{record.study_id}"))],
        effectiveDateTime=effective or (record.effective.isoformat() if record.effective else None),
        valueQuantity=fhir.Quantity(value=record.original_value, unit=record.original_unit, system=UCUM,
                                    code=record.original_unit),
        component=[fhir.ObservationComponent(
            code=fhir.CodeableConcept(coding=[fhir.Coding(system=_part_system(measure, c), code=c)]),
            valueQuantity=fhir.Quantity(value=v, unit="{score}", system=UCUM, code="{score}"))
            for c, v in components] or None,
    )
