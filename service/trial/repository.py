"""SQL for patients, studies, arms and enrolments."""

import orjson
from sqlalchemy import Table, exists, select
from sqlmodel import Session

from service.adverse_event.models import AdverseEventRecord
from service.observation.models import MeasurementRecord
from service.store.driver import driver_rows
from service.store.models import ResourceRecord, table_of
from service.trial.models import ArmRecord, StudyRecord, SubjectRecord

S = table_of(SubjectRecord)
ST = table_of(StudyRecord)
A = table_of(ArmRecord)
M = table_of(MeasurementRecord)
AE = table_of(AdverseEventRecord)
R = table_of(ResourceRecord)
#: the current version of the study's plan (its catalogue), beside each enrolment: NULL when it is not stored
_PLAN = R.alias("plan")
_PLAN_JOIN = (_PLAN.c.resource_type == "PlanDefinition") & (_PLAN.c.id == ST.c.catalogue) & _PLAN.c.deleted.is_(False)


def find_enrolments(session: Session, patient_id: str):
    """(subject id, study id, day0, arm, status, catalogue, out-of-scope policy, catalogue version) of each of the
    patient's enrolments."""
    stmt = (select(S.c.id, S.c.study_id, S.c.day0, S.c.arm, S.c.status, ST.c.catalogue, ST.c.out_of_scope,
                   _PLAN.c.version_id)
            .join(ST, ST.c.id == S.c.study_id).outerjoin(_PLAN, _PLAN_JOIN)
            .where(S.c.patient_id == patient_id).order_by(S.c.study_id))
    return session.execute(stmt).all()


def find_enrolments_of(session: Session, patient_ids: list[str]):
    """(patient id, subject id, study id, day0, arm, status, catalogue, out-of-scope policy) of the enrolments of
    many patients."""
    if session.get_bind().dialect.name == "postgresql":  # one JSON parameter: see resource.repository
        return driver_rows(session, _ENROLMENTS_POSTGRES, {"patients": orjson.dumps(list(patient_ids)).decode()})
    stmt = (select(S.c.patient_id, S.c.id, S.c.study_id, S.c.day0, S.c.arm, S.c.status, ST.c.catalogue,
                   ST.c.out_of_scope, _PLAN.c.version_id)
            .join(ST, ST.c.id == S.c.study_id).outerjoin(_PLAN, _PLAN_JOIN)
            .where(S.c.patient_id.in_(patient_ids)).order_by(S.c.study_id))
    return session.execute(stmt).all()


_ENROLMENTS_POSTGRES = """
    SELECT s.patient_id, s.id, s.study_id, s.day0, s.arm, s.status, st.catalogue, st.out_of_scope, pl.version_id
    FROM research_subject s JOIN study st ON st.id = s.study_id
    LEFT JOIN resource pl ON pl.resource_type = 'PlanDefinition' AND pl.id = st.catalogue AND NOT pl.deleted
    WHERE s.patient_id = ANY(ARRAY(SELECT json_array_elements_text(%(patients)s::json)))
    ORDER BY s.study_id"""


def find_live_patients_enrolments(session: Session, patient_ids: list[str]):
    """PostgreSQL: (patient id, subject id, study id, day0, arm, status, catalogue, out-of-scope policy) of the
    enrolments of those of `patient_ids` that are live Patients, in one statement (one round trip instead of an
    existence look-up and then this one); a live Patient with no enrolment gives one row of NULLs after its id."""
    return driver_rows(session, _LIVE_ENROLMENTS_POSTGRES, {"patients": orjson.dumps(list(patient_ids)).decode()})


_LIVE_ENROLMENTS_POSTGRES = """
    SELECT p.id, s.id, s.study_id, s.day0, s.arm, s.status, st.catalogue, st.out_of_scope, pl.version_id
    FROM resource p
    LEFT JOIN (research_subject s JOIN study st ON st.id = s.study_id) ON s.patient_id = p.id
    LEFT JOIN resource pl ON pl.resource_type = 'PlanDefinition' AND pl.id = st.catalogue AND NOT pl.deleted
    WHERE p.resource_type = 'Patient' AND NOT p.deleted
      AND p.id = ANY(ARRAY(SELECT json_array_elements_text(%(patients)s::json)))
    ORDER BY s.study_id"""


def get_study(session: Session, study_id: str):
    return session.execute(select(ST.c.id, ST.c.catalogue, ST.c.status).where(ST.c.id == study_id)).first()


def find_arm_names(session: Session, study_id: str) -> set[str]:
    return set(session.execute(select(A.c.name).where(A.c.study_id == study_id)).scalars())


def get_subject(session: Session, subject_id: str):
    return session.execute(select(S).where(S.c.id == subject_id)).first()


def find_arms_in_use(session: Session, study_id: str) -> set[str]:
    stmt = select(S.c.assigned_arm, S.c.actual_arm).where(S.c.study_id == study_id)
    return {arm for row in session.execute(stmt) for arm in row if arm}


def find_measurement_dates(session: Session, subject_id: str):
    return session.execute(select(M.c.id, M.c.local_date).where(M.c.subject_id == subject_id)).all()


def is_referenced(session: Session, table: Table, column: str, value: str) -> bool:
    return bool(session.execute(select(exists().where(table.c[column] == value))).scalar())


def delete_arms(session: Session, study_id: str) -> None:
    from sqlalchemy import delete
    session.execute(delete(A).where(A.c.study_id == study_id))
