"""Everything that talks to a database driver directly, below SQLAlchemy: the one home of driver-level code.

The write path and the hot search reads skip SQLAlchemy's per-statement machinery where it cost more CPU than the
database's answer (measured in bench/): binary COPY and pipelined INSERTs (`add_rows`), unprepared look-ups on the
session's connection (`driver_rows`), cached page statements run on the driver's cursor (`DriverStatement`), and
the asyncpg pool that reads those pages on the event loop (`AsyncReadPool`). Driver errors come out as SQLAlchemy's
(`as_sqlalchemy_errors`), so callers see one family of exceptions whichever way a statement went. Repositories call
these functions; no service or router touches a driver object.
"""

import asyncio
from collections.abc import Callable, Iterable, Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from operator import itemgetter
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Float, Select, Table, insert
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.compiler import SQLCompiler
from sqlmodel import Session

if TYPE_CHECKING:  # both are imported where they are used, so that neither loads unless its path runs
    import asyncpg
    import psycopg

#: from this many rows on, PostgreSQL inserts go through COPY (one stream instead of a statement per row)
COPY_MIN_ROWS = 8


def add_rows(session: Session, batches: Sequence[tuple[Table, Sequence[dict[str, Any]]]]) -> None:
    """Insert each (table, rows): dicts with the same keys, values already in their database form (aware UTC
    datetimes). Tables have no foreign keys between them, so the order of tables doesn't matter.

    PostgreSQL goes straight to the driver: binary COPY for a table with many rows; the tables with few go as
    INSERTs in one pipeline (one round trip for all of them: a single POST writes four tables)."""
    connection = session.connection()
    if connection.dialect.name == "sqlite":
        _sqlite_insert(connection, batches)
        return
    if connection.dialect.name != "postgresql":
        for table, rows in batches:
            if rows:
                session.execute(insert(table), rows)
        return
    _pipelined(_driver(session), _copy_many(_driver(session), batches), ())


#: (table, columns) -> SQLite's INSERT text, and the columns' bind conversions (SQLAlchemy's, e.g. datetimes to
#: its text form), compiled once per process
_SQLITE_INSERTS: dict[tuple[str, tuple[str, ...]], tuple[str, tuple[Callable[[Any], Any] | None, ...]]] = {}


def _sqlite_insert(connection: Connection, batches: Sequence[tuple[Table, Sequence[dict[str, Any]]]]) -> None:
    """SQLite: each table's rows in one executemany on the session's DBAPI connection, the statement and the
    values' conversions SQLAlchemy's own (compiled once): a single POST writes eight tables (with its AuditEvent),
    and SQLAlchemy's per-execution work (cache key, compiled parameters, events) cost ~150 µs each, more than
    SQLite's insert. Errors come out as SQLAlchemy's (IntegrityError…), as `session.execute` raises them."""
    import sqlite3

    dialect = connection.dialect
    dbapi_conn = connection.connection.dbapi_connection
    assert dbapi_conn is not None, "the session's connection has no DBAPI connection"  # as in add_rows
    for table, rows in batches:
        if not rows:
            continue
        columns = tuple(rows[0])
        if len(set(map(len, rows))) > 1:
            raise ValueError(f"rows for {table.name} must all have the same columns")
        key = (table.name, columns)
        known = _SQLITE_INSERTS.get(key)
        if known is None:
            compiled = insert(table).compile(dialect=dialect, column_keys=list(columns))
            order = cast(list[str], compiled.positiontup)
            if tuple(order) != columns:
                raise ValueError(f"unexpected parameter order for {table.name}: {order}")
            known = _SQLITE_INSERTS[key] = (compiled.string, tuple(
                table.c[c].type.dialect_impl(dialect).bind_processor(dialect) for c in columns))
        sql, processors = known
        if any(processors):
            params = [tuple(v if f is None or v is None else f(v) for f, v in zip(processors, (row[c] for c in columns),
                                                                                    strict=True)) for row in rows]
        else:
            params = [tuple(row[c] for c in columns) for row in rows]
        cursor = dbapi_conn.cursor()
        try:
            cursor.executemany(sql, params)
        except sqlite3.Error as exc:
            raise DBAPIError.instance(sql, None, exc, sqlite3.Error) from exc
        finally:
            cursor.close()


def add_rows_and_commit(session: Session, batches: Sequence[tuple[Table, Sequence[dict[str, Any]]]],
                        statements: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """PostgreSQL: `add_rows`, then `statements` (the write's audit append), then COMMIT, the inserts of few rows,
    the statements and the COMMIT in one pipeline: a single write's rows, its AuditEvent and its commit cost one
    round trip (tables of many rows go by COPY before it, which a pipeline can't hold). An error in any of them
    (a unique key taken meanwhile) aborts the rest: nothing is committed, and the caller rolls back."""
    driver = _driver(session)
    _pipelined(driver, _copy_many(driver, batches), [*statements, ("COMMIT", {})])


def _driver(session: Session) -> "psycopg.Connection[Any]":
    driver: psycopg.Connection[Any] | None = session.connection().connection.driver_connection
    # None only for a pool entry whose connection was closed or invalidated: the session's connection is live
    assert driver is not None, "the session's connection has no driver connection"
    return driver


def _copy_many(driver: "psycopg.Connection[Any]", batches: Sequence[tuple[Table, Sequence[dict[str, Any]]]]
               ) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """COPY the tables of `batches` with many rows; the INSERT statements and parameters of those with few."""
    few: list[tuple[str, list[tuple[Any, ...]]]] = []
    for table, rows in batches:
        if not rows:
            continue
        columns = list(rows[0])
        if len(set(map(len, rows))) > 1:
            raise ValueError(f"rows for {table.name} must all have the same columns")
        # row -> its values in `columns` order; `...`: mypy can't infer the lambda against a one-argument signature
        # (its second parameter is a default, bound once)
        values: Callable[..., tuple[Any, ...]] = (
            itemgetter(*columns) if len(columns) > 1 else (lambda row, c=columns[0]: (row[c],)))
        names = ", ".join(f'"{c}"' for c in columns)
        if len(rows) >= COPY_MIN_ROWS:
            statement = f'COPY "{table.name}" ({names}) FROM STDIN (FORMAT BINARY)'
            with as_sqlalchemy_errors(statement), driver.cursor() as cursor:
                types = _column_types(cursor, table.name)
                with cursor.copy(statement) as copy:
                    copy.set_types([types[c] for c in columns])
                    for row in rows:
                        copy.write_row(values(row))
        else:
            few.append((f'INSERT INTO "{table.name}" ({names}) VALUES ({", ".join(["%s"] * len(columns))})',
                        [values(row) for row in rows]))
    return few


def _pipelined(driver: "psycopg.Connection[Any]", inserts: Sequence[tuple[str, list[tuple[Any, ...]]]],
               statements: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """The inserts (executemany each), then the statements, in one pipeline: one round trip."""
    if not inserts and not statements:
        return
    first = inserts[0][0] if inserts else statements[0][0]
    with as_sqlalchemy_errors(first), driver.pipeline(), driver.cursor() as cursor:
        for statement, params in inserts:
            cursor.executemany(statement, params)
        for statement, values in statements:
            cursor.execute(statement, values or None, prepare=False)


#: (database, table) -> {column: type oid}, read from the catalogue once per process: a binary COPY must name the
#: exact type of every column, and the catalogue (what the migrations made) is the authority on those
_COLUMN_TYPES: dict[tuple[str, str], dict[str, int]] = {}


def _column_types(cursor: "psycopg.Cursor[Any]", table: str) -> dict[str, int]:
    key = (cursor.connection.info.dbname, table)
    types = _COLUMN_TYPES.get(key)
    if types is None:
        cursor.execute("SELECT attname, atttypid::int FROM pg_attribute WHERE attrelid = %s::regclass "
                       "AND attnum > 0 AND NOT attisdropped", (table,))
        types = _COLUMN_TYPES[key] = dict(cursor.fetchall())
    return types


def driver_rows(session: Session, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    """PostgreSQL: the rows of `sql` (psycopg placeholders) run on the session's connection by the driver itself:
    for the write path's few look-ups per Bundle, SQLAlchemy's statement and result machinery cost more CPU than
    the database's answer. Errors come out as SQLAlchemy's (see `as_sqlalchemy_errors`)."""
    driver: psycopg.Connection[Any] | None = session.connection().connection.driver_connection
    assert driver is not None, "the session's connection has no driver connection"  # as in add_rows
    with as_sqlalchemy_errors(sql), driver.cursor() as cursor:
        # planned on each run, never prepared: a plan cached while a table was small (a fresh database, a bulk load
        # before ANALYZE) kept scanning it whole for every key once it had grown (1 s per Bundle at 20k rows)
        cursor.execute(sql, params, prepare=False)
        return cursor.fetchall()


@contextmanager
def as_sqlalchemy_errors(statement: str) -> Iterator[None]:
    """Driver errors as SQLAlchemy raises them (IntegrityError, OperationalError…), so the write path's retry of
    a unique-key race or a deadlock sees the same exceptions whichever way the rows went in."""
    import psycopg

    try:
        yield
    except psycopg.Error as exc:
        # a connection the server dropped (or that died in the pool) is marked invalidated, as SQLAlchemy marks
        # its own: the write is then run again on a new connection (service/core/resources.run_write)
        state = exc.sqlstate or ""
        lost = isinstance(exc, psycopg.OperationalError) and (not state or state[:2] == "08" or state[:3] == "57P")
        raise DBAPIError.instance(statement, None, exc, psycopg.Error, connection_invalidated=lost) from exc


def _result_processor(type_: Any, dialect: Dialect) -> Callable[[Any], Any] | None:
    """SQLAlchemy's conversion of a selected column's values. PostgreSQL's numeric types ask for the column's
    driver type code, unknown here: a float column (a page sorted by a quantity) is a float from both drivers,
    with nothing to convert."""
    try:
        return cast(Callable[[Any], Any] | None, type_.dialect_impl(dialect).result_processor(dialect, None))
    except TypeError:
        if isinstance(type_, Float) and not type_.asdecimal:
            return None
        raise


@dataclass(frozen=True, slots=True)
class DriverStatement:
    """A cached page statement compiled once for one dialect, run straight on the driver's cursor.

    SQLAlchemy's per-execution work (execution context, parameter and result objects) costs ~4× the
    query itself for a 20-row page (≈180 µs against ≈45 µs of driver time on PostgreSQL here); the SQL
    text, bind order and type conversions (e.g. SQLite's datetime strings) are the compiled statement's own,
    so the rows are the same as `conn.execute(stmt)` gives. Statements with expanding IN lists are not
    compiled this way (their SQL depends on the list length): they stay on `conn.execute`."""

    sql: str
    compiled: SQLCompiler
    positions: tuple[str, ...] | None  # bind names in order for positional drivers (SQLite), else named
    bind_processors: tuple[tuple[str, Callable[[Any], Any]], ...]
    result_processors: tuple[Callable[[Any], Any] | None, ...]

    @staticmethod
    def compile(stmt: "Select[*tuple[Any, ...]]", dialect: Dialect) -> "DriverStatement | None":
        compiled = stmt.compile(dialect=dialect)
        if compiled.literal_execute_params or compiled.post_compile_params:
            return None
        if any(bind.expanding for bind in compiled.binds.values()):
            return None
        binds: list[tuple[str, Callable[[Any], Any]]] = []
        for name, bind in compiled.binds.items():
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                binds.append((name, process))
        results = tuple(_result_processor(column.type, dialect) for column in stmt.selected_columns)
        # a positional compiler lists its bind names in order (positiontup is None only for named paramstyles)
        positions = tuple(cast(list[str], compiled.positiontup)) if compiled.positional else None
        return DriverStatement(compiled.string, compiled, positions, tuple(binds), results)

    def args(self, values: dict[str, Any]) -> tuple[Any, ...] | MutableMapping[str, Any]:
        """The driver's parameters for `values` (bind names -> values), converted as SQLAlchemy would."""
        params = self.compiled.construct_params(values)
        for name, process in self.bind_processors:
            params[name] = process(params[name])
        return tuple(params[name] for name in self.positions) if self.positions is not None else params

    def rows(self, rows: Sequence[Sequence[Any]], *, edges: bool = False) -> Sequence[Sequence[Any]]:
        """The driver's rows, with SQLAlchemy's result conversions applied; with `edges`, only to the first two and
        last two rows (a page's values matter only for its cursors, which come from its first and last row, and
        the page is its rows less the one extra row read at either end)."""
        convert = [(i, p) for i, p in enumerate(self.result_processors) if p is not None]
        if not convert or not rows:
            return rows
        out: list[Sequence[Any]] = list(rows)
        for n in {n % len(out) for n in (0, 1, -2, -1)} if edges else range(len(out)):
            row = list(out[n])
            for i, process in convert:
                row[i] = process(row[i])
            out[n] = tuple(row)
        return out

    def run(self, conn: Connection, stmt: "Select[*tuple[Any, ...]]",
            values: dict[str, Any]) -> Sequence[Sequence[Any]]:
        args = self.args(values)
        dbapi_conn = conn.connection.dbapi_connection
        # None only once the pool entry's connection is closed or invalidated; `conn.connection` gives a live one
        assert dbapi_conn is not None, "the connection has no DBAPI connection"
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute(self.sql, args)
            rows = cursor.fetchall()
        except conn.dialect.loaded_dbapi.Error:
            # let SQLAlchemy run it again: its error handling (wrapping, invalidating a lost connection) applies
            return conn.execute(stmt, values).all()
        finally:
            cursor.close()
        return self.rows(rows)


class AsyncReadPool:
    """PostgreSQL connections (asyncpg) for reads made on one event loop.

    A search page read through a worker thread pays for the hand-off twice (the loop wakes a thread, the thread
    wakes the loop) and the two threads take turns at the GIL; read here, the loop goes on serving other
    requests while PostgreSQL answers. asyncpg, not psycopg's async API: its protocol is a compiled asyncio
    protocol, and a 20-row page cost ~120 µs of this process's CPU against ~185 µs. At most `size` connections,
    opened on demand and kept. A connection whose statement fails (or is cancelled) is closed, not reused; the
    caller decides what to do about the error (the search falls back to its thread path, whose pool checks and
    replaces connections).

    Its statements are the cached page statements of searches (a LIMIT written in the text, an ordered index to
    walk), prepared once per connection and planned once: `plan_cache_mode = force_generic_plan`. Left to
    choose, PostgreSQL planned a study+code+date page afresh on every execution (its generic plan's estimate,
    made without the values, looked dearer than the custom plans) and spent ~450 µs of CPU per search instead
    of ~260. `dialect` is what those statements are compiled for."""

    def __init__(self, dsn: str, size: int, statement_timeout_ms: int = 0) -> None:
        from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg

        self.loop = asyncio.get_running_loop()
        # SQLAlchemy's PostgreSQL dialect __init__ is unannotated
        self.dialect = PGDialect_asyncpg()  # type: ignore[no-untyped-call]
        self._dsn = dsn
        self._settings = {"plan_cache_mode": "force_generic_plan"}
        if statement_timeout_ms:
            self._settings["statement_timeout"] = str(statement_timeout_ms)
        self._slots = asyncio.Semaphore(size)
        self._idle: list[asyncpg.Connection] = []

    async def fetch(self, sql: str, args: Iterable[Any]) -> "list[asyncpg.Record]":
        import asyncpg

        async with self._slots:
            conn = self._idle.pop() if self._idle else await asyncpg.connect(
                self._dsn, server_settings=self._settings)
            try:
                rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
            except BaseException:
                conn.terminate()
                raise
            self._idle.append(conn)
            return rows

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()


def libpq_url(engine: Engine) -> str:
    """The engine's database as a libpq connection URL (what asyncpg connects to)."""
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


def async_read_pool(engine: Engine, size: int, statement_timeout_ms: int = 0) -> AsyncReadPool | None:
    """An `AsyncReadPool` of `size` connections to the engine's database; None where reads on the event loop don't
    exist (SQLite: a read there would block the loop)."""
    if engine.dialect.name != "postgresql":
        return None
    return AsyncReadPool(libpq_url(engine), size, statement_timeout_ms)
