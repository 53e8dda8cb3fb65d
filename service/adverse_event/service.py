"""Adverse events: checks, typed row, and the withdrawal an event can cause."""

from fhir_mappings.adverse_event import adverse_event_from_fhir, check_adverse_event
from service.adverse_event.models import AdverseEventRecord
from service.errors import raise_for_issues
from service.store.unit_of_work import UnitOfWork
from service.trial.service import enrolment_in

AE = AdverseEventRecord.__table__


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
