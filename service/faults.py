"""Database faults, told apart from bugs in one place: a database that is down, restarting, read-only, out of
connections or too slow is a `503 Service Unavailable` with `Retry-After` and an OperationOutcome `transient`,
never a 500. Every adapter (SQLAlchemy, the psycopg and asyncpg driver paths, the audit writer) reaches the
client through `service.errors.failure_response`, which asks `unavailable()` here.

The answer names what happened in the service's words only: no SQL, parameters or identifiers (the driver's
message may quote any of those), and the log gets the error's class and SQLSTATE, not its text.
"""

import logging
import socket
import sqlite3
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, DisconnectionError, TimeoutError as PoolTimeout

from service.errors import FhirError

log = logging.getLogger("trial_fhir")
T = TypeVar("T")

#: seconds a client is asked to wait (`Retry-After`); `configure()` sets it from TRIAL_FHIR_RETRY_AFTER_S
RETRY_AFTER_S = 5

#: PostgreSQL SQLSTATE classes and codes that are the database's state, not the request's: 08 connection
#: exception, 53 insufficient resources (too many connections, disk full), 57 operator intervention (shutdown,
#: cannot connect now, query canceled by statement_timeout), 25006 read-only transaction (a standby, or
#: default_transaction_read_only), 40001/40P01 are not here: serialization failures and deadlocks are retried by
#: the write path and reported as conflicts
_TRANSIENT_CLASSES = ("08", "53", "57")
_TRANSIENT_CODES = {"25006", "58030"}  # read-only transaction; I/O error
STATEMENT_TIMEOUT = "57014"  # query_canceled: statement_timeout (or a cancel request)

#: SQLite's words for a database it cannot use just now
_SQLITE_TRANSIENT = ("database is locked", "disk i/o error", "attempt to write a readonly database",
                     "unable to open database file", "database or disk is full", "database table is locked")


class ServiceUnavailable(FhirError):
    """The database is away or too slow just now: 503, `Retry-After`, OperationOutcome `transient`."""

    status_code, issue_code = 503, "transient"


def configure(retry_after_s: int) -> None:
    global RETRY_AFTER_S
    RETRY_AFTER_S = retry_after_s


def _sqlstate(exc: BaseException) -> str | None:
    state = getattr(exc, "sqlstate", None)  # psycopg and asyncpg both name it so
    return state if isinstance(state, str) else None


def _driver_error(exc: BaseException) -> BaseException:
    """The driver's own exception under SQLAlchemy's wrapper (the exception itself when not wrapped)."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return exc.orig
    return exc


def fault_kind(exc: BaseException) -> str | None:
    """What kind of database fault `exc` is ("timeout", "unavailable"), or None for anything else (a bug,
    a conflict, bad input)."""
    if isinstance(exc, (DisconnectionError, PoolTimeout)):
        return "unavailable"
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return "unavailable"
    orig = _driver_error(exc)
    state = _sqlstate(orig)
    if state is not None:
        if state == STATEMENT_TIMEOUT:
            return "timeout"
        if state[:2] in _TRANSIENT_CLASSES or state in _TRANSIENT_CODES:
            return "unavailable"
        return None
    if isinstance(orig, sqlite3.OperationalError):
        text = str(orig).lower()
        if "interrupted" in text:
            return "timeout"
        return "unavailable" if any(words in text for words in _SQLITE_TRANSIENT) else None
    module = type(orig).__module__
    if module.startswith("psycopg") and type(orig).__name__ in ("OperationalError", "InterfaceError"):
        return "unavailable"  # no SQLSTATE: the client side lost or could not open the connection
    if module.startswith("asyncpg") and type(orig).__name__ in (
            "ConnectionDoesNotExistError", "InterfaceError", "ConnectionFailureError", "InternalClientError",
            "TooManyConnectionsError", "CannotConnectNowError", "PostgresConnectionError"):
        return "unavailable"
    if isinstance(orig, (ConnectionError, TimeoutError, socket.gaierror)):
        return "unavailable"  # refused, reset, timed out, unknown host (asyncpg and the audit writer's connect);
        # not any OSError: a missing export file is not the database's state
    return None


def unavailable(exc: BaseException) -> ServiceUnavailable | None:
    """The 503 answering `exc` when it is a database fault; None when it isn't one."""
    kind = fault_kind(exc)
    if kind is None:
        return None
    orig = _driver_error(exc)
    log.warning("database fault (%s: %s %s); answered 503", kind, type(orig).__name__, _sqlstate(orig) or "")
    return _answer(kind)


def _answer(kind: str) -> ServiceUnavailable:
    headers = {"Retry-After": str(RETRY_AFTER_S)}
    if kind == "timeout":
        return ServiceUnavailable("The request took longer than the server allows for one database statement and "
                                  "was stopped; nothing was changed. Narrow the search or retry later.",
                                  headers=headers)
    return ServiceUnavailable("The database is unavailable just now; the request was not applied. Retry after "
                              f"{RETRY_AFTER_S} seconds.", headers=headers)


def not_ready(exc: BaseException) -> ServiceUnavailable:
    """`/readyz`'s 503: whatever kept the database from answering (a time-out too)."""
    return unavailable(exc) or _answer("unavailable")


def once_more_on_reconnect(read: Callable[[], T]) -> T:
    """Run `read` (a read: safe to repeat) once more when its pooled connection turned out dead (SQLAlchemy
    invalidated it, and with it every connection the pool made before: a database restart), so that the client
    never sees a connection that died while it sat in the pool. Writes do the same in `resources.run_write`."""
    try:
        return read()
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        log.info("read on a dead pooled connection, running it again on a new one")
        return read()
