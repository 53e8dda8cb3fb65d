"""Committing the AuditEvents of requests that write nothing themselves (reads, searches, refused requests), before
their response goes out, without a transaction per request: group commit.

`AuditLog.commit(records)` queues the records and waits; one writer thread takes everything queued, appends it to
the chain in one transaction (service/audit/chain.py `append`), commits, and wakes every waiter. While it writes,
the next requests queue up and go together in its next transaction, so under load a transaction carries many
requests' events and the chain lock is taken once for all of them. A failure reaches the waiters of the failed
transaction (the caller answers 503: a read whose audit can't be recorded is not served); when a transaction of
several requests' events fails, each request's events are tried again alone, so one bad record fails only its
own request. `stop()` writes whatever is queued before it returns: nothing queued is lost on shutdown.

Writes that are transactions of their own append their events in that transaction instead (`append`), so a write
is never committed without its audit row, and a rolled-back write leaves none.
"""

import asyncio
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from service.audit.chain import append, append_alone, events_json
from service.audit.events import AuditRecord
from service.db import write_session
from service.store.driver import as_sqlalchemy_errors, libpq_url

log = logging.getLogger("trial_fhir")


def commit_now(engine: Engine, records: Sequence[AuditRecord]) -> None:
    """Append `records` in a transaction of their own and commit (the CLI, tests, anything without an AuditLog)."""
    if not records:
        return
    with write_session(engine) as session:
        append(session, records)
        session.commit()


class AuditLog:
    """The group-committing writer of one application (one engine)."""

    def __init__(self, engine: Engine, *, max_batch: int = 5000) -> None:
        self.engine = engine
        self.max_batch = max_batch  # records per transaction, at most (a request's own are never split)
        self._pending: list[tuple[Sequence[AuditRecord], Future[None]]] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.transactions = 0  # committed so far (tests, metrics)
        self._connection: Any = None  # PostgreSQL: the writer thread's own pooled connection
        self._loop_writer: _LoopWriter | None = None  # PostgreSQL: the writer of requests on the event loop

    async def start(self) -> None:
        """Start the writer thread (and, on PostgreSQL, the writer on this event loop)."""
        self.start_sync()
        if self.engine.dialect.name == "postgresql" and self._loop_writer is None:
            self._loop_writer = _LoopWriter(libpq_url(self.engine))

    def start_sync(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
            self._thread.start()

    async def stop(self) -> None:
        """Write everything queued, then stop the writers."""
        if self._loop_writer is not None:
            await self._loop_writer.close()
            self._loop_writer = None
        await asyncio.to_thread(self.stop_sync)

    def stop_sync(self) -> None:
        with self._cond:
            thread, self._stopping = self._thread, True
            self._cond.notify_all()
        if thread is not None:
            thread.join()
        with self._cond:
            self._thread = None
        if self._connection is not None:  # back to the pool, as it came
            self._connection.driver_connection.autocommit = False
            self._connection.close()
            self._connection = None

    async def commit(self, records: Sequence[AuditRecord]) -> None:
        """Return once `records` are committed (raise what failed them). Records of one call are appended together,
        in their order, in one transaction."""
        if not records:
            return
        writer = self._loop_writer
        if writer is not None and writer.loop is asyncio.get_running_loop():
            await writer.commit(records)
            return
        if self._thread is None:  # a log its owner never started (a core used by the CLI or a test): start it now
            self.start_sync()
        await asyncio.wrap_future(self.submit(records))

    def submit(self, records: Sequence[AuditRecord]) -> "Future[None]":
        """Queue `records`; the future is resolved once they are committed (or failed)."""
        done: Future[None] = Future()
        if not records:
            done.set_result(None)
            return done
        with self._cond:
            if self._thread is None or self._stopping:
                raise RuntimeError("the audit log is not running")
            self._pending.append((records, done))
            self._cond.notify()
        return done

    def _take(self) -> list[tuple[Sequence[AuditRecord], Future[None]]]:
        """The next group: queued requests in order, up to `max_batch` records (at least one request)."""
        taken: list[tuple[Sequence[AuditRecord], Future[None]]] = []
        size = 0
        while self._pending and (not taken or size + len(self._pending[0][0]) <= self.max_batch):
            item = self._pending.pop(0)
            taken.append(item)
            size += len(item[0])
        return taken

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if not self._pending:  # stopping, and nothing left to write
                    return
                group = self._take()
            self._write(group)

    def _commit(self, records: Sequence[AuditRecord]) -> None:
        """One transaction of `records`: on PostgreSQL on the writer's own connection, kept between transactions
        (`append_alone`: no Session, one pipeline), replaced after any error; on SQLite a write session."""
        if self.engine.dialect.name != "postgresql":
            commit_now(self.engine, records)
            return
        try:
            self._append_alone(records)
        except OperationalError:  # the kept connection was dropped (restart, idle timeout): once more on a new one
            self._append_alone(records)

    def _append_alone(self, records: Sequence[AuditRecord]) -> None:
        if self._connection is None:
            self._connection = self.engine.raw_connection()
            self._connection.driver_connection.autocommit = True  # each append is its own transaction
        driver = self._connection.driver_connection
        try:
            with as_sqlalchemy_errors("audit append"):
                append_alone(driver, records)
        except BaseException:
            connection, self._connection = self._connection, None
            try:
                connection.invalidate()  # rolled back and never reused: a connection in doubt is dropped
            except Exception:
                log.warning("the audit writer's connection could not be dropped cleanly", exc_info=True)
            raise

    def _write(self, group: list[tuple[Sequence[AuditRecord], Future[None]]]) -> None:
        try:
            self._commit([r for records, _ in group for r in records])
            self.transactions += 1
        except Exception as exc:
            if len(group) == 1:
                log.error("audit events could not be recorded (%s)", type(exc).__name__)
                group[0][1].set_exception(exc)
                return
            for item in group:  # alone, each request's events fail or pass on their own
                self._write([item])
            return
        for _, done in group:
            done.set_result(None)


class _LoopWriter:
    """PostgreSQL: group commit on the event loop, through one asyncpg connection (autocommit: each append its own
    transaction, one round trip: trial_fhir_audit_append, migration 0010). A request queues its records and awaits
    a future; the writer task takes everything queued, appends it in one statement, and resolves the futures. No
    thread, so no hand-off to a writer thread and back (with the GIL taken in turns at each), which cost an audited
    search more CPU than appending its event."""

    def __init__(self, dsn: str) -> None:
        self.loop = asyncio.get_running_loop()
        self._dsn = dsn
        self._queue: list[tuple[Sequence[AuditRecord], asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._conn: Any = None
        self._task = self.loop.create_task(self._run(), name="audit-writer")

    async def commit(self, records: Sequence[AuditRecord]) -> None:
        if self._closing:
            raise RuntimeError("the audit log is stopping")
        done: asyncio.Future[None] = self.loop.create_future()
        self._queue.append((records, done))
        self._wake.set()
        await done

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                group, self._queue = self._queue, []
                await self._write(group)
            if self._closing:
                return

    async def _append(self, text: str) -> None:
        import asyncpg

        if self._conn is None:
            self._conn = await asyncpg.connect(self._dsn)
        try:
            await self._conn.execute(_APPEND_ASYNCPG, text)
        except (asyncpg.exceptions.ConnectionDoesNotExistError, asyncpg.exceptions.InterfaceError,
                asyncpg.exceptions.AdminShutdownError, asyncpg.exceptions.InternalClientError, ConnectionError):
            # the server dropped the kept connection (restart, idle timeout), or left the client's protocol state
            # mid-operation ("cannot switch to state …; another operation is in progress", seen by the soak during a
            # PostgreSQL restart): the append never ran (or its transaction was rolled back with the connection), so
            # it is made again once on a new one
            self._conn.terminate()
            self._conn = await asyncpg.connect(self._dsn)
            await self._conn.execute(_APPEND_ASYNCPG, text)

    async def _write(self, group: list[tuple[Sequence[AuditRecord], "asyncio.Future[None]"]]) -> None:
        try:
            await self._append(events_json([r for records, _ in group for r in records]))
        except Exception as exc:
            if self._conn is not None:  # a connection in doubt is not reused
                self._conn.terminate()
                self._conn = None
            if len(group) == 1:
                log.error("audit events could not be recorded (%s)", type(exc).__name__)
                if not group[0][1].done():
                    group[0][1].set_exception(exc)
                return
            for item in group:  # alone, each request's events fail or pass on their own
                await self._write([item])
            return
        for _, done in group:
            if not done.done():
                done.set_result(None)

    async def close(self) -> None:
        """Write what is queued, then close the connection."""
        self._closing = True
        self._wake.set()
        await self._task
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


_APPEND_ASYNCPG = "SELECT trial_fhir_audit_append($1::jsonb)"
