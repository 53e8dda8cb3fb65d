"""Observations: which study and measure a result belongs to, its checks and its typed row; and Observation as a
stored type (OBSERVATION: its search parameters, columns and sort)."""

from fhir_mappings import fhir
from fhir_mappings.observation import (
    check_observation,
    find_measure,
    measurement_row,
    study_extension_reference,
    unknown_code_issue,
    with_derived_tags,
)
from service import examples
from service.clinical.service import encounter_start
from service.core.stored_type import StoredType, param
from service.errors import OutOfScope, raise_for_issues
from service.observation.models import MeasurementRecord
from service.store.models import table_of
from service.store.unit_of_work import UnitOfWork
from service.trial.models import SubjectRecord
from service.trial.service import assign_visit, enrolment_in, enrolments, prefetch_subjects, study_policy

M = table_of(MeasurementRecord)


def index_observation(uow: UnitOfWork, payload: dict, id: str, replacing: bool) -> None:
    patient_id = uow.resolve(payload.get("subject"), "Patient", "Observation.subject")
    study_ref = study_extension_reference(payload)
    study_id = None
    if study_ref is not None:
        study_id = uow.resolve(study_ref, "ResearchStudy", "Observation.extension.valueReference")
    elif len(enrolments(uow, patient_id)) > 1:
        # several studies: the one whose catalogue knows this code, if exactly one does
        found_in = enrolments(uow, patient_id)
        knowing = [e for e in found_in if find_measure(payload, e.catalogue)]
        if len(knowing) == 1:
            study_id = knowing[0].study_id
        elif not knowing:
            raise OutOfScope("unknown code", issues=[unknown_code_issue(payload, found_in[0].catalogue)],
                             policy=study_policy(found_in))
    enrolment = enrolment_in(uow, patient_id, study_id, "Observation", "Observation.subject")
    found = find_measure(payload, enrolment.catalogue)
    if found is None:  # outside the study's catalogue: out of scope (the trial keeps what its protocol measures)
        raise OutOfScope("unknown code", issues=[unknown_code_issue(payload, enrolment.catalogue)],
                         policy=enrolment.out_of_scope)
    measure, coding = found
    raise_for_issues(check_observation(payload, measure))
    row = measurement_row(payload, id, enrolment, measure, coding)
    if row["local_date"] is None and payload.get("encounter"):
        # no date of its own: the encounter it happened in (stored, with a start) dates it for its visit
        row["local_date"] = encounter_start(uow, payload["encounter"])
    row["study_day"], row["visit"] = assign_visit(row["local_date"], enrolment.day0, enrolment.catalogue)
    payload["meta"] = with_derived_tags(payload.get("meta"), row["visit"], row["study_day"])
    uow.add(M, row)


S = table_of(SubjectRecord)
_STUDY_EXT = "extension('http://hl7.org/fhir/StructureDefinition/workflow-researchStudy').value"

OBSERVATION = StoredType(
    "Observation", fhir.Observation, M, index_observation, examples.OBSERVATION, rank=3, prefetch=prefetch_subjects,
    search=(
        param("subject", "reference", M.c.patient_id, "Observation.subject", "The patient the result is about",
              targets=("Patient",)),
        param("patient", "reference", M.c.patient_id, "Observation.subject.where(resolve() is Patient)",
              "The patient the result is about", targets=("Patient",)),
        param("code", "coding", (M.c.code_system, M.c.code), "Observation.code",
              "The measure's code (system|code, code or system|)"),
        param("category", "code", M.c.category, "Observation.category", "survey or laboratory",
              systems=("http://terminology.hl7.org/CodeSystem/observation-category",)),
        param("status", "code", M.c.status, "Observation.status", "Result status",
              systems=("http://hl7.org/fhir/observation-status",)),
        param("date", "datetime", M.c.effective, "Observation.effective", "When the result was obtained (UTC)"),
        param("value-quantity", "quantity", (M.c.value, M.c.measure), "Observation.value.as(Quantity)",
              "The value, compared in the measure's canonical UCUM unit (a given unit is converted)"),
        param("study", "reference", M.c.study_id, f"Observation.{_STUDY_EXT}",
              "The research study the result belongs to (workflow-researchStudy extension, else the subject's "
              "enrolment)", targets=("ResearchStudy",), custom=True),
        param("arm", "arm", (M.c.subject_id, S.c.arm), "Observation.subject",
              "The study arm of the subject (ResearchSubject actualArm, else assignedArm) at the time of the search",
              custom=True),
        param("visit", "code", M.c.visit, "Observation.effective",
              "The visit the result falls in (baseline, week-4, week-12, unscheduled), from its date and the "
              "subject's day 0", custom=True),
    ),
    sorts={"date": M.c.effective}, default_sort="date", study_param="study", patient_param="subject")
