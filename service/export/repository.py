"""SQL for Bulk Data export: the export's row (what the client asked, its status and files; its scheduling is the
generic job of the same id, service/jobs) and the streaming queries that pick
each type's resources, filtered on the typed columns (never by parsing resource JSON). A `_typeFilter` is a search
of its type: its criteria are compiled by the search compiler (service/search/compiler.py), like a Group's study.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Column, and_, delete, false, func, or_, select, update
from sqlalchemy.engine import Connection, CursorResult, Result
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import ColumnElement, Select
from sqlalchemy.sql.selectable import FromClause, Join
from sqlmodel import Session

from fhir_mappings.search import Criterion
from service.core.registry import TYPES
from service.export.models import ExportJobRecord
from service.search import compiler
from service.store.models import ResourceRecord, table_of

J = table_of(ExportJobRecord)
R = table_of(ResourceRecord)


# -- what each type exports -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Selection:
    """What to export of one type: the study (Group export) or everything, changed after `since`, matching
    any of `filters` (each the parsed criteria of one `_typeFilter` search, AND'd), and only in `studies` when the
    client is limited to some."""

    resource_type: str
    study_id: str | None = None
    since: datetime | None = None
    filters: tuple[tuple[Criterion, ...], ...] = ()
    #: the studies the client may see of this type (None: any); a resource in none of them is not exported
    studies: tuple[str, ...] | None = None
    #: only the resources about these Patients (the `patient` kick-off parameter; None: any). For a type about
    #: patients (its `patient_param`); other types are not narrowed
    patients: tuple[str, ...] | None = None
    #: Patient-level export: only resources about some Patient (the Patient compartment)
    compartment: bool = False


class DrivingJoin(Join):
    """A join whose left side drives: rendered `CROSS JOIN … ON` on SQLite, which keeps SQLite's planner
    (without statistics) from scanning every resource of the type and probing the typed table for each;
    a plain JOIN elsewhere (PostgreSQL plans from its statistics)."""

    inherit_cache = True


@compiles(DrivingJoin, "sqlite")
def _driving_join_sqlite(element, sql, **kw):
    kw = {**kw, "asfrom": True}
    return (f"{sql.process(element.left, **kw)} CROSS JOIN {sql.process(element.right, **kw)} "
            f"ON {sql.process(element.onclause, **{k: v for k, v in kw.items() if k != 'asfrom'})}")


def _select(sel: Selection, columns) -> Select:
    """The query of one type's resources. With a study or a condition on the typed table (a filter, the patients),
    the typed table (its index on the study or on the filtered column) picks the rows and the resource is fetched
    by primary key; with `_since` alone, the (resource_type, last_updated) index does. A type that belongs to a
    study through another type's rows (a Patient through its ResearchSubjects) is picked by that type's typed
    table."""
    rtype = sel.resource_type
    stored = TYPES[rtype]
    typed = stored.table
    on_resource = and_(R.c.resource_type == rtype, R.c.deleted.is_(False))
    conditions = []
    on_typed = []  # conditions on the typed table: it must be joined
    via = None
    if sel.study_id is not None and stored.study_via is not None:
        via_type, via_param = stored.study_via
        via = TYPES[via_type].table, TYPES[via_type].params[via_param].column
        conditions += compiler.in_study(via_type, sel.study_id)
    elif sel.study_id is not None and stored.study_param is not None:
        conditions += compiler.in_study(rtype, sel.study_id)
    elif sel.study_id is not None:
        conditions.append(false())  # a type that belongs to no study: none of it in a Group export
    if sel.filters:
        on_typed.append(or_(*(and_(*compiler.conditions(rtype, f)) for f in sel.filters)))
    patient = patient_column(rtype)
    if patient is None:
        if sel.compartment:
            conditions.append(false())  # a type about no patient is in no Patient compartment
    elif patient is typed.c.id:  # the Patient itself: its id is the resource's
        if sel.patients is not None:
            conditions.append(R.c.id.in_(sel.patients))
    elif sel.patients is not None:
        on_typed.append(patient.in_(sel.patients))
    elif sel.compartment and patient.nullable:  # a NOT NULL column (every type today): all of the type, unjoined
        on_typed.append(patient.is_not(None))
    if sel.since is not None:
        conditions.append(R.c.last_updated > sel.since)
    if sel.studies is not None:
        conditions.append(allowed(rtype, sel.studies))
    conditions += on_typed
    source: FromClause
    if not on_typed and sel.study_id is None:
        source = R
        conditions.insert(0, on_resource)
    elif via is not None:
        # one research_subject row per (study, patient): the join never duplicates a patient
        link_table, link_column = via
        link = and_(on_resource, R.c.id == link_column)
        source = link_table if not on_typed else DrivingJoin(link_table, typed, typed.c.id == link_column)
        source = DrivingJoin(source, R, link) if sel.since is None else R.join(source, link)
    else:
        link = and_(on_resource, R.c.id == typed.c.id)
        source = DrivingJoin(typed, R, link) if sel.since is None else R.join(typed, link)
    return select(*columns).select_from(source).where(*conditions)


def patient_column(resource_type: str) -> Column[Any] | None:
    """The typed column naming the Patient a resource of `resource_type` is about (its `patient_param`: the id
    itself for a Patient); None for a type about no patient (outside the Patient compartment)."""
    stored = TYPES[resource_type]
    return None if stored.patient_param is None else stored.params[stored.patient_param].column


def allowed(resource_type: str, studies: tuple[str, ...]) -> ColumnElement[bool]:
    """The resources of `resource_type` in any of `studies` (the studies a client may see), by the same search
    conditions as a Group export (compiler.in_study): `resource.id IN (…)` of the typed table, or of the type it
    belongs to a study through (a Patient: the individuals of the studies' ResearchSubjects). A type that
    belongs to no study, or no study at all: nothing."""
    stored = TYPES[resource_type]
    if stored.study_via is not None:
        via_type, via_param = stored.study_via
        picked = TYPES[via_type].params[via_param].column
        member = [and_(*compiler.in_study(via_type, s)) for s in studies]
    elif stored.study_param is not None:
        picked = stored.table.c.id
        member = [and_(*compiler.in_study(resource_type, s)) for s in studies]
    else:
        return false()
    if not member:
        return false()
    return R.c.id.in_(select(picked).where(or_(*member)).correlate(None))  # the outer query may read that table too


def content_query(sel: Selection) -> Select:
    """The stored texts only: selecting the id beside them made the SQLite read ~50% slower (measured), and every
    stored text names its id at its start (service/export/service.py `_id_in` reads it when an entry fails)."""
    return _select(sel, [R.c.content])


def estimate_query(sel: Selection) -> Select:
    """Rows the selection will write, for progress reports: counted on the typed table (its study), before
    `_since` and filters, so an upper bound that costs an index scan, not a pass over the resources."""
    stored = TYPES[sel.resource_type]
    if sel.studies is not None and not sel.studies:
        return select(func.count()).select_from(stored.table).where(false())
    if sel.study_id is None:
        return select(func.count()).select_from(stored.table)
    if stored.study_via is not None:
        via_type = stored.study_via[0]
        return select(func.count()).select_from(TYPES[via_type].table).where(
            *compiler.in_study(via_type, sel.study_id))
    if stored.study_param is None:
        return select(func.count()).select_from(stored.table).where(false())
    return select(func.count()).select_from(stored.table).where(*compiler.in_study(sel.resource_type, sel.study_id))


def stream_contents(conn: Connection, sel: Selection, batch: int):
    """Lists of stored JSON texts, `batch` at a time, from a server-side cursor (bounded memory)."""
    result = conn.execution_options(stream_results=True, yield_per=batch).execute(content_query(sel))
    yield from result.scalars().partitions(batch)


def find_patients(session: Session, ids: list[str], *, study_id: str | None = None,
                  studies: frozenset[str] | None = None) -> set[str]:
    """Which of `ids` are current Patients, members of `study_id`'s cohort (its ResearchSubjects) when given, and
    in one of `studies` (those a client may see) when it is limited."""
    conditions = [R.c.resource_type == "Patient", R.c.deleted.is_(False), R.c.id.in_(ids)]
    if study_id is not None:
        conditions.append(allowed("Patient", (study_id,)))
    if studies is not None:
        conditions.append(allowed("Patient", tuple(sorted(studies))))
    return set(session.execute(select(R.c.id).where(*conditions)).scalars())


# -- jobs -------------------------------------------------------------------------------------------

def add_job(session: Session, row: dict) -> None:
    session.execute(J.insert().values(**row))


def get_job(session: Session | Connection, job_id: str):
    return session.execute(select(J).where(J.c.id == job_id)).first()


def _rowcount(result: Result[Any]) -> int:
    """The rows an UPDATE or DELETE touched (`Session.execute` is typed `Result`; a DML statement's is a
    `CursorResult`)."""
    return cast(CursorResult[Any], result).rowcount


def delete_job(session: Session, job_id: str) -> int:
    return _rowcount(session.execute(delete(J).where(J.c.id == job_id)))


def update_job(session: Session, job_id: str, **values: Any) -> int:
    """Set `values` on the export's row (its job's lease, checked by the caller, says whether it may)."""
    return _rowcount(session.execute(update(J).where(J.c.id == job_id).values(**values)))


def find_cancelled(session: Session) -> list[str]:
    return list(session.execute(select(J.c.id).where(J.c.status == "cancelled")).scalars())


def find_expired(session: Session, finished_before: datetime) -> list[str]:
    return list(session.execute(select(J.c.id).where(J.c.status.in_(("completed", "failed")),
                                                     J.c.finished_at < finished_before)).scalars())

