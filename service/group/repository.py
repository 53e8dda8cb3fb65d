"""SQL for study cohorts: the studies that have a Group, and the members of one."""

from sqlalchemy import func, select
from sqlmodel import Session

from service.search import compiler
from service.store.models import ResourceRecord, table_of
from service.trial.models import StudyRecord, SubjectRecord

R = table_of(ResourceRecord)
ST = table_of(StudyRecord)
S = table_of(SubjectRecord)


def find_studies(session: Session, ids: list[str] | None = None):
    """(id, title) of current studies, by id; only `ids` when given."""
    stmt = select(ST.c.id, ST.c.title).join(R, (R.c.resource_type == "ResearchStudy") & (R.c.id == ST.c.id)).where(
        R.c.deleted.is_(False))
    if ids is not None:
        stmt = stmt.where(ST.c.id.in_(ids))
    return session.execute(stmt.order_by(ST.c.id)).all()


def find_members(session: Session, study_id: str):
    """(patient id, status, day0, end date) of every research subject of the study (the search
    `ResearchSubject?study=ResearchStudy/<id>`)."""
    stmt = select(S.c.patient_id, S.c.status, S.c.day0, S.c.end_date).where(
        *compiler.in_study("ResearchSubject", study_id)).order_by(S.c.patient_id)
    return session.execute(stmt).all()


def last_change(session: Session, study_id: str):
    """When the study or any of its research subjects last changed."""
    subjects = select(func.max(R.c.last_updated)).join(S, S.c.id == R.c.id).where(
        R.c.resource_type == "ResearchSubject", *compiler.in_study("ResearchSubject", study_id)).scalar_subquery()
    study = select(R.c.last_updated).where(R.c.resource_type == "ResearchStudy", R.c.id == study_id).scalar_subquery()
    first, second = session.execute(select(study, subjects)).one()
    return max(t for t in (first, second) if t is not None) if first or second else None
