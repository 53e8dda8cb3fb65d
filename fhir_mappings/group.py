"""A study's cohort as a FHIR Group, derived from its research subjects (never stored, so never stale).

| domain field                      | FHIR path                              | notes                                      |
|-----------------------------------|----------------------------------------|--------------------------------------------|
| `study.id`                        | `Group.id`                             | the Group of ResearchStudy/X is Group/X     |
| `study.title`                     | `Group.name`                           | "Cohort of <title>"                        |
| (fixed)                           | `Group.type` = person, `actual` = true |                                            |
| `study.id`                        | `Group.characteristic[0].valueReference` | code `research-study`, exclude = false   |
| `research_subject.patient_id`     | `Group.member[].entity`                | one member per ResearchSubject of the study |
| `research_subject.day0/end_date`  | `Group.member[].period.start/end`      |                                            |
| `research_subject.status`         | `Group.member[].inactive`              | true for withdrawn, off-study, ineligible, not-registered |
| number of members                 | `Group.quantity`                       | active and inactive members                |

Withdrawn subjects stay members, flagged `inactive: true` (with `period.end` when the ResearchSubject has
one): their data up to withdrawal belongs to the trial (intention to treat), so a Group export includes them.
"""  # noqa: E501 (the mapping table is wider than a code line)

from collections.abc import Iterable
from datetime import date, datetime
from typing import Any

from fhir_mappings import fhir
from fhir_mappings.dates import fhir_instant

#: ResearchSubject statuses of a patient who is no longer (or never was) taking part
INACTIVE_STATUSES = frozenset({"withdrawn", "off-study", "ineligible", "not-registered"})
CHARACTERISTIC_SYSTEM = "https://trial-fhir.org/CodeSystem/group-characteristic"


def group_id_for_study(study_id: str) -> str:
    return study_id


def study_id_for_group(group_id: str) -> str:
    return group_id


def cohort_group(study_id: str, title: str | None, members: Iterable[tuple[str, str, date | None, date | None]],
                 last_updated: datetime | None = None) -> dict[str, Any]:
    """The Group of `study_id` as JSON (validated as an R4 Group); `members` are (patient id, subject status,
    day0, end date)."""
    entries: list[dict[str, Any]] = []
    for patient_id, status, start, end in members:
        member: dict[str, Any] = {"entity": {"reference": f"Patient/{patient_id}"}}
        if start or end:
            member["period"] = {k: v.isoformat() for k, v in (("start", start), ("end", end)) if v}
        member["inactive"] = status in INACTIVE_STATUSES
        entries.append(member)
    group: dict[str, Any] = {"resourceType": "Group", "id": group_id_for_study(study_id)}
    if last_updated:
        group["meta"] = {"lastUpdated": fhir_instant(last_updated)}
    group.update({
        "type": "person",
        "actual": True,
        "name": f"Cohort of {title}" if title else f"Cohort of ResearchStudy/{study_id}",
        "quantity": len(entries),
        "characteristic": [{
            "code": {"coding": [{"system": CHARACTERISTIC_SYSTEM, "code": "research-study"}],
                     "text": "Enrolled in the research study"},
            "valueReference": {"reference": f"ResearchStudy/{study_id}"}, "exclude": False}],
    })
    if entries:
        group["member"] = entries
    fhir.Group.model_validate(group)
    return group
