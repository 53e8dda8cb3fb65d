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

from sqlalchemy.engine import Engine

from service.audit.chain import append
from service.audit.events import AuditRecord
from service.db import write_session

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

    async def start(self) -> None:
        """Start the writer thread."""
        self.start_sync()

    def start_sync(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
            self._thread.start()

    async def stop(self) -> None:
        """Write everything queued, then stop the writer."""
        await asyncio.to_thread(self.stop_sync)

    def stop_sync(self) -> None:
        with self._cond:
            thread, self._stopping = self._thread, True
            self._cond.notify_all()
        if thread is not None:
            thread.join()
        with self._cond:
            self._thread = None

    async def commit(self, records: Sequence[AuditRecord]) -> None:
        """Return once `records` are committed (raise what failed them). Records of one call are appended together,
        in their order, in one transaction."""
        if not records:
            return
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

    def _write(self, group: list[tuple[Sequence[AuditRecord], Future[None]]]) -> None:
        try:
            commit_now(self.engine, [r for records, _ in group for r in records])
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
