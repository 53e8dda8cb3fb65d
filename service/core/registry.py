"""What each stored resource type needs beyond the generic store: its model, typed tables and rules."""

from collections.abc import Callable
from dataclasses import dataclass

from fhir_mappings import fhir
from service.adverse_event.models import AdverseEventRecord
from service.adverse_event.service import index_adverse_event
from service.observation.models import MeasurementRecord
from service.observation.service import index_observation
from service.errors import NotFound
from service.store.unit_of_work import UnitOfWork
from service.trial import service as trial
from service.trial.models import PatientRecord, StudyRecord, SubjectRecord

#: (unit of work, payload, id, replacing: a live version exists) -> None; raises for rule violations
IndexFn = Callable[[UnitOfWork, dict, str, bool], None]


@dataclass(frozen=True)
class TypeHandler:
    resource_type: str
    model: type
    tables: tuple  # typed tables keyed by the resource id; emptied on update and delete
    index: IndexFn  # checks the resource (422) and adds its typed rows
    guard_delete: Callable[[UnitOfWork, str], None] | None = None
    rank: int = 0  # order inside a transaction: what others reference comes first
    prefetch: Callable[[UnitOfWork, list[dict]], None] | None = None  # batch look-ups for a Bundle's entries


HANDLERS: dict[str, TypeHandler] = {
    h.resource_type: h
    for h in (
        TypeHandler("Patient", fhir.Patient, (PatientRecord.__table__,), trial.index_patient,
                    trial.guard_patient_delete, rank=0),
        TypeHandler("ResearchStudy", fhir.ResearchStudy, (StudyRecord.__table__,), trial.index_research_study,
                    trial.guard_study_delete, rank=0),
        TypeHandler("ResearchSubject", fhir.ResearchSubject, (SubjectRecord.__table__,),
                    trial.index_research_subject, trial.guard_subject_delete, rank=1),
        TypeHandler("Observation", fhir.Observation, (MeasurementRecord.__table__,), index_observation, rank=2,
                    prefetch=trial.prefetch_subjects),
        TypeHandler("AdverseEvent", fhir.AdverseEvent, (AdverseEventRecord.__table__,), index_adverse_event, rank=2,
                    prefetch=trial.prefetch_subjects),
    )
}


def handler_for(resource_type: str) -> TypeHandler:
    handler = HANDLERS.get(resource_type)
    if handler is None:
        raise NotFound(f"Resource type '{resource_type}' is not supported by this server")
    return handler
