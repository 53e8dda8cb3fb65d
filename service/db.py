"""Engine, sessions and migrations.

SQLite (embedded default) runs in WAL mode with a busy timeout, and write transactions start with
`BEGIN IMMEDIATE`, so concurrent writers queue instead of failing. PostgreSQL is the production store.
"""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

from alembic import command
from alembic.config import Config
from fastapi import Depends, Request
from sqlalchemy import event, text
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, create_engine

MIGRATIONS = Path(__file__).parent / "migrations"


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
    return create_engine(url, echo=echo, pool_size=10, max_overflow=20, pool_pre_ping=True)


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def write_session(engine: Engine) -> Session:
    """A session whose transaction takes the write lock up front on SQLite."""
    return Session(engine.execution_options(write=True), expire_on_commit=False)


def read_session(engine: Engine) -> Session:
    return Session(engine, expire_on_commit=False)


async def _read_session_dep(request: Request) -> AsyncIterator[Session]:
    """Async on purpose: a sync generator dependency costs two worker-thread round trips per request. Opening
    a Session does no I/O (it connects on first use, in the endpoint's thread); closing it only hands the
    connection back to the pool (a rollback of a read-only transaction)."""
    with read_session(request.app.state.engine) as session:
        yield session


async def _write_session_dep(request: Request) -> AsyncIterator[Session]:
    """Async for the same reason; the endpoint's unit of work (service.resource.service.run_write) has committed
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
