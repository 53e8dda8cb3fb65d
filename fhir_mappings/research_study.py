"""ResearchStudy <-> StudyRecord + ArmRecord.

| domain field               | FHIR path                                   | code system / notes                    |
|----------------------------|---------------------------------------------|----------------------------------------|
| `study.id`                 | `ResearchStudy.id`                          |                                        |
| `study.title`              | `ResearchStudy.title`                       |                                        |
| `study.status`             | `ResearchStudy.status`                      | http://hl7.org/fhir/research-study-status (required) |
| `study.catalogue`          | `ResearchStudy.protocol[0]` (Reference(PlanDefinition)): its id | the study's catalogue; absent: `atopic-dermatitis` (the shipped one). The old extension `measure-catalogue` (valueCode `atopic-dermatitis`) is still read |
| `study.out_of_scope`       | `ResearchStudy.extension[out-of-scope-policy].valueCode` | `reject` or `skip`; absent: the server's setting |
| `study_arm.name`           | `ResearchStudy.arm[].name`                  | unique within the study                |
| `study_arm.description`    | `ResearchStudy.arm[].description`           | the dose, e.g. 2.5 × 10^7 cells        |
| identifiers                | `ResearchStudy.identifier[]` (e.g. NCT id)  | `resource_identifier`                  |
| cohort Group               | `ResearchStudy.enrollment[]`                | Group of enrolled patients             |
"""  # noqa: E501 (the mapping table is wider than a code line)

from collections.abc import Sequence
from typing import Any

from fhir_mappings import fhir
from fhir_mappings.outcome import Issue, issue
from fhir_mappings.terminology import DEFAULT_CATALOGUE, RESEARCH_STUDY_STATUS, catalogue_names
from service.trial.models import ArmRecord, StudyRecord

CATALOGUE_EXT = "https://trial-fhir.org/StructureDefinition/measure-catalogue"
#: the study's own out-of-scope policy (what a feed's entries the trial does not keep get): reject | skip
OUT_OF_SCOPE_EXT = "https://trial-fhir.org/StructureDefinition/out-of-scope-policy"
OUT_OF_SCOPE_POLICIES = ("reject", "skip")


def study_out_of_scope(payload: dict[str, Any]) -> tuple[int, Any] | None:
    """(index, value) of the study's out-of-scope policy extension; None when it sets none."""
    for i, ext in enumerate(payload.get("extension") or []):
        if ext.get("url") == OUT_OF_SCOPE_EXT:
            return i, ext.get("valueCode")
    return None


def study_catalogue(payload: dict[str, Any]) -> str:
    for ext in payload.get("extension") or []:
        if ext.get("url") == CATALOGUE_EXT:
            return ext.get("valueCode") or ext.get("valueString") or DEFAULT_CATALOGUE
    return DEFAULT_CATALOGUE


def check_research_study(payload: dict[str, Any]) -> list[Issue]:
    issues = []
    status = payload.get("status")
    if status not in RESEARCH_STUDY_STATUS:
        issues.append(issue("code-invalid", f"Unknown ResearchStudy status '{status}'", "ResearchStudy.status"))
    seen = set()
    for i, arm in enumerate(payload.get("arm") or []):
        name = arm.get("name")
        if name is not None and len(name) > 255:
            issues.append(issue("business-rule", "Arm names are at most 255 characters",
                                f"ResearchStudy.arm[{i}].name"))
        if name in seen:
            issues.append(issue("business-rule", f"Arm name '{name}' is used twice", f"ResearchStudy.arm[{i}].name"))
        seen.add(name)
    policy = study_out_of_scope(payload)
    if policy is not None and policy[1] not in OUT_OF_SCOPE_POLICIES:
        issues.append(issue("code-invalid", f"The out-of-scope policy is a valueCode, one of "
                            f"{', '.join(OUT_OF_SCOPE_POLICIES)}", f"ResearchStudy.extension[{policy[0]}]"))
    catalogue = study_catalogue(payload)
    if catalogue not in catalogue_names():  # the old way to name a catalogue: one shipped in the package
        issues.append(issue("code-invalid", f"Unknown measure catalogue '{catalogue}': one of {catalogue_names()}; "
                            "a study names its own by ResearchStudy.protocol (a PlanDefinition)",
                            "ResearchStudy.extension"))
    return issues


def research_study_from_fhir(payload: dict[str, Any], id: str, plan_id: str | None = None
                             ) -> tuple[StudyRecord, list[ArmRecord]]:
    """The study's rows; `plan_id` is the PlanDefinition its `protocol` names (resolved by the caller), else the
    old extension's catalogue name, else the default."""
    policy = study_out_of_scope(payload)
    study = StudyRecord(id=id, title=payload.get("title"), status=payload["status"],
                        catalogue=plan_id or study_catalogue(payload), out_of_scope=policy[1] if policy else None)
    arms = [ArmRecord(study_id=id, name=a["name"], description=a.get("description")) for a in payload.get("arm") or []]
    return study, arms


def research_study_to_fhir(study: StudyRecord, arms: list[ArmRecord], identifiers: Sequence[tuple[str, str]] = (),
                           group_id: str | None = None) -> fhir.ResearchStudy:
    return fhir.ResearchStudy(
        id=study.id,
        identifier=[fhir.Identifier(system=s, value=v) for s, v in identifiers] or None,
        title=study.title,
        status=study.status,
        protocol=None if study.catalogue == DEFAULT_CATALOGUE
        else [fhir.Reference(reference=f"PlanDefinition/{study.catalogue}")],
        extension=[fhir.Extension(url=OUT_OF_SCOPE_EXT, valueCode=study.out_of_scope)] if study.out_of_scope
        else None,
        arm=[fhir.ResearchStudyArm(name=a.name, description=a.description) for a in arms] or None,
        enrollment=[fhir.Reference(reference=f"Group/{group_id}")] if group_id else None,
    )
