"""Engine, sessions and migrations.

SQLite (embedded default) runs in WAL mode with a busy timeout, and write transactions start with
`BEGIN IMMEDIATE`, so concurrent writers queue instead of failing. PostgreSQL is the production store.

Pooled PostgreSQL connections are checked before use only when they sat idle for `IDLE_PING_S` (a connection
in steady use is known alive, and a ping on every checkout is one more round trip per request). Reads that
are one statement, like a search page, use `read_connection`: in autocommit on PostgreSQL, so they cost one
round trip, not BEGIN + SELECT + ROLLBACK (under READ COMMITTED each statement has its own snapshot anyway).
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from sqlalchemy import event, exc, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection
from sqlmodel import Session, create_engine

if TYPE_CHECKING:
    import sqlite3

MIGRATIONS = Path(__file__).parent / "migrations"
IDLE_PING_S = 10.0
CONNECT_TIMEOUT_S = 10
POOL_SIZE = 40  # per process (plus the async read pool's few): with 2 workers, ~96 of PostgreSQL's default 100


def make_engine(database_url: str, echo: bool = False, statement_timeout_ms: int = 0) -> Engine:
    """The engine for `database_url`. Its errors don't carry the bound parameters (identifiers, patient values)
    into tracebacks and logs (`hide_parameters`), unless `echo` asks for every statement to be logged anyway.
    `statement_timeout_ms` (PostgreSQL; 0: none) is every connection's `statement_timeout`."""
    url = make_url(database_url)
    hide = not echo
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, echo=echo, hide_parameters=hide,
                               connect_args={"check_same_thread": False, "timeout": 60})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: "sqlite3.Connection", _record: ConnectionPoolEntry) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")

        return engine
    # pool_size covers the requests one process runs at once (AnyIO's 40 worker threads at most): connections
    # beyond it are closed on return, and opening one per request under load cost more than the search
    # a database that does not answer at all (a host gone, a black-holed network) is a 503 after CONNECT_TIMEOUT_S,
    # not after the operating system's TCP time-out (minutes)
    connect_args: dict[str, object] = {"connect_timeout": CONNECT_TIMEOUT_S}
    if statement_timeout_ms:
        connect_args["options"] = f"-c statement_timeout={statement_timeout_ms}"
    engine = create_engine(url, echo=echo, hide_parameters=hide, pool_size=POOL_SIZE, max_overflow=10,
                           connect_args=connect_args)
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: Engine) -> None:
    """Pessimistic disconnect handling for connections idle `IDLE_PING_S` or longer: a failed `SELECT 1` on
    checkout makes the pool replace the connection (DisconnectionError), so a restarted database costs no
    request; connections in steady use skip the round trip."""

    @event.listens_for(engine, "checkin")
    def _mark_idle(dbapi_conn: DBAPIConnection, record: ConnectionPoolEntry) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_conn: DBAPIConnection, record: ConnectionPoolEntry, proxy: PoolProxiedConnection) -> None:
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


def write_session(engine: Engine) -> Session:
    """A session whose transaction takes the write lock up front on SQLite."""
    # the option engine is made once per engine and kept on it: making one per request cost ~10% of a single POST
    bind: Engine | None = getattr(engine, "_trial_fhir_write_bind", None)
    if bind is None:
        # cached as an attribute of the engine, which Engine does not declare
        bind = engine._trial_fhir_write_bind = engine.execution_options(write=True)  # type: ignore[attr-defined]
    return Session(bind, expire_on_commit=False)


def read_session(engine: Engine) -> Session:
    return Session(engine, expire_on_commit=False)


@contextmanager
def read_connection(engine: Engine) -> Iterator[Connection]:
    """A connection for reads: autocommit on PostgreSQL (no BEGIN/ROLLBACK round trips; under READ COMMITTED
    each statement sees its own snapshot either way); on SQLite the usual deferred transaction, which costs
    no round trip and keeps the statements of one read on one snapshot."""
    bind: Engine | None = getattr(engine, "_trial_fhir_read_bind", None)  # kept on the engine, like the write bind
    if bind is None:
        bind = engine._trial_fhir_read_bind = engine.execution_options(  # type: ignore[attr-defined]  # as above
            isolation_level="AUTOCOMMIT") if is_postgres(engine) else engine
    with bind.connect() as conn:
        yield conn


@contextmanager
def snapshot_connection(engine: Engine) -> Iterator[Connection]:
    """A connection inside one read-only transaction that sees one snapshot for all its statements (REPEATABLE
    READ on PostgreSQL, a read transaction on SQLite), for reads that walk everything, like an export. On
    PostgreSQL its server-side cursors are planned for the whole result (hash joins), not for the first 10% of
    it (the default for cursors, which picks nested loops for a full export)."""
    options = {"isolation_level": "REPEATABLE READ", "postgresql_readonly": True} if is_postgres(engine) else {}
    with engine.connect().execution_options(**options) as conn, conn.begin():
        if is_postgres(engine):
            conn.exec_driver_sql("SET LOCAL cursor_tuple_fraction = 1.0")
            conn.exec_driver_sql("SET LOCAL statement_timeout = 0")  # an export may walk everything
        yield conn



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
            conn.execute(text("SET LOCAL statement_timeout = 0"))  # a migration may rewrite a large table
            conn.execute(text("SELECT pg_advisory_xact_lock(74657374)"))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
