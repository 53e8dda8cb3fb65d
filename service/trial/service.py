"""Patients, studies and enrolments: the checks and typed rows behind Patient, ResearchStudy and
ResearchSubject writes, the enrolment look-ups that Observations and AdverseEvents need, and the three as stored
types (PATIENT, RESEARCH_STUDY, RESEARCH_SUBJECT: their search parameters and columns)."""

from datetime import date
from typing import cast

from fhir_mappings import fhir
from fhir_mappings.group import group_id_for_study
from fhir_mappings.patient import check_patient, patient_from_fhir
from fhir_mappings.references import parse_reference
from fhir_mappings.research_study import check_research_study, research_study_from_fhir
from fhir_mappings.research_subject import check_research_subject, research_subject_from_fhir
from fhir_mappings.terminology import Catalogue
from service import examples
from service.adverse_event.models import AdverseEventRecord
from service.catalogue.compiled import catalogue_for
from service.core.stored_type import StoredType, param
from service.errors import Conflict, OutOfScope, RuleViolation, raise_for_issues
from service.observation.models import MeasurementRecord
from service.store.models import table_of
from service.store.unit_of_work import UnitOfWork
from service.trial import repository
from service.trial.models import ArmRecord, Enrolment, PatientRecord, StudyRecord, SubjectRecord

P = table_of(PatientRecord)
ST = table_of(StudyRecord)
S = table_of(SubjectRecord)
A = table_of(ArmRecord)
M = table_of(MeasurementRecord)
AE = table_of(AdverseEventRecord)


def enrolments(uow: UnitOfWork, patient_id: str) -> list[Enrolment]:
    key = ("enrolments", patient_id)
    if key not in uow.cache:
        if uow.pending(S, ST):
            uow.flush()
        uow.cache[key] = [
            Enrolment(study_id=study_id, subject_id=sid, patient_id=patient_id, day0=day0,
                      catalogue=catalogue_for(uow.session, catalogue, version), arm=arm, status=status,
                      out_of_scope=policy)
            for sid, study_id, day0, arm, status, catalogue, policy, version in repository.find_enrolments(
                uow.session, patient_id)
        ]
    return uow.cache[key]


def prefetch_subjects(uow: UnitOfWork, payloads: list[dict]) -> None:
    """The enrolments of the patients that a Bundle's Observations or AdverseEvents (or a single write of one) name
    by a literal `subject` reference, in one query on PostgreSQL and two on SQLite, so each entry finds them in the
    unit of work's cache."""
    patient_ids: set[str] = set()
    for payload in payloads:
        ref = parse_reference(payload.get("subject"), "Patient")
        if ref.kind == "literal" and not ref.base and ref.resource_type == "Patient":
            patient_ids.add(cast(str, ref.id))  # a literal reference always has an id
    unknown = sorted(p for p in patient_ids if not uow.knows_exists("Patient", p))
    if unknown and uow.session.get_bind().dialect.name == "postgresql":
        # PostgreSQL: existence and enrolments of the patients not known yet in one statement (a round trip each
        # costs more than the rows: a single POST of an Observation makes exactly this look-up)
        if uow.pending(S, ST):
            uow.flush()
        for start in range(0, len(unknown), 500):
            chunk = unknown[start:start + 500]
            live: dict[str, list[Enrolment]] = {}
            for pid, sid, study_id, day0, arm, status, catalogue, policy, version in \
                    repository.find_live_patients_enrolments(uow.session, chunk):
                items = live.setdefault(pid, [])
                if sid is not None:
                    items.append(Enrolment(study_id=study_id, subject_id=sid, patient_id=pid, day0=day0,
                                           catalogue=catalogue_for(uow.session, catalogue, version), arm=arm,
                                           status=status, out_of_scope=policy))
            uow.learn_exists("Patient", {p: p in live for p in chunk})
            for pid, items in live.items():
                uow.cache.setdefault(("enrolments", pid), items)
    wanted = [p for p in uow.prefetch_exists("Patient", patient_ids) if ("enrolments", p) not in uow.cache]
    if not wanted:
        return
    if uow.pending(S, ST):
        uow.flush()
    found: dict[str, list[Enrolment]] = {p: [] for p in wanted}
    for start in range(0, len(wanted), 500):
        for pid, sid, study_id, day0, arm, status, catalogue, policy, version in repository.find_enrolments_of(
                uow.session, wanted[start:start + 500]):
            found[pid].append(Enrolment(study_id=study_id, subject_id=sid, patient_id=pid, day0=day0,
                                        catalogue=catalogue_for(uow.session, catalogue, version), arm=arm,
                                        status=status, out_of_scope=policy))
    for pid, items in found.items():
        uow.cache[("enrolments", pid)] = items


def study_policy(found: list[Enrolment]) -> str | None:
    """The out-of-scope policy the studies of `found` agree on (None: they set none, or disagree, and the
    server's setting decides)."""
    policies = {e.out_of_scope for e in found}
    return policies.pop() if len(policies) == 1 else None


def enrolment_in(uow: UnitOfWork, patient_id: str, study_id: str | None, what: str, where: str) -> Enrolment:
    """The patient's enrolment in `study_id` (or in its only study); 422 when there is none or it's ambiguous."""
    found = enrolments(uow, patient_id)
    if not found:  # the trial keeps nothing of a patient outside its studies: out of scope
        raise OutOfScope(f"Patient/{patient_id} is not enrolled in any study (no ResearchSubject): "
                         f"{what} can't be accepted", expression=where)
    if study_id is not None:
        match = [e for e in found if e.study_id == study_id]
        if not match:
            raise RuleViolation(f"Patient/{patient_id} is not enrolled in ResearchStudy/{study_id}", expression=where)
        return match[0]
    if len(found) > 1:
        raise RuleViolation(f"Patient/{patient_id} is enrolled in several studies: say which one this {what} "
                            "belongs to", expression=where)
    return found[0]


def index_patient(uow: UnitOfWork, payload: dict, id: str, replacing: bool) -> None:
    raise_for_issues(check_patient(payload))
    uow.add(P, patient_from_fhir(payload, id).model_dump())


def index_research_study(uow: UnitOfWork, payload: dict, id: str, replacing: bool) -> None:
    raise_for_issues(check_research_study(payload))
    if not payload.get("enrollment"):  # the study's cohort Group (service/group), unless the client names one
        payload["enrollment"] = [{"reference": f"Group/{group_id_for_study(id)}"}]
    plan_id = None
    for i, ref in enumerate(payload.get("protocol") or []):  # its catalogue: the (one) PlanDefinition it names
        found = uow.resolve(ref, "PlanDefinition", f"ResearchStudy.protocol[{i}]")
        if plan_id is not None and found != plan_id:
            raise RuleViolation("A study follows one protocol (PlanDefinition): its catalogue",
                                expression=f"ResearchStudy.protocol[{i}]")
        plan_id = found
    study, arms = research_study_from_fhir(payload, id, plan_id)
    old = repository.get_study(uow.session, id) if replacing else None
    if old is not None and old.catalogue != study.catalogue:
        from service.catalogue.service import enqueue_recompute  # its results go to the new catalogue's visits
        enqueue_recompute(uow, id)
    if replacing:
        missing = repository.find_arms_in_use(uow.session, id) - {a.name for a in arms}
        if missing:
            raise RuleViolation(f"Arms {sorted(missing)} are still assigned to research subjects",
                                expression="ResearchStudy.arm")
        repository.delete_arms(uow.session, id)
    uow.cache.pop(("study", id), None)
    uow.add(ST, study.model_dump())
    for arm in arms:
        uow.add(A, arm.model_dump())


def study_arms(uow: UnitOfWork, study_id: str) -> set[str]:
    key = ("study", study_id)
    if key not in uow.cache:
        uow.flush()
        uow.cache[key] = repository.find_arm_names(uow.session, study_id)
    return uow.cache[key]


def index_research_subject(uow: UnitOfWork, payload: dict, id: str, replacing: bool) -> None:
    study_id = uow.resolve(payload.get("study"), "ResearchStudy", "ResearchSubject.study")
    patient_id = uow.resolve(payload.get("individual"), "Patient", "ResearchSubject.individual")
    raise_for_issues(check_research_subject(payload, study_arms(uow, study_id)))
    record = research_subject_from_fhir(payload, id, study_id, patient_id)
    other = [e for e in enrolments(uow, patient_id) if e.study_id == study_id and e.subject_id != id]
    if other:
        raise Conflict(f"Patient/{patient_id} is already enrolled in ResearchStudy/{study_id} as "
                       f"ResearchSubject/{other[0].subject_id}", expression="ResearchSubject.individual")
    old = repository.get_subject(uow.session, id) if replacing else None
    if old is not None and (old.study_id, old.patient_id) != (study_id, patient_id) and (
            repository.is_referenced(uow.session, M, "subject_id", id)
            or repository.is_referenced(uow.session, AE, "subject_id", id)):
        raise RuleViolation("A research subject with results can't move to another study or patient",
                            expression="ResearchSubject.study")
    uow.add(S, record.model_dump())
    for pid in {patient_id, old.patient_id if old else patient_id}:
        uow.cache.pop(("enrolments", pid), None)
    if old is not None and old.day0 != record.day0:
        reassign_visits(uow, id)


def assign_visit(local_date: date | None, day0: date | None, catalogue: Catalogue) -> tuple[int | None, str]:
    """(study day, visit) of a result dated `local_date` (local calendar date) for a subject whose day 0 is `day0`:
    the visit whose window holds that day in the study's catalogue, else unscheduled."""
    if local_date is None or day0 is None:
        return None, catalogue.visit_for_day(None)
    day = (local_date - day0).days
    return day, catalogue.visit_for_day(day)


def reassign_visits(uow: UnitOfWork, subject_id: str) -> None:
    """Day 0 moved: every dated result of the subject goes to the visit its date now falls in. Each gets a new
    version (a follow-up write of the server, run again through the Observation's index), because its study day
    and visit are in its `meta.tag`: what a reader sees of it changes."""
    for mid, local_date in repository.find_measurement_dates(uow.session, subject_id):
        if local_date is not None:
            uow.follow_ups.append(("Observation", mid, _same))


def _same(payload: dict) -> dict:
    return payload


def guard_patient_delete(uow: UnitOfWork, id: str) -> None:
    if repository.is_referenced(uow.session, S, "patient_id", id):
        raise Conflict(f"Patient/{id} is enrolled in a study: delete its ResearchSubject first",
                       expression="Patient.id")


def guard_study_delete(uow: UnitOfWork, id: str) -> None:
    if repository.is_referenced(uow.session, S, "study_id", id):
        raise Conflict(f"ResearchStudy/{id} has research subjects: delete them first",
                       expression="ResearchStudy.id")
    repository.delete_arms(uow.session, id)


def guard_subject_delete(uow: UnitOfWork, id: str) -> None:
    old = repository.get_subject(uow.session, id)
    if old is not None:
        if repository.is_referenced(uow.session, M, "subject_id", id) or \
                repository.is_referenced(uow.session, AE, "subject_id", id):
            raise Conflict(f"ResearchSubject/{id} has observations or adverse events: delete them first",
                           expression="ResearchSubject.id")
        uow.cache.pop(("enrolments", old.patient_id), None)


# -- the stored types of the trial (service/core/registry.py lists them) -----------------------------------


PATIENT = StoredType(
    "Patient", fhir.Patient, P, index_patient, examples.PATIENT, guard_delete=guard_patient_delete,
    search=(
        param("birthdate", "date", P.c.birth_date, "Patient.birthDate", "Date of birth"),
        param("gender", "code", P.c.gender, "Patient.gender", "male | female | other | unknown",
              systems=("http://hl7.org/fhir/administrative-gender",)),
    ),
    study_via=("ResearchSubject", "individual"), patient_param="_id")

RESEARCH_STUDY = StoredType(
    "ResearchStudy", fhir.ResearchStudy, ST, index_research_study, examples.RESEARCH_STUDY,
    guard_delete=guard_study_delete,
    search=(
        param("status", "code", ST.c.status, "ResearchStudy.status", "Study status",
              systems=("http://hl7.org/fhir/research-study-status",)),
        param("title", "string", ST.c.title, "ResearchStudy.title", "Title (starts with; :exact, :contains)"),
    ),
    study_param="_id")

RESEARCH_SUBJECT = StoredType(
    "ResearchSubject", fhir.ResearchSubject, S, index_research_subject, examples.RESEARCH_SUBJECT,
    guard_delete=guard_subject_delete, rank=1,
    search=(
        param("study", "reference", S.c.study_id, "ResearchSubject.study", "The research study",
              targets=("ResearchStudy",)),
        param("individual", "reference", S.c.patient_id, "ResearchSubject.individual", "The enrolled patient",
              targets=("Patient",)),
        param("patient", "reference", S.c.patient_id, "ResearchSubject.individual", "The enrolled patient",
              targets=("Patient",)),
        param("status", "code", S.c.status, "ResearchSubject.status", "Enrolment status",
              systems=("http://hl7.org/fhir/research-subject-status",)),
        param("arm", "code", S.c.arm, "ResearchSubject.actualArm | ResearchSubject.assignedArm",
              "The study arm: actualArm, else assignedArm", custom=True),
    ),
    study_param="study", patient_param="individual")
