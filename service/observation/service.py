"""Observations: which study and measure a result belongs to, its checks and its typed row."""

from fhir_mappings.observation import (check_observation, find_measure, measurement_row,
                                       study_extension_reference, unknown_code_issue)
from service.errors import RuleViolation, raise_for_issues
from service.observation.models import MeasurementRecord
from service.store.unit_of_work import UnitOfWork
from service.trial.service import enrolment_in, enrolments

M = MeasurementRecord.__table__


def index_observation(uow: UnitOfWork, payload: dict, id: str, replacing: bool) -> None:
    patient_id = uow.resolve(payload.get("subject"), "Patient", "Observation.subject")
    study_ref = study_extension_reference(payload)
    study_id = None
    if study_ref is not None:
        study_id = uow.resolve(study_ref, "ResearchStudy", "Observation.extension.valueReference")
    elif len(enrolments(uow, patient_id)) > 1:
        # several studies: the one whose catalogue knows this code, if exactly one does
        knowing = [e for e in enrolments(uow, patient_id) if find_measure(payload, e.catalogue)]
        if len(knowing) == 1:
            study_id = knowing[0].study_id
    enrolment = enrolment_in(uow, patient_id, study_id, "Observation", "Observation.subject")
    found = find_measure(payload, enrolment.catalogue)
    if found is None:
        raise RuleViolation("unknown code", issues=[unknown_code_issue(payload, enrolment.catalogue)])
    measure, coding = found
    raise_for_issues(check_observation(payload, measure))
    uow.add(M, measurement_row(payload, id, enrolment, measure, coding))
