"""AdverseEvent <-> AdverseEventRecord (HL7 AE Clinical Research R4 backport profile where it fits).

| domain field (`adverse_event`) | FHIR path                                         | code system / notes                  |
|--------------------------------|---------------------------------------------------|--------------------------------------|
| `id`                           | `AdverseEvent.id`                                 |                                      |
| `patient_id`                   | `AdverseEvent.subject`                            | Reference(Patient), must be enrolled |
| `study_id`, `subject_id`       | `AdverseEvent.study[0]`, else the patient's one enrolment | Reference(ResearchStudy)     |
| `actuality`                    | `AdverseEvent.actuality`                          | adverse-event-actuality (required): actual, potential |
| `event_system`, `event_code`, `event_text` | `AdverseEvent.event.coding[0]`, `.text` | MedDRA https://www.meddra.org preferred, SNOMED CT accepted |
| `onset`                        | `AdverseEvent.date`, else `.detected`             | UTC                                  |
| `seriousness`                  | `AdverseEvent.seriousness.coding`                 | adverse-event-seriousness: serious, non-serious |
| `severity`                     | `AdverseEvent.severity.coding`                    | adverse-event-severity: mild, moderate, severe |
| `outcome`                      | `AdverseEvent.outcome.coding`                     | adverse-event-outcome                |
| `related`                      | `AdverseEvent.suspectEntity[].causality[].assessment` | NCIt C53258/C53259/C53260, WHO-UMC Certain/Probably-Likely/Possible/Conditional/Unassessable (or `related`) = related |
| `caused_withdrawal`            | `AdverseEvent.extension[caused-subject-to-discontinue-study].valueBoolean` | AE research backport IG |
"""  # noqa: E501 (the mapping table is wider than a code line)

from collections.abc import Callable
from typing import Any

from fhir_mappings import fhir
from fhir_mappings.dates import parse_datetime
from fhir_mappings.outcome import Issue, issue
from fhir_mappings.terminology import (
    AE_ACTUALITY,
    AE_CAUSALITY_ASSESS,
    AE_OUTCOME,
    AE_OUTCOME_CODES,
    AE_SERIOUSNESS,
    AE_SERIOUSNESS_CODES,
    AE_SEVERITY,
    AE_SEVERITY_CODES,
    DISCONTINUED_EXT,
    MEDDRA,
    NCIT,
    RELATEDNESS,
    WHO_UMC_RELATEDNESS,
)
from service.adverse_event.models import AdverseEventRecord
from service.trial.models import Enrolment


def _coded(concept: dict[str, Any] | None, system: str) -> tuple[int, str] | None:
    """(index, code) of the first coding of `concept` in `system`."""
    for i, coding in enumerate((concept or {}).get("coding") or []):
        if coding.get("system") == system and coding.get("code") is not None:
            return i, coding["code"]
    return None


def seriousness_of(payload: dict[str, Any]) -> str | None:
    found = _coded(payload.get("seriousness"), AE_SERIOUSNESS)
    return AE_SERIOUSNESS_CODES.get(found[1].lower()) if found else None


def is_related(payload: dict[str, Any]) -> bool:
    for entity in payload.get("suspectEntity") or []:
        for causality in entity.get("causality") or []:
            assessment = causality.get("assessment") or {}
            if (assessment.get("text") or "").strip().lower() == "related":
                return True
            for coding in assessment.get("coding") or []:
                code = (coding.get("code") or "").strip()
                scale = WHO_UMC_RELATEDNESS if coding.get("system") == AE_CAUSALITY_ASSESS else RELATEDNESS
                if scale.get(code) or code.lower() == "related":
                    return True
    return False


def caused_withdrawal(payload: dict[str, Any]) -> bool:
    return any(ext.get("url") == DISCONTINUED_EXT and ext.get("valueBoolean") is True
               for ext in payload.get("extension") or [])


def check_adverse_event(payload: dict[str, Any]) -> list[Issue]:
    issues = []
    if payload.get("actuality") not in AE_ACTUALITY:
        issues.append(issue("code-invalid", f"Unknown actuality '{payload.get('actuality')}': actual or potential",
                            "AdverseEvent.actuality"))
    event = payload.get("event")
    if not event or not (event.get("text") or event.get("coding")):
        issues.append(issue("required", "An adverse event needs `event` (MedDRA or SNOMED CT coding, and text)",
                            "AdverseEvent.event"))
    if not payload.get("date") and not payload.get("detected"):
        issues.append(issue("required", "An adverse event needs its onset in `date` (or `detected`)",
                            "AdverseEvent.date"))
    checks: tuple[tuple[str, str, Callable[[str], bool]], ...] = (
        ("seriousness", AE_SERIOUSNESS, lambda c: c.lower() in AE_SERIOUSNESS_CODES),
        ("severity", AE_SEVERITY, lambda c: c in AE_SEVERITY_CODES),
        ("outcome", AE_OUTCOME, lambda c: c in AE_OUTCOME_CODES))
    for element, system, valid in checks:
        concept = payload.get(element)
        if concept is None:
            continue
        found = _coded(concept, system)
        if found is None:
            issues.append(issue("code-invalid", f"{element} must be coded in {system}", f"AdverseEvent.{element}"))
        elif not valid(found[1]):
            issues.append(issue("code-invalid", f"Unknown {element} code '{found[1]}' in {system}",
                                f"AdverseEvent.{element}.coding[{found[0]}].code"))
    for e, entity in enumerate(payload.get("suspectEntity") or []):
        for c, causality in enumerate(entity.get("causality") or []):
            for system, scale in ((NCIT, RELATEDNESS), (AE_CAUSALITY_ASSESS, WHO_UMC_RELATEDNESS)):
                found = _coded(causality.get("assessment"), system)
                if found and found[1] not in scale:
                    issues.append(issue(
                        "code-invalid",
                        f"Unknown relatedness code '{found[1]}' in {system}: use one of {sorted(scale)}",
                        f"AdverseEvent.suspectEntity[{e}].causality[{c}].assessment.coding[{found[0]}]"))
    return issues


def adverse_event_from_fhir(payload: dict[str, Any], id: str, enrolment: Enrolment) -> AdverseEventRecord:
    event = payload.get("event") or {}
    coding: dict[str, Any] = next(iter(event.get("coding") or []), {})
    onset, _ = parse_datetime(payload.get("date") or payload.get("detected"))
    severity = _coded(payload.get("severity"), AE_SEVERITY)
    outcome = _coded(payload.get("outcome"), AE_OUTCOME)
    return AdverseEventRecord(
        id=id, patient_id=enrolment.patient_id, study_id=enrolment.study_id, subject_id=enrolment.subject_id,
        actuality=payload["actuality"], event_system=coding.get("system"), event_code=coding.get("code"),
        event_text=event.get("text") or coding.get("display"), onset=onset, seriousness=seriousness_of(payload),
        severity=severity[1] if severity else None, outcome=outcome[1] if outcome else None,
        related=is_related(payload), caused_withdrawal=caused_withdrawal(payload),
    )


def adverse_event_to_fhir(record: AdverseEventRecord, date: str | None = None,
                          relatedness: str | None = None) -> fhir.AdverseEvent:
    """An AdverseEvent for a record; `relatedness` is the NCIt code of the causality assessment."""
    def coded(system: str, code: str | None) -> fhir.CodeableConcept | None:
        return fhir.CodeableConcept(coding=[fhir.Coding(system=system, code=code)]) if code else None

    return fhir.AdverseEvent(
        id=record.id,
        actuality=record.actuality,
        event=fhir.CodeableConcept(
            coding=[fhir.Coding(system=record.event_system or MEDDRA, code=record.event_code,
                                display=record.event_text)] if record.event_code else None,
            text=record.event_text),
        subject=fhir.Reference(reference=f"Patient/{record.patient_id}"),
        study=[fhir.Reference(reference=f"ResearchStudy/{record.study_id}")],
        date=date or (record.onset.isoformat() if record.onset else None),
        seriousness=coded(AE_SERIOUSNESS, record.seriousness),
        severity=coded(AE_SEVERITY, record.severity),
        outcome=coded(AE_OUTCOME, record.outcome),
        suspectEntity=[fhir.AdverseEventSuspectEntity(
            instance=fhir.Reference(display="hUCB-MSC (study product)"),
            causality=[fhir.AdverseEventSuspectEntityCausality(assessment=coded(NCIT, relatedness))])]
        if relatedness else None,
        extension=[fhir.Extension(url=DISCONTINUED_EXT, valueBoolean=True)] if record.caused_withdrawal else None,
    )
