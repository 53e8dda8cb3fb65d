"""SQL of FHIR search: parsed criteria become conditions on the typed tables, pages are read in key order
(keyset: `(sort value, id) > cursor`, never OFFSET), joined to `resource.content` for the stored JSON.
Never commits, never sees HTTP."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any

from sqlalchemy import and_, bindparam, case, false, func, literal_column, or_, select, tuple_, union_all
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Session

from fhir_mappings.search import Criterion, Cursor, DateRange, Include, ParamDef, Quantity, Sort, Token, params_for
from service.adverse_event.models import AdverseEventRecord
from service.observation.models import MeasurementRecord
from service.store.driver import AsyncReadPool, DriverStatement
from service.store.models import IdentifierRecord, ResourceRecord
from service.trial.models import PatientRecord, StudyRecord, SubjectRecord

R = ResourceRecord.__table__
I = IdentifierRecord.__table__  # noqa: E741
M = MeasurementRecord.__table__
A = AdverseEventRecord.__table__
S = SubjectRecord.__table__
ST = StudyRecord.__table__
P = PatientRecord.__table__

#: what a search reads through: a Session (inside a unit of work, e.g. a batch entry) or a read connection
Reader = Session | Connection

#: the typed table each resource type is searched in (one row per current resource, keyed by id)
TYPED = {"Observation": M, "AdverseEvent": A, "ResearchSubject": S, "ResearchStudy": ST, "Patient": P}
DATE_SORT = {"Observation": M.c.effective, "AdverseEvent": A.c.onset}

#: (type, parameter) -> (kind, column...)
COLUMNS: dict[tuple[str, str], tuple] = {
    ("Observation", "subject"): ("reference", M.c.patient_id),
    ("Observation", "patient"): ("reference", M.c.patient_id),
    ("Observation", "study"): ("reference", M.c.study_id),
    ("Observation", "code"): ("coding", M.c.code_system, M.c.code),
    ("Observation", "category"): ("code", M.c.category),
    ("Observation", "status"): ("code", M.c.status),
    ("Observation", "date"): ("datetime", M.c.effective),
    ("Observation", "value-quantity"): ("quantity", M.c.value),
    ("Observation", "arm"): ("arm", M.c.subject_id),
    ("Observation", "visit"): ("code", M.c.visit),
    ("AdverseEvent", "subject"): ("reference", A.c.patient_id),
    ("AdverseEvent", "study"): ("reference", A.c.study_id),
    ("AdverseEvent", "date"): ("datetime", A.c.onset),
    ("AdverseEvent", "event"): ("coding", A.c.event_system, A.c.event_code),
    ("AdverseEvent", "seriousness"): ("code", A.c.seriousness),
    ("AdverseEvent", "severity"): ("code", A.c.severity),
    ("ResearchSubject", "study"): ("reference", S.c.study_id),
    ("ResearchSubject", "individual"): ("reference", S.c.patient_id),
    ("ResearchSubject", "patient"): ("reference", S.c.patient_id),
    ("ResearchSubject", "status"): ("code", S.c.status),
    ("ResearchSubject", "arm"): ("code", S.c.arm),
    ("ResearchStudy", "status"): ("code", ST.c.status),
    ("ResearchStudy", "title"): ("string", ST.c.title),
    ("Patient", "birthdate"): ("date", P.c.birth_date),
    ("Patient", "gender"): ("code", P.c.gender),
}

#: (source type, reference parameter) -> the typed column holding the referenced id
REFERENCE_COLUMNS = {
    ("Observation", "subject"): M.c.patient_id, ("Observation", "patient"): M.c.patient_id,
    ("Observation", "study"): M.c.study_id,
    ("ResearchSubject", "individual"): S.c.patient_id, ("ResearchSubject", "patient"): S.c.patient_id,
    ("ResearchSubject", "study"): S.c.study_id,
    ("AdverseEvent", "subject"): A.c.patient_id, ("AdverseEvent", "study"): A.c.study_id,
}


def _connection(session: Reader) -> Connection:
    return session.connection() if isinstance(session, Session) else session


def _table(resource_type: str):
    return TYPED.get(resource_type, R)


def _scope(resource_type: str) -> list[ColumnElement]:
    """Conditions every query of the type carries (types without a typed table are read from `resource`)."""
    if resource_type in TYPED:
        return []
    return [R.c.resource_type == resource_type, R.c.deleted.is_(False)]


_JOINS: dict[str, Any] = {}


def _joined(resource_type: str):
    """The typed table joined to its `resource` row (built once per type)."""
    joined = _JOINS.get(resource_type)
    if joined is None:
        table = _table(resource_type)
        joined = R if table is R else table.join(R, and_(R.c.resource_type == resource_type, R.c.id == table.c.id))
        _JOINS[resource_type] = joined
    return joined


def uses_resource_table(criteria: Sequence[Criterion]) -> bool:
    return any(c.name == "_lastUpdated" for c in criteria)


def excludes_missing(resource_type: str, sort: Sort, criteria: Sequence[Criterion]) -> bool:
    """True when a criterion on the sort key (a date) can only match rows that have a value."""
    if sort.key == "date":
        return any(c.name == "date" and c.modifier != "missing" for c in criteria)
    return False


# -- conditions ------------------------------------------------------------------------------------------

def conditions(resource_type: str, criteria: Sequence[Criterion]) -> list[ColumnElement]:
    """SQL conditions (AND'd) for parsed criteria; each criterion's values are OR'd."""
    table = _table(resource_type)
    params = params_for(resource_type)
    where = _scope(resource_type)
    for crit in criteria:
        where.append(_criterion(resource_type, table, params[crit.name], crit))
    return where


def _criterion(rtype: str, table, param: ParamDef, crit: Criterion) -> ColumnElement:
    if crit.name == "_id":
        return table.c.id.in_(list(crit.values))
    if crit.name == "_lastUpdated":
        return or_(*[_date_cmp(R.c.last_updated, v) for v in crit.values])
    if crit.name == "identifier":
        return _identifier(rtype, table, crit)
    kind, *cols = COLUMNS[(rtype, crit.name)]
    if kind == "arm":
        return _arm(cols[0], crit)
    if crit.modifier == "missing":
        column = cols[-1]
        return column.is_(None) if crit.missing else column.is_not(None)
    if kind == "reference":
        ids = [v.id for v in crit.values if v.type is None or v.type in param.targets]
        if not ids:
            return false()
        return cols[0] == ids[0] if len(ids) == 1 else cols[0].in_(ids)
    if kind == "datetime":
        return or_(*[_date_cmp(cols[0], v) for v in crit.values])
    if kind == "date":
        return or_(*[_date_cmp(cols[0], _as_dates(v)) for v in crit.values])
    if kind == "quantity":
        return or_(*[_quantity(cols[0], v) for v in crit.values])
    if kind == "string":
        return or_(*[_string(cols[0], crit.modifier, v) for v in crit.values])
    if kind == "code":
        cond = or_(*[_code(cols[0], param, v) for v in crit.values])
    else:  # coding
        cond = or_(*[_coding(cols[0], cols[1], v) for v in crit.values])
    return _negate(cond) if crit.modifier == "not" else cond


def _negate(cond: ColumnElement) -> ColumnElement:
    """`:not`: every row where `cond` is not true, including rows with no value (NULL)."""
    return case((cond, 1), else_=0) == 0


def _code(column, param: ParamDef, token: Token) -> ColumnElement:
    systems = param.systems or ("",)
    if token.system is not None and token.system not in systems:
        return false()
    if token.code is None:
        return column.is_not(None)
    return column == token.code


def _coding(system_col, code_col, token: Token) -> ColumnElement:
    parts = []
    if token.system == "":
        parts.append(or_(system_col.is_(None), system_col == ""))
    elif token.system is not None:
        parts.append(system_col == token.system)
    if token.code is not None:
        parts.append(code_col == token.code)
    return and_(*parts)


def _identifier(rtype: str, table, crit: Criterion) -> ColumnElement:
    owned = select(I.c.resource_id).where(I.c.resource_type == rtype)
    if crit.modifier == "missing":
        return table.c.id.not_in(owned) if crit.missing else table.c.id.in_(owned)
    ors = []
    for token in crit.values:
        parts = []
        if token.system is not None:
            parts.append(I.c.system == token.system)
        if token.code is not None:
            parts.append(I.c.value == token.code)
        ors.append(and_(*parts))
    matching = owned.where(or_(*ors))
    return table.c.id.not_in(matching) if crit.modifier == "not" else table.c.id.in_(matching)


def _arm(subject_col, crit: Criterion) -> ColumnElement:
    if crit.modifier == "missing":
        subjects = select(S.c.id).where(S.c.arm.is_(None) if crit.missing else S.c.arm.is_not(None))
        return subject_col.in_(subjects)
    names = [t.code for t in crit.values if t.system in (None, "") and t.code is not None]
    any_arm = any(t.system in (None, "") and t.code is None for t in crit.values)
    arm_cond = S.c.arm.is_not(None) if any_arm else S.c.arm.in_(names) if names else false()
    subjects = select(S.c.id).where(arm_cond)
    return subject_col.not_in(subjects) if crit.modifier == "not" else subject_col.in_(subjects)


def _as_dates(rng: DateRange) -> DateRange:
    """A UTC range of instants as a range of calendar dates (for `date` columns)."""
    def day(moment: datetime, ceil: bool) -> date:
        d = moment.date()
        return d if not ceil or moment.time() == time(0) else date.fromordinal(min(d.toordinal() + 1, date.max.toordinal()))
    return DateRange(rng.prefix, day(rng.low, False), day(rng.high, True))  # type: ignore[arg-type]


def _date_cmp(column, rng: DateRange) -> ColumnElement:
    """The stored moment `column` (a point) against the searched range [low, high)."""
    low, high, prefix = rng.low, rng.high, rng.prefix
    if prefix == "eq":
        return and_(column >= low, column < high)
    if prefix == "ne":
        return or_(column < low, column >= high)
    if prefix in ("gt", "sa"):
        return column >= high
    if prefix in ("lt", "eb"):
        return column < low
    if prefix == "ge":
        return column >= low
    if prefix == "le":
        return column < high
    return false()


def _quantity(column, quantity: Quantity) -> ColumnElement:
    ors = []
    for b in quantity.bounds:
        p = b.prefix
        if p == "eq":
            cond = and_(column >= b.low, column < b.high)
        elif p == "ne":
            cond = or_(column < b.low, column >= b.high)
        elif p in ("gt", "sa"):
            cond = column > b.number
        elif p in ("lt", "eb"):
            cond = column < b.number
        elif p == "ge":
            cond = column >= b.number
        elif p == "le":
            cond = column <= b.number
        else:  # ap: within 10%
            cond = and_(column >= min(b.low, b.high), column <= max(b.low, b.high))
        ors.append(cond if b.measure is None else and_(M.c.measure == b.measure, cond))
    return or_(*ors) if ors else false()


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _string(column, modifier: str | None, value: str) -> ColumnElement:
    if modifier == "exact":
        return column == value
    pattern = _like_escape(value.lower())
    pattern = f"%{pattern}%" if modifier == "contains" else f"{pattern}%"
    return func.lower(column).like(pattern, escape="\\")


# -- reading ---------------------------------------------------------------------------------------------

def _sort_column(resource_type: str, sort: Sort):
    if sort.key == "_lastUpdated":
        return R.c.last_updated
    if sort.key == "date":
        return DATE_SORT[resource_type]
    return _table(resource_type).c.id


# -- statements cached per query shape ---------------------------------------------------------------------
#
# Building a SQLAlchemy statement costs far more than running it (DESIGN.md: the database answers in ~0.3 ms).
# The common criteria (`_id`, references, token codes and codings, dates, with no modifier) are therefore
# reduced to a *shape* (what decides the SQL text) and the values to bind; a page query is built once per
# shape, with named bind parameters, and reused, so SQLAlchemy's compiled cache hits and nothing is rebuilt.
# Any other criterion takes the general path above (`conditions`), which builds the statement per request.

def fast_shape(resource_type: str, criteria: Sequence[Criterion]) -> tuple[tuple, dict[str, Any]] | None:
    """(shape, bind values) of `criteria` when every one is of a cached kind, else None."""
    if resource_type not in TYPED:
        return None
    params = params_for(resource_type)
    shape: list[tuple] = []
    values: dict[str, Any] = {}
    for n, crit in enumerate(criteria):
        name = f"c{n}"
        if crit.name == "_id":
            if crit.modifier is not None:
                return None
            shape.append(("_id",))
            values[name] = list(crit.values)
            continue
        found = COLUMNS.get((resource_type, crit.name))
        if found is None or crit.modifier == "missing":
            return None
        kind = found[0]
        param = params[crit.name]
        if kind == "reference":
            ids = [v.id for v in crit.values if v.type is None or v.type in param.targets]
            shape.append((crit.name, "reference", min(len(ids), 2)))
            values[name] = ids[0] if len(ids) == 1 else ids
        elif kind == "code" and crit.modifier is None:
            systems = param.systems or ("",)
            parts = []
            for i, token in enumerate(crit.values):
                if token.system is not None and token.system not in systems:
                    parts.append("false")
                elif token.code is None:
                    parts.append("any")
                else:
                    parts.append("eq")
                    values[f"{name}_{i}"] = token.code
            shape.append((crit.name, "code", tuple(parts)))
        elif kind == "coding" and crit.modifier is None:
            parts = []
            for i, token in enumerate(crit.values):
                system = "any" if token.system is None else "none" if token.system == "" else "eq"
                if system == "eq":
                    values[f"{name}_{i}s"] = token.system
                if token.code is not None:
                    values[f"{name}_{i}c"] = token.code
                parts.append((system, token.code is not None))
            shape.append((crit.name, "coding", tuple(parts)))
        elif kind == "datetime" and crit.modifier is None:
            for i, rng in enumerate(crit.values):
                values[f"{name}_{i}l"], values[f"{name}_{i}h"] = rng.low, rng.high
            shape.append((crit.name, "datetime", tuple(rng.prefix for rng in crit.values)))
        else:
            return None
    return tuple(shape), values


def _fast_conditions(resource_type: str, shape: tuple) -> list[ColumnElement]:
    """The conditions of a shape, with the bind parameters `fast_shape` names (mirrors `_criterion`)."""
    table = _table(resource_type)
    where: list[ColumnElement] = []
    for n, (pname, *rest) in enumerate(shape):
        name = f"c{n}"
        if pname == "_id":
            where.append(table.c.id.in_(bindparam(name, expanding=True)))
            continue
        kind, *cols = COLUMNS[(resource_type, pname)]
        if kind == "reference":
            many = rest[1]
            where.append(false() if many == 0 else cols[0] == bindparam(name) if many == 1
                         else cols[0].in_(bindparam(name, expanding=True)))
        elif kind == "code":
            where.append(or_(*[false() if part == "false" else cols[0].is_not(None) if part == "any"
                               else cols[0] == bindparam(f"{name}_{i}") for i, part in enumerate(rest[1])]))
        elif kind == "coding":
            ors = []
            for i, (system, has_code) in enumerate(rest[1]):
                parts = []
                if system == "none":
                    parts.append(or_(cols[0].is_(None), cols[0] == ""))
                elif system == "eq":
                    parts.append(cols[0] == bindparam(f"{name}_{i}s"))
                if has_code:
                    parts.append(cols[1] == bindparam(f"{name}_{i}c"))
                ors.append(and_(*parts))
            where.append(or_(*ors))
        else:  # datetime
            where.append(or_(*[_date_cmp(cols[0], DateRange(prefix, bindparam(f"{name}_{i}l", type_=cols[0].type),
                                                            bindparam(f"{name}_{i}h", type_=cols[0].type)))
                               for i, prefix in enumerate(rest[1])]))
    return where


@dataclass(frozen=True, slots=True)
class _Page:
    stmt: Any
    driver: DriverStatement | None


_PAGE_STATEMENTS: dict[tuple, _Page] = {}


@dataclass(frozen=True, slots=True)
class FastPage:
    """A page of a cached shape, ready to run: the statement (with its driver form) and the values to bind."""
    page: _Page
    binds: dict[str, Any]
    backwards: bool

    def rows(self, found) -> list[tuple[int, Any, str, str]]:
        """(phase, sort value, id, content) in sort order, from the statement's rows (phase, id, value, content)."""
        rows = [(phase, value, rid, content) for phase, rid, value, content in found]
        if self.backwards:
            rows.reverse()
        return rows


def fast_page(dialect: Dialect, resource_type: str, fast: tuple[tuple, dict[str, Any]], sort: Sort,
              cursor: Cursor | None, limit: int, *, not_null: bool = False) -> FastPage | None:
    """The one statement that reads a page of the cached shape `fast` (see find_page); None when no phase can
    match (the page is empty)."""
    key, by_id, nullable, backwards, descending, phases = _walk(resource_type, sort, cursor)
    runs = tuple(p for p in phases if not (p == 1 and not_null))
    if not runs:
        return None
    at_cursor = tuple(cursor is not None and p == cursor.phase for p in runs)
    cache_key = (dialect.name, dialect.driver, resource_type, fast[0], sort.key, descending, runs, at_cursor, limit)
    page = _PAGE_STATEMENTS.get(cache_key)
    if page is None:
        where = _fast_conditions(resource_type, fast[0])
        if dialect.name == "postgresql" and runs == (0, 1) and not any(at_cursor) and not descending:
            stmt = _first_page_nulls_last(resource_type, where, key, limit)
        else:
            stmt = _phases_statement(resource_type, where, key, by_id, nullable, descending, runs, at_cursor, limit)
        page = _Page(stmt, DriverStatement.compile(stmt, dialect))
        if len(_PAGE_STATEMENTS) < 4096:
            _PAGE_STATEMENTS[cache_key] = page
    binds = dict(fast[1])
    if any(at_cursor):
        binds["cursor_value"], binds["cursor_id"] = cursor.value, cursor.id
    return FastPage(page, binds, backwards)


async def find_page_async(pool: AsyncReadPool, resource_type: str, fast: tuple[tuple, dict[str, Any]], sort: Sort,
                          cursor: Cursor | None, limit: int, *, not_null: bool = False) -> list[tuple] | None:
    """`find_page` for a cached shape, read on the event loop through `pool` (PostgreSQL, asyncpg); None when the
    page statement can't go to the driver as it is (an IN list): read it with `find_page` in a thread instead."""
    planned = fast_page(pool.dialect, resource_type, fast, sort, cursor, limit, not_null=not_null)
    if planned is None:
        return []
    driver = planned.page.driver
    if driver is None:
        return None
    return planned.rows(driver.rows(await pool.fetch(driver.sql, driver.args(planned.binds)), edges=True))


def count_matches(session: Reader, resource_type: str, where: list[ColumnElement], *, join_resource: bool) -> int:
    table = _table(resource_type)
    source = _joined(resource_type) if join_resource else table
    return _connection(session).execute(select(func.count()).select_from(source).where(*where)).scalar_one()


def _walk(resource_type: str, sort: Sort, cursor: Cursor | None):
    """(sort column, sorted by id?, sort value may be missing?, walking backwards?, descending?, phases in walking
    order from the cursor's): how a page query walks the sort order (see find_page)."""
    table = _table(resource_type)
    key = _sort_column(resource_type, sort)
    by_id = key is table.c.id
    nullable = key.nullable and not by_id
    backwards = cursor is not None and cursor.before
    descending = sort.descending != backwards  # the direction this query walks
    phases = [0, 1] if nullable else [0]
    if backwards:
        phases.reverse()
    if cursor is not None and cursor.phase in phases:
        phases = phases[phases.index(cursor.phase):]
    return key, by_id, nullable, backwards, descending, phases


def find_page(session: Reader, resource_type: str, where: list[ColumnElement] | None, sort: Sort,
              cursor: Cursor | None, limit: int, *, not_null: bool = False,
              fast: tuple[tuple, dict[str, Any]] | None = None) -> list[tuple[int, Any, str, str]]:
    """Up to `limit` rows (phase, sort value, id, content) in sort order, after the cursor (or, for a
    `before` cursor, the rows just before it, still returned in sort order).

    The order is total: rows with a sort value by (value, id), then rows without one by id, in the sort's
    direction; so a page never repeats or skips a row however many rows are written meanwhile. Each phase is
    one index-ordered SELECT … LIMIT. `not_null`: the criteria only match rows with a sort value."""
    conn = _connection(session)
    if fast is not None:  # one statement for every phase (a UNION ALL of each phase's page): one round trip
        planned = fast_page(conn.dialect, resource_type, fast, sort, cursor, limit, not_null=not_null)
        if planned is None:
            return []
        if planned.page.driver is not None and not conn.engine.echo:
            found = planned.page.driver.run(conn, planned.page.stmt, planned.binds)
        else:
            found = conn.execute(planned.page.stmt, planned.binds).all()
        return planned.rows(found)
    table = _table(resource_type)
    key, by_id, nullable, backwards, descending, phases = _walk(resource_type, sort, cursor)
    rows: list[tuple[int, Any, str, str]] = []
    for phase in phases:  # usually one query: the next phase is read only when this one runs out
        at_cursor = cursor is not None and phase == cursor.phase
        if phase == 1 and not_null:
            continue  # a filter on the sort key already excludes rows without a value
        stmt = select(table.c.id, key, R.c.content).select_from(_joined(resource_type)).where(*where)
        if phase == 0 and not by_id:
            if nullable:
                stmt = stmt.where(key.is_not(None))
            if at_cursor:
                pos, mark = tuple_(key, table.c.id), (cursor.value, cursor.id)
                stmt = stmt.where(pos < mark if descending else pos > mark)
            order = [key.desc(), table.c.id.desc()] if descending else [key, table.c.id]
        else:
            if phase == 1:
                if not_null:
                    continue  # a filter on the sort key already excludes rows without a value
                stmt = stmt.where(key.is_(None))
            if at_cursor:
                stmt = stmt.where(table.c.id < cursor.id if descending else table.c.id > cursor.id)
            order = [table.c.id.desc() if descending else table.c.id]
        found = conn.execute(stmt.order_by(*order).limit(limit - len(rows))).all()
        rows.extend((phase, value, rid, content) for rid, value, content in found)
        if len(rows) >= limit:
            break
    if backwards:
        rows.reverse()
    return rows


def _first_page_nulls_last(resource_type: str, where: list[ColumnElement], key, limit: int):
    """PostgreSQL, first page in ascending order of a sort key that may be missing: both phases in one walk of the
    index. A b-tree keeps NULLs after every value (ASC NULLS LAST), so `ORDER BY key, id` walks the rows with a
    value in order and then those without one by id: the page `_phases_statement` reads, without its second
    index scan, UNION and sort (~60 µs of the server's CPU per search)."""
    table = _table(resource_type)
    phase = case((key.is_(None), literal_column("1")), else_=literal_column("0"))
    return (select(phase, table.c.id, key, R.c.content).select_from(_joined(resource_type)).where(*where)
            .order_by(key.asc().nulls_last(), table.c.id).limit(_fixed(limit)))


def _phases_statement(resource_type: str, where: list[ColumnElement], key, by_id: bool, nullable: bool,
                      descending: bool, runs: tuple[int, ...], at_cursor: tuple[bool, ...], limit: int):
    """The page over the phases `runs` (in walking order) as one statement: rows (phase, id, sort value, content).

    With two phases it is a UNION ALL of each phase's own index-ordered `LIMIT`, put in order by (phase
    position, sort value, id): at most 2 × limit rows are read, and a 20-result page whose sort key may be
    missing costs one round trip instead of two (the second phase mostly finds nothing)."""
    union = len(runs) > 1
    parts = [_page_statement(resource_type, where, key, by_id, nullable, descending, phase, cursor, limit,
                             position=position if union else None)
             for position, (phase, cursor) in enumerate(zip(runs, at_cursor))]
    if len(parts) == 1:
        return parts[0]
    both = union_all(*[select(*part.subquery().c) for part in parts]).subquery("page")
    value, rid = both.c.sort_value, both.c.rid
    order = [both.c.position, value.desc(), rid.desc()] if descending else [both.c.position, value, rid]
    return select(both.c.phase, rid, value, both.c.content).order_by(*order).limit(_fixed(limit))


def _page_statement(resource_type: str, where: list[ColumnElement], key, by_id: bool, nullable: bool,
                    descending: bool, phase: int, at_cursor: bool, limit: int, *, position: int | None = None):
    """One phase's page query, rows (phase, id, sort value, content), with the cursor as bind parameters
    `cursor_value`, `cursor_id` (see find_page); with a `position`, led by it and labelled for a UNION."""
    table = _table(resource_type)
    if position is None:
        columns = [literal_column(str(phase)), table.c.id, key, R.c.content]
    else:
        columns = [literal_column(str(position)).label("position"), literal_column(str(phase)).label("phase"),
                   table.c.id.label("rid"), key.label("sort_value"), R.c.content.label("content")]
    stmt = select(*columns).select_from(_joined(resource_type)).where(*where)
    if phase == 0 and not by_id:
        if nullable:
            stmt = stmt.where(key.is_not(None))
        if at_cursor:
            pos = tuple_(key, table.c.id)
            mark = tuple_(bindparam("cursor_value", type_=key.type), bindparam("cursor_id", type_=table.c.id.type))
            stmt = stmt.where(pos < mark if descending else pos > mark)
        order = [key.desc(), table.c.id.desc()] if descending else [key, table.c.id]
    else:
        if phase == 1:
            stmt = stmt.where(key.is_(None))
        if at_cursor:
            mark = bindparam("cursor_id", type_=table.c.id.type)
            stmt = stmt.where(table.c.id < mark if descending else table.c.id > mark)
        order = [table.c.id.desc() if descending else table.c.id]
    return stmt.order_by(*order).limit(_fixed(limit))


def _fixed(limit: int):
    """`LIMIT n` written into a cached page statement (its cache key holds the limit), not bound: PostgreSQL plans a
    prepared statement whose LIMIT is a parameter for every row the query could return, so its generic plan looked
    costly and every execution was planned again (~150 µs of the server's CPU per search); with the limit in the text
    the generic plan is the ordered index scan, and it is kept."""
    return literal_column(str(int(limit)))


def find_contents(session: Reader, resource_type: str, ids: Sequence[str]) -> list[tuple[str, str]]:
    if not ids:
        return []
    stmt = select(R.c.id, R.c.content).where(R.c.resource_type == resource_type, R.c.id.in_(list(ids)),
                                              R.c.deleted.is_(False)).order_by(R.c.id)
    return [(rid, content) for rid, content in _connection(session).execute(stmt)]


def find_included(session: Reader, include: Include, source_ids: Sequence[str]) -> list[tuple[str, str]]:
    """The resources that the page's `include.source` rows reference through `include.param`."""
    column = REFERENCE_COLUMNS[(include.source, include.param)]
    table = column.table
    referenced = select(column).where(table.c.id.in_(list(source_ids))).distinct()
    stmt = select(R.c.id, R.c.content).where(R.c.resource_type == include.target, R.c.id.in_(referenced),
                                              R.c.deleted.is_(False)).order_by(R.c.id)
    return [(rid, content) for rid, content in _connection(session).execute(stmt)]


def find_revincluded(session: Reader, include: Include, target_ids: Sequence[str],
                     limit: int) -> list[tuple[str, str]]:
    """Up to `limit` `include.source` resources that reference one of `target_ids` through `include.param`."""
    column = REFERENCE_COLUMNS[(include.source, include.param)]
    table = column.table
    stmt = (select(table.c.id, R.c.content).select_from(_joined(include.source))
            .where(column.in_(list(target_ids))).order_by(table.c.id).limit(limit))
    return [(rid, content) for rid, content in _connection(session).execute(stmt)]

