"""Engine, sessions and migrations.

SQLite (embedded default) runs in WAL mode with a busy timeout, and write transactions start with
`BEGIN IMMEDIATE`, so concurrent writers queue instead of failing. PostgreSQL is the production store.

Pooled PostgreSQL connections are checked before use only when they sat idle for `IDLE_PING_S` (a connection
in steady use is known alive, and a ping on every checkout is one more round trip per request). Reads that
are one statement, like a search page, use `read_connection`: in autocommit on PostgreSQL, so they cost one
round trip, not BEGIN + SELECT + ROLLBACK (under READ COMMITTED each statement has its own snapshot anyway).
"""

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

from alembic import command
from alembic.config import Config
from fastapi import Depends, Request
from sqlalchemy import event, exc, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlmodel import Session, create_engine

MIGRATIONS = Path(__file__).parent / "migrations"
IDLE_PING_S = 10.0
POOL_SIZE = 40  # per process (plus the async read pool's few): with 2 workers, ~96 of PostgreSQL's default 100


def make_engine(database_url: str, echo: bool = False) -> Engine:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, echo=echo, connect_args={"check_same_thread": False, "timeout": 60})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")

        return engine
    # pool_size covers the requests one process runs at once (AnyIO's 40 worker threads at most): connections
    # beyond it are closed on return, and opening one per request under load cost more than the search
    engine = create_engine(url, echo=echo, pool_size=POOL_SIZE, max_overflow=10)
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: Engine) -> None:
    """Pessimistic disconnect handling for connections idle `IDLE_PING_S` or longer: a failed `SELECT 1` on
    checkout makes the pool replace the connection (DisconnectionError), so a restarted database costs no
    request; connections in steady use skip the round trip."""

    @event.listens_for(engine, "checkin")
    def _mark_idle(dbapi_conn, record):
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_conn, record, proxy):
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < IDLE_PING_S:
            return
        try:
            cur = dbapi_conn.cursor()
            try:
                cur.execute("SELECT 1")
            finally:
                cur.close()
            if not dbapi_conn.autocommit:
                dbapi_conn.rollback()
        except Exception as error:
            raise exc.DisconnectionError(f"pooled connection is gone: {error}") from error


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


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

    def __init__(self, dsn: str, size: int) -> None:
        from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg

        self.loop = asyncio.get_running_loop()
        self.dialect = PGDialect_asyncpg()
        self._dsn = dsn
        self._slots = asyncio.Semaphore(size)
        self._idle: list = []

    async def fetch(self, sql: str, args) -> list:
        import asyncpg

        async with self._slots:
            conn = self._idle.pop() if self._idle else await asyncpg.connect(
                self._dsn, server_settings={"plan_cache_mode": "force_generic_plan"})
            try:
                rows = await conn.fetch(sql, *args)
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


def write_session(engine: Engine) -> Session:
    """A session whose transaction takes the write lock up front on SQLite."""
    # the option engine is made once per engine and kept on it: making one per request cost ~10% of a single POST
    bind = getattr(engine, "_trial_fhir_write_bind", None)
    if bind is None:
        bind = engine._trial_fhir_write_bind = engine.execution_options(write=True)
    return Session(bind, expire_on_commit=False)


def read_session(engine: Engine) -> Session:
    return Session(engine, expire_on_commit=False)


@contextmanager
def read_connection(engine: Engine) -> Iterator[Connection]:
    """A connection for reads: autocommit on PostgreSQL (no BEGIN/ROLLBACK round trips; under READ COMMITTED
    each statement sees its own snapshot either way); on SQLite the usual deferred transaction, which costs
    no round trip and keeps the statements of one read on one snapshot."""
    bind = getattr(engine, "_trial_fhir_read_bind", None)  # kept on the engine, like the write bind
    if bind is None:
        bind = engine._trial_fhir_read_bind = engine.execution_options(isolation_level="AUTOCOMMIT") \
            if is_postgres(engine) else engine
    with bind.connect() as conn:
        yield conn


async def _read_session_dep(request: Request) -> AsyncIterator[Session]:
    """Async on purpose: a sync generator dependency costs two worker-thread round trips per request. Opening
    a Session does no I/O (it connects on first use, in the endpoint's thread); closing it only hands the
    connection back to the pool (a rollback of a read-only transaction)."""
    with read_session(request.app.state.engine) as session:
        yield session


async def _write_session_dep(request: Request) -> AsyncIterator[Session]:
    """Async for the same reason; the endpoint's unit of work (service.core.resources.run_write) has committed
    or rolled back before the session is closed, so closing does no database work."""
    with write_session(request.app.state.engine) as session:
        yield session


ReadSessionDep = Annotated[Session, Depends(_read_session_dep)]
WriteSessionDep = Annotated[Session, Depends(_write_session_dep)]


def alembic_config(engine: Engine | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if engine is not None:
        cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema up to `revision`. On PostgreSQL an advisory lock keeps replicas from racing."""
    cfg = alembic_config(engine)
    with engine.begin() as conn:
        if is_postgres(engine):
            conn.execute(text("SELECT pg_advisory_xact_lock(74657374)"))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
