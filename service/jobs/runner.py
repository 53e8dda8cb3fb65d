"""The job runner: a thread in each app process that reaps, claims and runs background jobs of the kinds it
knows (`JobKind`: a name and the handler that runs one job), from the durable job table every replica shares.

A claimed job is leased to its worker for `settings.job_lease_s`; the handler calls `ctx.heartbeat()` as it
goes, which renews the lease at most every `settings.job_heartbeat_s`. Every loop of every runner reaps: a job
whose lease ran out (its process was killed, hung, or lost the database) goes back to the queue and runs again
(on any replica), until its `max_attempts` are spent, then it fails with an error saying so. A run that lost its
lease (reaped, or cancelled) learns it at its next heartbeat (`LeaseLost`) and stops; whatever it returns is
written only if it still holds the lease when it finishes (`Done.commit` runs in the transaction that completes
the job, after the lease is checked), so a job is never completed twice. A runner stopped cleanly (app
shutdown) puts its job back in the queue without spending an attempt.

Handlers are written so that a run can start over: a restarted job must not see the leftovers of a dead run as its
own (exports write each run into a folder of its own and publish it when they complete).
"""

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from service import faults
from service.db import write_session
from service.jobs import repository
from service.jobs.repository import Lease
from service.settings import Settings

log = logging.getLogger("trial_fhir.jobs")

#: a run stopped by a database fault (the database away) is due again after this
FAULT_BACKOFF_S = 5.0


def utcnow() -> datetime:
    return datetime.now(UTC)


class LeaseLost(Exception):
    """The job is no longer this run's (its lease ran out and it was reaped, or it was cancelled): stop, write
    nothing of it."""


class Stopping(Exception):
    """This runner is shutting down: the job goes back to the queue."""


class JobError(Exception):
    """A job's failure said in the service's words: its text is the job's error (anything else is recorded as an
    unexpected fault, the log having the details: a database error holds SQL and parameter values)."""


def error_text(exc: BaseException) -> str:
    if isinstance(exc, JobError):
        return str(exc)[:2000]
    return "an unexpected fault stopped the job; the server log has the details"


@dataclass
class Done:
    """What a handler returns: `result` (JSON) is kept on the job; `commit` runs in the transaction that marks it
    completed, once the lease is known to be still this run's (publish what the run made there); `discard` runs
    when the run lost its lease before it could complete (remove what it made)."""

    result: Any = None
    commit: Callable[[Session], None] | None = None
    discard: Callable[[], None] | None = None


@dataclass(frozen=True)
class JobKind:
    """One kind of job: `run(ctx)` does one job; `on_failed(session, job_id, payload, error)` runs in the
    transaction that fails it for good (its handler raised, or its last attempt lost its worker); `error` says
    what a handler's exception tells the client; `housekeeping()` runs in every loop of the runner."""

    name: str
    run: Callable[["JobContext"], Done | None]
    on_failed: Callable[[Session, str, Any, str], None] | None = None
    error: Callable[[BaseException], str] = error_text
    housekeeping: Callable[[], None] | None = None


class JobContext:
    """What a handler knows of its job and how it keeps it: `heartbeat()` often (it renews the lease when due)."""

    def __init__(self, runner: "JobRunner", lease: Lease) -> None:
        self._runner = runner
        self.lease = lease
        self.job_id = lease.job_id
        self.payload = lease.payload
        self.attempt = lease.attempt
        self.max_attempts = lease.max_attempts
        self.worker = lease.worker
        self._last = time.monotonic()

    @property
    def should_stop(self) -> bool:
        return self._runner.stopping

    def heartbeat(self, also: Callable[[Session], None] | None = None, *, force: bool = False) -> None:
        """Renew the lease when `heartbeat_s` passed since the last renewal (or `force`), running `also` (e.g. a
        progress report) in the same transaction. Raises Stopping when the runner is stopping, LeaseLost when the
        job is no longer this run's."""
        if self.should_stop:
            raise Stopping(self.job_id)
        now = time.monotonic()
        if not force and now - self._last < self._runner.heartbeat_s:
            return
        self._last = now
        with write_session(self._runner.engine) as session:
            if not repository.renew(session, self.lease, utcnow(), self._runner.lease_s):
                session.rollback()
                raise LeaseLost(self.job_id)
            if also is not None:
                also(session)
            session.commit()


class JobRunner:
    """Claims and runs jobs of `kinds`, one at a time, in a thread of its own. Woken at once by `wake()` (a job
    enqueued in this process), and otherwise polling every `poll_s`, so jobs enqueued on another replica (or given
    back by a stopped or dead one) are run too."""

    def __init__(self, engine: Engine, settings: Settings, kinds: Iterable[JobKind], *, name: str | None = None,
                 lease_s: float | None = None, heartbeat_s: float | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.kinds = {k.name: k for k in kinds}
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease_s = lease_s if lease_s is not None else settings.job_lease_s
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else settings.job_heartbeat_s
        self.poll_s = settings.export_poll_interval_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="job-runner", daemon=True)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def start(self) -> "JobRunner":
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop at the job's next heartbeat; a job in progress goes back to the queue."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- one turn -------------------------------------------------------------------------------------------

    def maintain(self) -> list[repository.Reaped]:
        """Reap jobs whose lease ran out (failing those with no attempt left, with their kind's `on_failed` in the
        same transaction), then each kind's housekeeping, then forget jobs that ended long ago."""
        now = utcnow()
        with write_session(self.engine) as session:
            reaped = repository.reap(session, now, backoff_s=0.0)
            for job in reaped:
                kind = self.kinds.get(job.kind)
                if job.state == "failed" and kind is not None and kind.on_failed is not None:
                    kind.on_failed(session, job.job_id, job.payload, job.error)
            repository.purge(session, now - timedelta(hours=self.settings.job_retention_hours))
            session.commit()
        for job in reaped:
            log.warning("job %s (%s) reaped: %s", job.job_id, job.kind, job.error)
        for kind in self.kinds.values():
            if kind.housekeeping is not None:
                kind.housekeeping()
        return reaped

    def claim(self) -> Lease | None:
        with write_session(self.engine) as session:
            lease = repository.claim(session, self.kinds, self.name, utcnow(), self.lease_s)
            session.commit()
        return lease

    def run_once(self) -> bool:
        """Maintenance, then claim and run one job; True when a job ran."""
        self.maintain()
        lease = self.claim()
        if lease is None:
            return False
        log.info("job %s (%s) attempt %d claimed by %s", lease.job_id, lease.kind, lease.attempt, self.name)
        outcome = self.run(lease)
        log.info("job %s (%s) %s", lease.job_id, lease.kind, outcome)
        return True

    def run(self, lease: Lease) -> str:
        """Run one claimed job to its end: completed, failed, queued (given back) or lost (not this run's any more)."""
        kind = self.kinds[lease.kind]
        try:
            done = kind.run(JobContext(self, lease)) or Done()
        except Stopping:
            with write_session(self.engine) as session:
                repository.release(session, lease, utcnow())
                session.commit()
            return "queued"
        except LeaseLost:
            return "lost"
        except Exception as exc:  # noqa: BLE001 — the job records why it stopped; the runner goes on
            return self._stopped_by(kind, lease, exc)
        with write_session(self.engine) as session:
            if not repository.finish(session, lease, utcnow(), "completed", result=done.result):
                session.rollback()
                if done.discard is not None:
                    done.discard()
                return "lost"
            if done.commit is not None:
                done.commit(session)
            session.commit()
        return "completed"

    def _stopped_by(self, kind: JobKind, lease: Lease, exc: Exception) -> str:
        """A handler raised: a database fault with attempts left runs again later; anything else fails the job."""
        now = utcnow()
        if faults.fault_kind(exc) is not None and lease.attempt < lease.max_attempts:
            log.warning("job %s (%s) stopped by a database fault; it runs again", lease.job_id, lease.kind,
                        exc_info=True)
            with write_session(self.engine) as session:
                repository.release(session, lease, now, not_before=now + timedelta(seconds=FAULT_BACKOFF_S),
                                   count_attempt=True, error=f"attempt {lease.attempt} of {lease.max_attempts} was "
                                   "stopped by a database fault; it runs again")
                session.commit()
            return "queued"
        log.exception("job %s (%s) failed", lease.job_id, lease.kind)
        error = kind.error(exc)
        with write_session(self.engine) as session:
            if not repository.finish(session, lease, now, "failed", error=error):
                session.rollback()
                return "lost"
            if kind.on_failed is not None:
                kind.on_failed(session, lease.job_id, lease.payload, error)
            session.commit()
        return "failed"

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self.run_once():
                    continue
            except Exception as exc:  # noqa: BLE001 — a database hiccup must not kill the runner
                if faults.fault_kind(exc) is None:
                    log.exception("job runner %s: error while polling", self.name)
                else:  # the database is away (restarting, down): expected, answered by waiting; no traceback
                    log.warning("job runner %s: the database is not answering (%s); polling again in %ss",
                                self.name, type(exc).__name__, self.poll_s)
            self._wake.wait(self.poll_s)
            self._wake.clear()


def enqueue(session: Session, kind: str, payload: Any, *, job_id: str | None = None, max_attempts: int = 3) -> str:
    """Add a job to the queue in the caller's transaction (it exists once the caller commits, with the write that
    caused it); its id. Wake a runner of this process afterwards (`JobRunner.wake`) for it to start at once."""
    return repository.enqueue(session, kind, payload, utcnow(), job_id=job_id, max_attempts=max_attempts)


def cancel(session: Session, job_id: str) -> bool:
    """Cancel a queued or running job in the caller's transaction; its holder stops at its next heartbeat."""
    return repository.cancel(session, job_id, utcnow())
