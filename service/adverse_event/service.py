"""Adverse events: checks, typed row, and the withdrawal an event can cause; and AdverseEvent as a stored type
(ADVERSE_EVENT: its search parameters, columns and sort)."""

from fhir_mappings import fhir
from fhir_mappings.adverse_event import adverse_event_from_fhir, check_adverse_event
from fhir_mappings.terminology import AE_SERIOUSNESS, AE_SEVERITY
from service import examples
from service.adverse_event.models import AdverseEventRecord
from service.core.stored_type import StoredType, param
from service.errors import raise_for_issues
from service.store.models import table_of
from service.store.unit_of_work import UnitOfWork
from service.trial.service import enrolment_in, prefetch_subjects

AE = table_of(AdverseEventRecord)


def index_adverse_event(uow: UnitOfWork, payload: dict, id: str, replacing: bool) -> None:
    raise_for_issues(check_adverse_event(payload))
    patient_id = uow.resolve(payload.get("subject"), "Patient", "AdverseEvent.subject")
    studies = payload.get("study") or []
    study_id = uow.resolve(studies[0], "ResearchStudy", "AdverseEvent.study[0]") if studies else None
    enrolment = enrolment_in(uow, patient_id, study_id, "AdverseEvent", "AdverseEvent.subject")
    record = adverse_event_from_fhir(payload, id, enrolment)
    uow.add(AE, record.model_dump())
    if record.caused_withdrawal and record.actuality == "actual" and enrolment.status != "withdrawn":
        uow.follow_ups.append(("ResearchSubject", enrolment.subject_id, _withdraw))


def _withdraw(payload: dict) -> dict:
    payload["status"] = "withdrawn"
    return payload


ADVERSE_EVENT = StoredType(
    "AdverseEvent", fhir.AdverseEvent, AE, index_adverse_event, examples.ADVERSE_EVENT, rank=2,
    prefetch=prefetch_subjects,
    search=(
        param("subject", "reference", AE.c.patient_id, "AdverseEvent.subject", "The patient who had the event",
              targets=("Patient",)),
        param("study", "reference", AE.c.study_id, "AdverseEvent.study", "The research study",
              targets=("ResearchStudy",)),
        param("date", "datetime", AE.c.onset, "AdverseEvent.date", "Onset of the event (UTC)"),
        param("event", "coding", (AE.c.event_system, AE.c.event_code), "AdverseEvent.event",
              "The event's code (MedDRA or SNOMED CT)"),
        param("seriousness", "code", AE.c.seriousness, "AdverseEvent.seriousness", "serious or non-serious",
              systems=(AE_SERIOUSNESS,)),
        param("severity", "code", AE.c.severity, "AdverseEvent.severity", "mild, moderate or severe",
              systems=(AE_SEVERITY,)),
    ),
    sorts={"date": AE.c.onset}, default_sort="date", study_param="study", patient_param="subject")
