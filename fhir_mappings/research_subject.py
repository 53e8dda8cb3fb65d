"""ResearchSubject <-> SubjectRecord (a patient's enrolment in a study).

| domain field (`research_subject`) | FHIR path                            | code system / notes                 |
|-----------------------------------|--------------------------------------|-------------------------------------|
| `id`                              | `ResearchSubject.id`                 |                                     |
| `study_id`                        | `ResearchSubject.study`              | Reference(ResearchStudy), must exist |
| `patient_id`                      | `ResearchSubject.individual`         | Reference(Patient), literal, conditional or by identifier |
| `status`                          | `ResearchSubject.status`             | http://hl7.org/fhir/research-subject-status (required) |
| `assigned_arm`                    | `ResearchSubject.assignedArm`        | one of the study's `arm.name`       |
| `actual_arm`                      | `ResearchSubject.actualArm`          | one of the study's `arm.name`       |
| `arm`                             | actualArm, else assignedArm          | the arm summaries count it in       |
| `day0`                            | `ResearchSubject.period.start`       | day of administration (local date)  |
| `end_date`                        | `ResearchSubject.period.end`         |                                     |
"""  # noqa: E501 (the mapping table is wider than a code line)

from collections.abc import Sequence
from typing import Any

from fhir_mappings import fhir
from fhir_mappings.dates import parse_date
from fhir_mappings.outcome import Issue, issue
from fhir_mappings.terminology import RESEARCH_SUBJECT_STATUS
from service.trial.models import SubjectRecord


def check_research_subject(payload: dict[str, Any], arm_names: set[str]) -> list[Issue]:
    issues = []
    status = payload.get("status")
    if status not in RESEARCH_SUBJECT_STATUS:
        issues.append(issue("code-invalid", f"Unknown ResearchSubject status '{status}'", "ResearchSubject.status"))
    for element in ("assignedArm", "actualArm"):
        arm = payload.get(element)
        if arm is not None and arm not in arm_names:
            issues.append(issue("business-rule", f"{element} '{arm}' is not an arm of the study "
                                f"(arms: {sorted(arm_names)})", f"ResearchSubject.{element}"))
    period = payload.get("period") or {}
    start, end = parse_date(period.get("start")), parse_date(period.get("end"))
    if period.get("start") and start is None:
        issues.append(issue("business-rule", "period.start (day 0) must be a full date",
                            "ResearchSubject.period.start"))
    if start and end and end < start:
        issues.append(issue("business-rule", "period.end is before period.start", "ResearchSubject.period.end"))
    return issues


def research_subject_from_fhir(payload: dict[str, Any], id: str, study_id: str, patient_id: str) -> SubjectRecord:
    period = payload.get("period") or {}
    return SubjectRecord(
        id=id, study_id=study_id, patient_id=patient_id, status=payload["status"],
        assigned_arm=payload.get("assignedArm"), actual_arm=payload.get("actualArm"),
        arm=payload.get("actualArm") or payload.get("assignedArm"),
        day0=parse_date(period.get("start")), end_date=parse_date(period.get("end")),
    )


def research_subject_to_fhir(record: SubjectRecord,
                             identifiers: Sequence[tuple[str, str]] = ()) -> fhir.ResearchSubject:
    period = None
    if record.day0 or record.end_date:
        period = fhir.Period(start=record.day0.isoformat() if record.day0 else None,
                             end=record.end_date.isoformat() if record.end_date else None)
    return fhir.ResearchSubject(
        id=record.id,
        identifier=[fhir.Identifier(system=s, value=v) for s, v in identifiers] or None,
        status=record.status,
        period=period,
        study=fhir.Reference(reference=f"ResearchStudy/{record.study_id}"),
        individual=fhir.Reference(reference=f"Patient/{record.patient_id}"),
        assignedArm=record.assigned_arm,
        actualArm=record.actual_arm,
    )
