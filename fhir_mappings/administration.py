"""MedicationAdministration -> AdministrationRecord and Procedure -> ProcedureRecord: the cell administration of
an enrolled subject (a site records it as one or the other). R4's Procedure has no dose or route: those are
MedicationAdministration's.

| domain field                       | FHIR path                                                  | code system / notes |
|------------------------------------|------------------------------------------------------------|---------------------|
| `id`                               | `MedicationAdministration.id` / `Procedure.id`             |                     |
| `patient_id`                       | `.subject`                                                 | Reference(Patient)  |
| `study_id`, `subject_id`           | extension `workflow-researchStudy`, else the patient's enrolment | as for Observation |
| `status`                           | `MedicationAdministration.status`                          | http://terminology.hl7.org/CodeSystem/medication-admin-status (required) |
|                                    | `Procedure.status`                                         | http://hl7.org/fhir/event-status (required) |
| `code_system`, `code`              | `MedicationAdministration.medicationCodeableConcept.coding[0]` / `Procedure.code.coding[0]` | e.g. SNOMED CT |
| `effective`, `local_date`          | `MedicationAdministration.effectiveDateTime` or `effectivePeriod.start` | instant in UTC; date as written |
| `performed`, `local_date`          | `Procedure.performedDateTime` or `performedPeriod.start`  | instant in UTC; date as written |
| `dose_value`, `dose_unit`          | `MedicationAdministration.dosage.dose.value` / `.code` (else `.unit`) | UCUM, e.g. 2.5e7 `{cells}` |
| `route_system`, `route_code`       | `MedicationAdministration.dosage.route.coding[0]`          | SNOMED CT, e.g. 263887005 subcutaneous |
"""  # noqa: E501 (the mapping table is wider than the code)

from typing import Any

from fhir_mappings.dates import parse_datetime
from fhir_mappings.outcome import Issue, issue
from fhir_mappings.terminology import EVENT_STATUS, MEDICATION_ADMIN_STATUS, UCUM
from service.trial.models import Enrolment


def _first_coding(concept: Any) -> dict[str, Any]:
    codings = concept.get("coding") if isinstance(concept, dict) else None
    return codings[0] if codings else {}


def check_administration(payload: dict[str, Any]) -> list[Issue]:
    """The required binding of `status`; a dose, when given, is a quantity with a value."""
    issues = []
    status = payload.get("status")
    if status not in MEDICATION_ADMIN_STATUS:
        issues.append(issue("code-invalid", f"Unknown MedicationAdministration status '{status}'",
                            "MedicationAdministration.status"))
    dose = (payload.get("dosage") or {}).get("dose")
    if dose is not None and dose.get("value") is None:
        issues.append(issue("required", "A dose needs its value", "MedicationAdministration.dosage.dose.value"))
    return issues


def administration_row(payload: dict[str, Any], id: str, enrolment: Enrolment) -> dict[str, Any]:
    when = payload.get("effectiveDateTime") or (payload.get("effectivePeriod") or {}).get("start")
    effective, local = parse_datetime(when)
    dosage = payload.get("dosage") or {}
    dose = dosage.get("dose") or {}
    unit = dose.get("code") if dose.get("code") and dose.get("system", UCUM) == UCUM else dose.get("unit")
    route = _first_coding(dosage.get("route"))
    medication = _first_coding(payload.get("medicationCodeableConcept"))
    return dict(id=id, patient_id=enrolment.patient_id, study_id=enrolment.study_id, subject_id=enrolment.subject_id,
                status=payload["status"], code_system=medication.get("system"), code=medication.get("code"),
                effective=effective, local_date=local,
                dose_value=float(dose["value"]) if dose.get("value") is not None else None, dose_unit=unit,
                route_system=route.get("system"), route_code=route.get("code"))


def check_procedure(payload: dict[str, Any]) -> list[Issue]:
    status = payload.get("status")
    if status not in EVENT_STATUS:
        return [issue("code-invalid", f"Unknown Procedure status '{status}'", "Procedure.status")]
    return []


def procedure_row(payload: dict[str, Any], id: str, enrolment: Enrolment) -> dict[str, Any]:
    when = payload.get("performedDateTime") or (payload.get("performedPeriod") or {}).get("start")
    performed, local = parse_datetime(when)
    code = _first_coding(payload.get("code"))
    return dict(id=id, patient_id=enrolment.patient_id, study_id=enrolment.study_id, subject_id=enrolment.subject_id,
                status=payload["status"], code_system=code.get("system"), code=code.get("code"),
                performed=performed, local_date=local)
