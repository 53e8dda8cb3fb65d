"""SQL for Bulk Data export: the job table (claim, heartbeat, reaping) and the streaming queries that pick
each type's resources, filtered on the typed columns (never by parsing resource JSON).

`_typeFilter` parameters supported per type (values OR'd with commas, parameters AND'd; several
`_typeFilter`s for one type are OR'd):

| type            | parameters                                                                  |
|-----------------|-----------------------------------------------------------------------------|
| Observation     | code, category, status (tokens), date (prefixes), visit, arm, patient, subject |
| AdverseEvent    | event, seriousness, severity (tokens), date (prefixes, onset), patient, subject |
| ResearchSubject | status, arm, patient, individual                                            |
| Patient         | gender, birthdate (prefixes)                                                |
| ResearchStudy   | status                                                                      |
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, true, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import ColumnElement, Select
from sqlalchemy.sql.selectable import Join
from sqlmodel import Session

from fhir_mappings.references import split_token
from service.adverse_event.models import AdverseEventRecord
from service.export.models import ExportJobRecord
from service.observation.models import MeasurementRecord
from service.store.models import ResourceRecord
from service.trial.models import PatientRecord, StudyRecord, SubjectRecord

J = ExportJobRecord.__table__
R = ResourceRecord.__table__
M = MeasurementRecord.__table__
AE = AdverseEventRecord.__table__
S = SubjectRecord.__table__
P = PatientRecord.__table__
ST = StudyRecord.__table__

EXPORT_TYPES = ("Patient", "ResearchStudy", "ResearchSubject", "Observation", "AdverseEvent")
#: the typed table of each type, joined on its id when a Group export or a _typeFilter needs it
TYPED = {"Patient": P, "ResearchStudy": ST, "ResearchSubject": S, "Observation": M, "AdverseEvent": AE}


class FilterError(ValueError):
    """A `_typeFilter` this server can't apply; `name` is the parameter at fault."""

    def __init__(self, message: str, name: str) -> None:
        super().__init__(message)
        self.name = name


# -- _typeFilter → SQL conditions ---------------------------------------------------------------------

def _token(system_col, code_col) -> Callable[[str], ColumnElement]:
    def build(value: str) -> ColumnElement:
        system, code = split_token(value)
        if system_col is None:
            return code_col == (code or value)
        if system is not None and not code:
            return system_col == system
        return code_col == code if system is None else and_(system_col == system, code_col == code)
    return build


def _code(col) -> Callable[[str], ColumnElement]:
    def build(value: str) -> ColumnElement:
        return col == split_token(value)[1] if "|" in value else col == value
    return build


def _reference(col, resource_type: str) -> Callable[[str], ColumnElement]:
    def build(value: str) -> ColumnElement:
        ref = value.rsplit("/", 2)
        if len(ref) >= 2 and ref[-2] != resource_type:
            raise FilterError(f"'{value}' is not a {resource_type} reference", resource_type)
        return col == ref[-1]
    return build


PREFIXES = ("eq", "ne", "lt", "gt", "le", "ge", "sa", "eb")


def _bounds(text: str, as_date: bool) -> tuple[Any, Any]:
    """[low, high) of a FHIR date/dateTime of any precision."""
    try:
        if len(text) == 4:
            low = date(int(text), 1, 1)
            high = date(low.year + 1, 1, 1)
        elif len(text) == 7:
            low = date(int(text[:4]), int(text[5:7]), 1)
            high = date(low.year + (low.month == 12), low.month % 12 + 1, 1)
        elif len(text) == 10:
            low = date.fromisoformat(text)
            high = low + timedelta(days=1)
        else:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
            if as_date:
                low = moment.date()
                return low, low + timedelta(days=1)
            return moment, moment + timedelta(seconds=1)
    except ValueError:
        raise FilterError(f"'{text}' is not a FHIR date or dateTime", "date") from None
    if as_date:
        return low, high
    return (datetime(low.year, low.month, low.day, tzinfo=UTC), datetime(high.year, high.month, high.day, tzinfo=UTC))


def _date(col, as_date: bool = False) -> Callable[[str], ColumnElement]:
    def build(value: str) -> ColumnElement:
        prefix, text = (value[:2], value[2:]) if value[:2] in PREFIXES else ("eq", value)
        low, high = _bounds(text, as_date)
        return {"eq": and_(col >= low, col < high), "ne": or_(col < low, col >= high), "lt": col < low,
                "eb": col < low, "le": col < high, "gt": col >= high, "sa": col >= high, "ge": col >= low}[prefix]
    return build


def _in_subjects_with_arm(subject_col) -> Callable[[str], ColumnElement]:
    def build(value: str) -> ColumnElement:
        return subject_col.in_(select(S.c.id).where(S.c.arm == value))
    return build


FILTERS: dict[str, dict[str, Callable[[str], ColumnElement]]] = {
    "Observation": {"code": _token(M.c.code_system, M.c.code), "category": _code(M.c.category),
                    "status": _code(M.c.status), "date": _date(M.c.effective), "visit": _code(M.c.visit),
                    "arm": _in_subjects_with_arm(M.c.subject_id), "patient": _reference(M.c.patient_id, "Patient"),
                    "subject": _reference(M.c.patient_id, "Patient")},
    "AdverseEvent": {"event": _token(AE.c.event_system, AE.c.event_code), "seriousness": _code(AE.c.seriousness),
                     "severity": _code(AE.c.severity), "date": _date(AE.c.onset),
                     "patient": _reference(AE.c.patient_id, "Patient"), "subject": _reference(AE.c.patient_id, "Patient")},
    "ResearchSubject": {"status": _code(S.c.status), "arm": _code(S.c.arm),
                        "patient": _reference(S.c.patient_id, "Patient"),
                        "individual": _reference(S.c.patient_id, "Patient")},
    "Patient": {"gender": _code(P.c.gender), "birthdate": _date(P.c.birth_date, as_date=True)},
    "ResearchStudy": {"status": _code(ST.c.status)},
}


def filter_condition(resource_type: str, params: list[tuple[str, str]]) -> ColumnElement:
    """One `_typeFilter` query (its parameters AND'd, comma values OR'd) as a condition on the typed table."""
    known = FILTERS[resource_type]
    conditions = []
    for name, value in params:
        build = known.get(name)
        if build is None:
            raise FilterError(f"_typeFilter parameter '{name}' is not supported for {resource_type}; supported: "
                              f"{', '.join(sorted(known))}", name)
        if not value:
            raise FilterError(f"_typeFilter parameter '{name}' has no value", name)
        conditions.append(or_(*(build(v) for v in value.split(","))))
    return and_(*conditions) if conditions else true()


# -- what each type exports -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Selection:
    """What to export of one type: the study (Group export) or everything, changed after `since`, matching
    any of `filters` (each a list of (parameter, value))."""

    resource_type: str
    study_id: str | None = None
    since: datetime | None = None
    filters: tuple[tuple[tuple[str, str], ...], ...] = ()


class DrivingJoin(Join):
    """A join whose left side drives: rendered `CROSS JOIN … ON` on SQLite, which keeps SQLite's planner
    (without statistics) from scanning every resource of the type and probing the typed table for each;
    a plain JOIN elsewhere (PostgreSQL plans from its statistics)."""

    inherit_cache = True


@compiles(DrivingJoin, "sqlite")
def _driving_join_sqlite(element, compiler, **kw):
    kw = {**kw, "asfrom": True}
    return (f"{compiler.process(element.left, **kw)} CROSS JOIN {compiler.process(element.right, **kw)} "
            f"ON {compiler.process(element.onclause, **{k: v for k, v in kw.items() if k != 'asfrom'})}")


def _select(sel: Selection, columns) -> Select:
    """The query of one type's resources. With a study or a filter, the typed table (its index on study_id
    or on the filtered column) picks the rows and the resource is fetched by primary key; with `_since`
    alone, the (resource_type, last_updated) index does."""
    rtype = sel.resource_type
    typed = TYPED[rtype]
    on_resource = and_(R.c.resource_type == rtype, R.c.deleted.is_(False))
    conditions = []
    if sel.study_id is not None and rtype == "ResearchStudy":
        conditions.append(R.c.id == sel.study_id)
    elif sel.study_id is not None:
        conditions.append((S if rtype == "Patient" else typed).c.study_id == sel.study_id)
    if sel.filters:
        conditions.append(or_(*(filter_condition(rtype, list(f)) for f in sel.filters)))
    if sel.since is not None:
        conditions.append(R.c.last_updated > sel.since)
    uses_typed = sel.filters or (sel.study_id is not None and rtype != "ResearchStudy")
    if not uses_typed:
        source = R
        conditions.insert(0, on_resource)
    elif rtype == "Patient" and sel.study_id is not None:
        # one research_subject row per (study, patient): the join never duplicates a patient
        link = and_(on_resource, R.c.id == S.c.patient_id)
        source = S if not sel.filters else DrivingJoin(S, P, P.c.id == S.c.patient_id)
        source = DrivingJoin(source, R, link) if sel.since is None else R.join(source, link)
    else:
        link = and_(on_resource, R.c.id == typed.c.id)
        source = DrivingJoin(typed, R, link) if sel.since is None else R.join(typed, link)
    return select(*columns).select_from(source).where(*conditions)


def content_query(sel: Selection) -> Select:
    return _select(sel, [R.c.content])


def estimate_query(sel: Selection) -> Select:
    """Rows the selection will write, for progress reports: counted on the typed table (its study), before
    `_since` and filters, so an upper bound that costs an index scan, not a pass over the resources."""
    typed = S if sel.resource_type == "Patient" and sel.study_id is not None else TYPED[sel.resource_type]
    stmt = select(func.count()).select_from(typed)
    if sel.study_id is not None:
        stmt = stmt.where((typed.c.id if sel.resource_type == "ResearchStudy" else typed.c.study_id) == sel.study_id)
    return stmt


def stream_contents(conn: Connection, sel: Selection, batch: int):
    """Lists of stored JSON texts, `batch` at a time, from a server-side cursor (bounded memory)."""
    result = conn.execution_options(stream_results=True, yield_per=batch).execute(content_query(sel))
    yield from result.scalars().partitions(batch)


# -- jobs -------------------------------------------------------------------------------------------

def add_job(session: Session, row: dict) -> None:
    session.execute(J.insert().values(**row))


def get_job(session: Session | Connection, job_id: str):
    return session.execute(select(J).where(J.c.id == job_id)).first()


def delete_job(session: Session, job_id: str) -> int:
    return session.execute(delete(J).where(J.c.id == job_id)).rowcount


def claim_job(session: Session, worker: str, now: datetime) -> str | None:
    """Take the oldest queued job for `worker`; None when there is none. Exactly one claimer wins a job:
    PostgreSQL locks the row (`FOR UPDATE SKIP LOCKED`, so other claimers pass over it), SQLite makes the
    claim a conditional UPDATE (`… WHERE status = 'queued'`) whose row count says who won. Commits."""
    postgres = session.get_bind().dialect.name == "postgresql"
    stmt = select(J.c.id).where(J.c.status == "queued").order_by(J.c.created_at, J.c.id)
    if postgres:
        candidates = session.execute(stmt.limit(1).with_for_update(skip_locked=True)).scalars().all()
    else:
        candidates = session.execute(stmt.limit(5)).scalars().all()
    for job_id in candidates:
        done = session.execute(update(J).where(J.c.id == job_id, J.c.status == "queued").values(
            status="running", worker=worker, started_at=now, heartbeat=now, progress="started")).rowcount
        if done == 1:
            session.commit()
            return job_id
    session.commit()
    return None


def beat(session: Session, job_id: str, worker: str, now: datetime, progress: str) -> bool:
    """Record progress; False when the job is no longer this worker's to run (cancelled or reaped)."""
    done = session.execute(update(J).where(J.c.id == job_id, J.c.status == "running", J.c.worker == worker)
                           .values(heartbeat=now, progress=progress[:255])).rowcount
    session.commit()
    return done == 1


def finish_job(session: Session, job_id: str, worker: str, values: dict) -> bool:
    done = session.execute(update(J).where(J.c.id == job_id, J.c.status == "running", J.c.worker == worker)
                           .values(**values)).rowcount
    session.commit()
    return done == 1


def requeue_job(session: Session, job_id: str, worker: str) -> bool:
    done = session.execute(update(J).where(J.c.id == job_id, J.c.status == "running", J.c.worker == worker)
                           .values(status="queued", worker=None, started_at=None, heartbeat=None,
                                   progress="queued (its worker stopped; it will run again)")).rowcount
    session.commit()
    return done == 1


def fail_stale(session: Session, older_than: datetime, now: datetime) -> list[str]:
    """Mark running jobs whose heartbeat is older than `older_than` failed; their ids."""
    stale = list(session.execute(select(J.c.id).where(J.c.status == "running", J.c.heartbeat < older_than))
                 .scalars())
    for job_id in stale:
        session.execute(update(J).where(J.c.id == job_id, J.c.status == "running", J.c.heartbeat < older_than)
                        .values(status="failed", finished_at=now,
                                error=f"its worker stopped (restart or crash): no heartbeat since "
                                      f"{older_than.isoformat(timespec='seconds')}. Start the export again."))
    session.commit()
    return stale


def find_cancelled(session: Session) -> list[str]:
    return list(session.execute(select(J.c.id).where(J.c.status == "cancelled")).scalars())


def find_expired(session: Session, finished_before: datetime) -> list[str]:
    return list(session.execute(select(J.c.id).where(J.c.status.in_(("completed", "failed")),
                                                     J.c.finished_at < finished_before)).scalars())

