"""SQL behind the SDTM datasets: the study, and one stream per kind of row (enrolments with their Patients,
counted results, actual adverse events, completed administrations and procedures), each joined to the stored
resource version it came from and ordered by the ResearchSubject id, so the service merges them subject by subject
without holding more than one subject in memory. Byte order of the ids on both databases (`COLLATE "C"` on
PostgreSQL, SQLite's binary collation), which is also Python's string order."""

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Float, String, and_, cast, func, literal, null, select, union_all
from sqlalchemy.engine import Connection

from service.adverse_event.models import AdverseEventRecord
from service.clinical.models import AdministrationRecord, ProcedureRecord
from service.observation.models import MeasurementRecord
from service.store.models import ResourceRecord, table_of
from service.trial.models import StudyRecord, SubjectRecord

R = table_of(ResourceRecord)
S = table_of(SubjectRecord)
M = table_of(MeasurementRecord)
AE = table_of(AdverseEventRecord)
MA = table_of(AdministrationRecord)
PR = table_of(ProcedureRecord)
ST = table_of(StudyRecord)


def _bytewise(conn: Connection, column: Any) -> Any:
    return column.collate("C") if conn.dialect.name == "postgresql" else column


def _stream(conn: Connection, query: Any, batch: int) -> Iterator[Any]:
    yield from conn.execution_options(stream_results=True, yield_per=batch).execute(query)


def get_study(conn: Connection, study_id: str) -> Any:
    """(catalogue, version_id, last_updated, content) of the study's ResearchStudy."""
    query = (select(ST.c.catalogue, R.c.version_id, R.c.last_updated, R.c.content)
             .select_from(ST.join(R, and_(R.c.resource_type == "ResearchStudy", R.c.id == ST.c.id)))
             .where(ST.c.id == study_id, R.c.deleted.is_(False)))
    return conn.execute(query).first()


def stream_subjects(conn: Connection, study_id: str, batch: int) -> Iterator[Any]:
    """The study's enrolments with their ResearchSubject and Patient versions, by ResearchSubject id."""
    rs, pt = R.alias("rs"), R.alias("pt")
    query = (select(S.c.id, S.c.patient_id, S.c.status, S.c.assigned_arm, S.c.actual_arm, rs.c.version_id,
                    rs.c.last_updated, rs.c.content, pt.c.version_id, pt.c.last_updated, pt.c.content)
             .select_from(S.join(rs, and_(rs.c.resource_type == "ResearchSubject", rs.c.id == S.c.id))
                          .outerjoin(pt, and_(pt.c.resource_type == "Patient", pt.c.id == S.c.patient_id,
                                              pt.c.deleted.is_(False))))
             .where(S.c.study_id == study_id, rs.c.deleted.is_(False))
             .order_by(_bytewise(conn, S.c.id)))
    return _stream(conn, query, batch)


def stream_results(conn: Connection, study_id: str, counted: Sequence[str], batch: int) -> Iterator[Any]:
    """The study's counted results (typed row and Observation version), by subject then id."""
    query = (select(M.c.subject_id, M.c.id, M.c.measure, M.c.value, M.c.unit, M.c.original_value,
                    M.c.original_unit, M.c.study_day, M.c.visit, M.c.effective, R.c.version_id, R.c.content)
             .select_from(M.join(R, and_(R.c.resource_type == "Observation", R.c.id == M.c.id)))
             .where(M.c.study_id == study_id, M.c.status.in_(list(counted)))
             .order_by(_bytewise(conn, M.c.subject_id), _bytewise(conn, M.c.id)))
    return _stream(conn, query, batch)


def stream_events(conn: Connection, study_id: str, batch: int) -> Iterator[Any]:
    """The study's actual adverse events (typed row and AdverseEvent version), by subject then id."""
    query = (select(AE.c.subject_id, AE.c.id, AE.c.related, AE.c.caused_withdrawal, R.c.version_id, R.c.content)
             .select_from(AE.join(R, and_(R.c.resource_type == "AdverseEvent", R.c.id == AE.c.id)))
             .where(AE.c.study_id == study_id, AE.c.actuality == "actual")
             .order_by(_bytewise(conn, AE.c.subject_id), _bytewise(conn, AE.c.id)))
    return _stream(conn, query, batch)


def stream_dosings(conn: Connection, study_id: str, batch: int) -> Iterator[Any]:
    """The study's completed MedicationAdministrations and Procedures, by subject, type then id."""
    given = (select(MA.c.subject_id.label("subject_id"), cast(literal("MedicationAdministration"), String)
                    .label("rtype"), MA.c.id.label("id"), MA.c.dose_value.label("dose_value"),
                    MA.c.dose_unit.label("dose_unit"), MA.c.route_code.label("route_code"))
             .where(MA.c.study_id == study_id, MA.c.status == "completed"))
    done = (select(PR.c.subject_id, cast(literal("Procedure"), String), PR.c.id,
                   cast(null(), Float), cast(null(), String), cast(null(), String))
            .where(PR.c.study_id == study_id, PR.c.status == "completed"))
    both = union_all(given, done).subquery("dosing")
    query = (select(both.c.subject_id, both.c.rtype, both.c.id, both.c.dose_value, both.c.dose_unit,
                    both.c.route_code, R.c.version_id, R.c.content)
             .select_from(both.join(R, and_(R.c.resource_type == both.c.rtype, R.c.id == both.c.id)))
             .order_by(_bytewise(conn, both.c.subject_id), both.c.rtype, _bytewise(conn, both.c.id)))
    return _stream(conn, query, batch)


def last_modified(conn: Connection, study_id: str, counted: Sequence[str]) -> datetime | None:
    """The latest `meta.lastUpdated` of what the study's datasets come from: the Dataset-JSON creation time."""
    def latest(table: Any, rtype: str, *where: ColumnElement[bool]) -> Any:
        return (select(func.max(R.c.last_updated).label("at"))
                .select_from(table.join(R, and_(R.c.resource_type == rtype, R.c.id == table.c.id))).where(*where))
    parts = [
        select(func.max(R.c.last_updated).label("at")).where(R.c.resource_type == "ResearchStudy",
                                                              R.c.id == study_id),
        latest(S, "ResearchSubject", S.c.study_id == study_id),
        select(func.max(R.c.last_updated).label("at")).select_from(
            S.join(R, and_(R.c.resource_type == "Patient", R.c.id == S.c.patient_id))).where(S.c.study_id == study_id),
        latest(M, "Observation", M.c.study_id == study_id, M.c.status.in_(list(counted))),
        latest(AE, "AdverseEvent", AE.c.study_id == study_id),
        latest(MA, "MedicationAdministration", MA.c.study_id == study_id),
        latest(PR, "Procedure", PR.c.study_id == study_id),
    ]
    every = union_all(*parts).subquery("latest")
    value = conn.execute(select(func.max(every.c.at))).scalar()
    if isinstance(value, str):  # SQLite hands an aggregate's datetime back as text
        value = datetime.fromisoformat(value)
    return value
