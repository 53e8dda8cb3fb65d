"""Patient <-> PatientRecord.

| domain field (`patient`) | FHIR path                     | code system / notes                             |
|--------------------------|-------------------------------|-------------------------------------------------|
| `id`                     | `Patient.id`                  | server id                                       |
| `family`                 | `Patient.name[0].family`      |                                                 |
| `given`                  | `Patient.name[0].given[0]`    |                                                 |
| `gender`                 | `Patient.gender`              | http://hl7.org/fhir/administrative-gender (required) |
| `birth_date`             | `Patient.birthDate`           | partial dates kept in the JSON, day precision here |
| identifiers              | `Patient.identifier[]`        | `resource_identifier` (system, value), unique   |
"""

from collections.abc import Sequence
from typing import Any

from fhir_mappings import fhir
from fhir_mappings.dates import parse_date
from fhir_mappings.outcome import Issue, issue
from fhir_mappings.terminology import ADMINISTRATIVE_GENDER
from service.trial.models import PatientRecord


def check_patient(payload: dict[str, Any]) -> list[Issue]:
    gender = payload.get("gender")
    if gender is not None and gender not in ADMINISTRATIVE_GENDER:
        return [issue("code-invalid", f"Unknown gender '{gender}': use one of {sorted(ADMINISTRATIVE_GENDER)}",
                      "Patient.gender")]
    return []


def patient_from_fhir(payload: dict[str, Any], id: str) -> PatientRecord:
    names = payload.get("name") or [{}]
    name = next((n for n in names if n.get("use") == "official"), names[0])
    given = name.get("given") or [None]
    return PatientRecord(id=id, family=name.get("family"), given=given[0], gender=payload.get("gender"),
                         birth_date=parse_date(payload.get("birthDate")))


def patient_to_fhir(record: PatientRecord, identifiers: Sequence[tuple[str, str]] = ()) -> fhir.Patient:
    return fhir.Patient(
        id=record.id,
        identifier=[fhir.Identifier(system=s, value=v) for s, v in identifiers] or None,
        name=[fhir.HumanName(family=record.family, given=[record.given] if record.given else None)]
        if record.family or record.given else None,
        gender=record.gender,
        birthDate=record.birth_date,
    )
