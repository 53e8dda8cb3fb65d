"""Encounter -> EncounterRecord: an enrolled subject's encounter at the site.

| domain field (`encounter`)   | FHIR path                          | code system / notes                                  |
|------------------------------|------------------------------------|------------------------------------------------------|
| `id`                         | `Encounter.id`                     |                                                      |
| `patient_id`                 | `Encounter.subject`                | Reference(Patient)                                   |
| `study_id`, `subject_id`     | extension `workflow-researchStudy`, else the patient's enrolment | as for Observation      |
| `status`                     | `Encounter.status`                 | http://hl7.org/fhir/encounter-status (required)      |
| `class_code`                 | `Encounter.class.code`             | v3-ActCode (AMB, IMP, …)                             |
| `period_start`, `period_end` | `Encounter.period.start` / `.end`  | instants in UTC                                      |
| `start_date`                 | `Encounter.period.start`           | local date as written: the visit of an Observation with this `encounter` and no date of its own |
"""  # noqa: E501 (the mapping table is wider than the code)

from typing import Any

from fhir_mappings.dates import parse_datetime
from fhir_mappings.outcome import Issue, issue
from fhir_mappings.terminology import ENCOUNTER_STATUS
from service.trial.models import Enrolment


def check_encounter(payload: dict[str, Any]) -> list[Issue]:
    """The required binding of `status` (the structure check has seen everything else)."""
    status = payload.get("status")
    if status not in ENCOUNTER_STATUS:
        return [issue("code-invalid", f"Unknown Encounter status '{status}'", "Encounter.status")]
    return []


def encounter_row(payload: dict[str, Any], id: str, enrolment: Enrolment) -> dict[str, Any]:
    period = payload.get("period") or {}
    start, start_date = parse_datetime(period.get("start"))
    end, _ = parse_datetime(period.get("end"))
    klass = payload.get("class") or {}
    return dict(id=id, patient_id=enrolment.patient_id, study_id=enrolment.study_id, subject_id=enrolment.subject_id,
                status=payload["status"], class_code=klass.get("code"), period_start=start, period_end=end,
                start_date=start_date)
