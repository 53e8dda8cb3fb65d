"""Provenance -> ProvenanceRecord + ProvenanceTargetRecord: who recorded which of the trial's resources, when.

| domain field (`provenance`)  | FHIR path                         | code system / notes                                   |
|------------------------------|-----------------------------------|-------------------------------------------------------|
| `id`                         | `Provenance.id`                   |                                                       |
| `provenance_target` rows     | `Provenance.target[]`             | each reference to a stored type, resolved to `Type/id` |
| `study_id`                   | the study of its targets          | a target's study, or a target Patient's enrolment     |
| `patient_id`                 | a target Patient, else the targets' patient |                                             |
| `recorded`                   | `Provenance.recorded`             | instant in UTC                                        |
| `agent`                      | `Provenance.agent[0].who`         | its reference, else its display                       |
"""  # noqa: E501 (the mapping table is wider than the code)

from collections.abc import Collection
from typing import Any, cast

from fhir_mappings.dates import parse_datetime
from fhir_mappings.references import parse_reference


def provenance_targets(payload: dict[str, Any], stored_types: Collection[str]) -> list[tuple[int, str, dict[str, Any]]]:
    """(index, type, Reference) of each target naming a resource of one of `stored_types` (a relative literal,
    conditional or identifier reference): those are resolved and indexed; the others (a type not stored, another
    server's resource, a reference not kept) name nothing on this server and stay as sent."""
    found = []
    for i, target in enumerate(payload.get("target") or []):
        parsed = parse_reference(target)
        if parsed.kind in ("literal", "conditional", "identifier") and parsed.resource_type in stored_types \
                and not parsed.base:  # an absolute URL names a resource of another server
            found.append((i, cast(str, parsed.resource_type), target))
    return found


def provenance_row(payload: dict[str, Any], id: str, study_id: str, patient_id: str | None) -> dict[str, Any]:
    recorded, _ = parse_datetime(payload.get("recorded"))
    agents = payload.get("agent") or [{}]
    who = agents[0].get("who") or {}
    return dict(id=id, study_id=study_id, patient_id=patient_id, recorded=recorded,
                agent=who.get("reference") or who.get("display"))
