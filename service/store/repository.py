"""SQL for the resource store: current rows, versions and identifiers. Never commits, never sees HTTP."""

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, cast

import orjson
from sqlalchemy import ColumnElement, CursorResult, Row, Table, and_, delete, exists, or_, select, tuple_, update
from sqlmodel import Session

# add_rows, add_rows_and_commit: re-exported, the unit of work inserts through the repository
from service.store.driver import add_rows as add_rows, add_rows_and_commit as add_rows_and_commit, driver_rows
from service.store.models import IdentifierRecord, ResourceRecord, ResourceVersion, table_of

R = table_of(ResourceRecord)
V = table_of(ResourceVersion)
I = table_of(IdentifierRecord)  # noqa: E741

#: (version_id, last_updated, deleted, content) of a resource's current row
CurrentRow = Row[int, datetime, bool, str | None]
#: (version_id, last_updated, method, content) of one version (content is None for a delete)
VersionRow = Row[int, datetime, str, str | None]


def get_current(session: Session, resource_type: str, id: str, *, for_update: bool = False) -> CurrentRow | None:
    """(version_id, last_updated, deleted, content) of the current version, or None."""
    stmt = select(R.c.version_id, R.c.last_updated, R.c.deleted, R.c.content).where(
        R.c.resource_type == resource_type, R.c.id == id)
    if for_update and session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    return session.execute(stmt).first()


def lock_current(session: Session, keys: Iterable[tuple[str, str]]) -> None:
    """PostgreSQL: lock the current rows of `keys` ((type, id); those that exist) in one stable order, (type, id),
    so that two transactions writing the same resources in opposite entry orders queue instead of deadlocking.
    SQLite serialises writers itself: nothing to do."""
    wanted = sorted(set(keys))
    if not wanted or session.get_bind().dialect.name != "postgresql":
        return
    session.execute(select(R.c.id).where(tuple_(R.c.resource_type, R.c.id).in_(wanted))
                    .order_by(R.c.resource_type, R.c.id).with_for_update())


def get_version(session: Session, resource_type: str, id: str, version_id: int) -> VersionRow | None:
    stmt = select(V.c.version_id, V.c.last_updated, V.c.method, V.c.content).where(
        V.c.resource_type == resource_type, V.c.id == id, V.c.version_id == version_id)
    return session.execute(stmt).first()


def current_during(at: tuple[datetime, datetime]) -> ColumnElement[bool]:
    """History `_at`: the versions that were current at some moment of [low, high): made before its end and not
    replaced (by the next version, an update or the deletion) by its start."""
    low, high = at
    following = V.alias("following")
    replaced = exists().where(following.c.resource_type == V.c.resource_type, following.c.id == V.c.id,
                              following.c.version_id == V.c.version_id + 1, following.c.last_updated <= low)
    return and_(V.c.last_updated < high, ~replaced)


def find_history(session: Session, resource_type: str, id: str, *, limit: int, before_version: int | None = None,
                 since: datetime | None = None, at: tuple[datetime, datetime] | None = None) -> Sequence[VersionRow]:
    stmt = select(V.c.version_id, V.c.last_updated, V.c.method, V.c.content).where(
        V.c.resource_type == resource_type, V.c.id == id)
    if before_version is not None:
        stmt = stmt.where(V.c.version_id < before_version)
    if since is not None:
        stmt = stmt.where(V.c.last_updated >= since)
    if at is not None:
        stmt = stmt.where(current_during(at))
    return session.execute(stmt.order_by(V.c.version_id.desc()).limit(limit)).all()




def find_history_of_types(session: Session, types: Sequence[tuple[str, Any]], *, limit: int,
                        since: datetime | None = None, before: tuple[datetime, str, str, int] | None = None,
                        at: tuple[datetime, datetime] | None = None
                        ) -> Sequence[Row[tuple[str, str, int, datetime, str, str | None]]]:
    """Versions of every resource of `types` ((type, a subquery of the ids the caller may see, or None for all)),
    newest first ((last_updated, type, id, version) descending): (type, id, version, last_updated, method,
    content). `before`: the page's cursor, the last row of the previous page. Type history is one type of it."""
    which = or_(*[and_(V.c.resource_type == t, V.c.id.in_(only)) if only is not None else V.c.resource_type == t
                  for t, only in types])
    stmt = select(V.c.resource_type, V.c.id, V.c.version_id, V.c.last_updated, V.c.method, V.c.content).where(which)
    if since is not None:
        stmt = stmt.where(V.c.last_updated >= since)
    if at is not None:
        stmt = stmt.where(current_during(at))
    if before is not None:
        stmt = stmt.where(tuple_(V.c.last_updated, V.c.resource_type, V.c.id, V.c.version_id) < tuple_(*before))
    order = (V.c.last_updated.desc(), V.c.resource_type.desc(), V.c.id.desc(), V.c.version_id.desc())
    return session.execute(stmt.order_by(*order).limit(limit)).all()


def find_current_in(session: Session, resource_type: str, ids: Any, *, since: datetime | None = None,
                    after_id: str = "", limit: int) -> Sequence[Row[tuple[str, str]]]:
    """(id, content) of the live resources of `resource_type` whose ids the subquery `ids` gives, by id, after
    `after_id` (a page's cursor), changed at or after `since`."""
    stmt = select(R.c.id, R.c.content).where(R.c.resource_type == resource_type, R.c.deleted.is_(False),
                                             R.c.id.in_(ids), R.c.id > after_id)
    if since is not None:
        stmt = stmt.where(R.c.last_updated >= since)
    return session.execute(stmt.order_by(R.c.id).limit(limit)).all()


def find_existing_ids(session: Session, resource_type: str, ids: Iterable[str]) -> set[str]:
    ids = list(ids)
    if not ids:
        return set()
    if session.get_bind().dialect.name == "postgresql":
        return {rid for rid, in driver_rows(session, _EXISTING_POSTGRES,
                                            {"type": resource_type, "ids": orjson.dumps(ids).decode()})}
    stmt = select(R.c.id).where(R.c.resource_type == resource_type, R.c.id.in_(ids), R.c.deleted.is_(False))
    return set(session.execute(stmt).scalars())


# one parameter instead of an expanded IN list: the same statement text for any number of ids (cheaper to build, and
# prepared once by the driver). The ids go in as JSON text, made by orjson, not as a text[] that psycopg writes out
# element by element in Python (~175 µs of CPU for 100 ids, ~10 µs as JSON): the array is unpacked by PostgreSQL
_EXISTING_POSTGRES = ("SELECT id FROM resource WHERE resource_type = %(type)s "
                      "AND id = ANY(ARRAY(SELECT json_array_elements_text(%(ids)s::json))) AND NOT deleted")


def find_ids_by_identifier(session: Session, resource_type: str, system: str | None, value: str) -> list[str]:
    stmt = select(I.c.resource_id).where(I.c.resource_type == resource_type, I.c.value == value)
    if system is not None:
        stmt = stmt.where(I.c.system == system)
    return list(session.execute(stmt.limit(2)).scalars())


def find_identifier_owners(session: Session, keys: Sequence[tuple[str, str, str]]) -> dict[tuple[str, str, str], str]:
    """{(type, system, value): resource id} for those of `keys` already taken.

    On PostgreSQL, one statement probes an index once per key: the keys go in as one JSON parameter (see
    `_EXISTING_POSTGRES`) and each is a scalar subquery, which the planner can't turn into a join. With
    `value IN (…)` it scanned every identifier of the type and filtered whenever its statistics were stale (a
    fresh or bulk-loaded table before autovacuum's ANALYZE), so each Bundle of a bulk load got slower as the table
    grew (8 ms per look-up at 8k identifiers, 30 ms at 30k). SQLite looks the values up in chunks and matches the
    system here.
    """
    unique = set(keys)
    wanted = sorted(unique)
    found: dict[tuple[str, str, str], str] = {}
    if session.get_bind().dialect.name == "postgresql":
        for start in range(0, len(wanted), 1000):
            chunk = wanted[start:start + 1000]
            rows = driver_rows(session, _OWNERS_POSTGRES, {"keys": orjson.dumps(chunk).decode()})
            found.update(((rtype, system, value), rid) for rtype, system, value, rid in rows if rid is not None)
        return found
    by_type: dict[str, list[str]] = {}
    for rtype, _, value in wanted:
        by_type.setdefault(rtype, []).append(value)
    for rtype, values in by_type.items():
        for start in range(0, len(values), 500):
            stmt = select(I.c.system, I.c.value, I.c.resource_id).where(
                I.c.resource_type == rtype, I.c.value.in_(values[start:start + 500]))
            for system, value, rid in session.execute(stmt):
                if (rtype, system, value) in unique:
                    found[(rtype, system, value)] = rid
    return found


_OWNERS_POSTGRES = """
    SELECT k.type, k.system, k.value,
           (SELECT i.resource_id FROM resource_identifier i
            WHERE i.resource_type = k.type AND i.system = k.system AND i.value = k.value) AS owner
    FROM (SELECT e->>0 AS type, e->>1 AS system, e->>2 AS value FROM json_array_elements(%(keys)s::json) AS e) AS k"""


def update_current(session: Session, resource_type: str, id: str, expected_version: int,
                   values: dict[str, Any]) -> bool:
    stmt = update(R).where(R.c.resource_type == resource_type, R.c.id == id,
                           R.c.version_id == expected_version).values(**values)
    # an UPDATE's result is a CursorResult (Session.execute is declared to return the Result it derives from)
    return cast("CursorResult[Any]", session.execute(stmt)).rowcount == 1


def delete_identifiers(session: Session, resource_type: str, id: str) -> None:
    session.execute(delete(I).where(I.c.resource_type == resource_type, I.c.resource_id == id))


def delete_typed_rows(session: Session, table: Table, id: str) -> None:
    session.execute(delete(table).where(table.c.id == id))
