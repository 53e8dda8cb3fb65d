"""SQL of the job table: enqueue, claim, renew, finish, release, reap. Never commits (the runner owns its
transactions, and `enqueue` joins the caller's, so a job is created with the write that causes it)."""

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import orjson
from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection, CursorResult, Result
from sqlmodel import Session

from service.jobs.models import JobRecord
from service.store.models import table_of

J = table_of(JobRecord)
FINISHED = ("completed", "failed", "cancelled")


@dataclass(frozen=True)
class Lease:
    """A claimed job as its holder knows it: the job, and the run (`attempt`) and worker that hold it."""

    job_id: str
    kind: str
    payload: Any
    attempt: int
    max_attempts: int
    worker: str


def _rowcount(result: Result[Any]) -> int:
    return cast(CursorResult[Any], result).rowcount


def enqueue(session: Session | Connection, kind: str, payload: Any, now: datetime, *, job_id: str | None = None,
            max_attempts: int = 3, not_before: datetime | None = None) -> str:
    """Add a queued job (in the caller's transaction: it exists once that commits); its id."""
    job_id = job_id or str(uuid.uuid4())
    session.execute(J.insert().values(id=job_id, kind=kind, state="queued", payload=orjson.dumps(payload).decode(),
                                      attempts=0, max_attempts=max_attempts, not_before=not_before or now,
                                      created_at=now))
    return job_id


def get(session: Session | Connection, job_id: str):
    return session.execute(select(J).where(J.c.id == job_id)).first()


def claim(session: Session, kinds: Iterable[str], worker: str, now: datetime, lease_s: float) -> Lease | None:
    """Take the oldest queued job of `kinds` that is due, for `worker`, leased for `lease_s`; None when there is
    none. One claimer wins a job: PostgreSQL locks the row (`FOR UPDATE SKIP LOCKED`: other claimers pass over it,
    they don't wait); SQLite serialises writers (the session must be a write session, `BEGIN IMMEDIATE`), and the
    UPDATE is conditional anyway. The caller commits."""
    kinds = list(kinds)
    if not kinds:
        return None
    due = (select(J.c.id, J.c.kind, J.c.payload, J.c.attempts, J.c.max_attempts)
           .where(J.c.state == "queued", J.c.kind.in_(kinds), J.c.not_before <= now)
           .order_by(J.c.created_at, J.c.id).limit(1))
    if session.get_bind().dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    row = session.execute(due).first()
    if row is None:
        return None
    attempt = row.attempts + 1
    done = _rowcount(session.execute(
        update(J).where(J.c.id == row.id, J.c.state == "queued", J.c.attempts == row.attempts)
        .values(state="running", attempts=attempt, worker=worker, started_at=now, heartbeat=now,
                lease_until=now + timedelta(seconds=lease_s))))
    if done != 1:
        return None
    return Lease(row.id, row.kind, orjson.loads(row.payload), attempt, row.max_attempts, worker)


def _held(lease: Lease):
    """The job's row while `lease` still holds it."""
    return (J.c.id == lease.job_id, J.c.state == "running", J.c.worker == lease.worker, J.c.attempts == lease.attempt)


def renew(session: Session, lease: Lease, now: datetime, lease_s: float) -> bool:
    """Extend the lease to `now + lease_s`; False when the job is no longer this run's (reaped, cancelled)."""
    return _rowcount(session.execute(update(J).where(*_held(lease)).values(
        heartbeat=now, lease_until=now + timedelta(seconds=lease_s)))) == 1


def finish(session: Session, lease: Lease, now: datetime, state: str, *, result: Any = None,
           error: str | None = None) -> bool:
    """End the job (completed or failed) if `lease` still holds it; False (nothing changed) when it doesn't."""
    values: dict[str, Any] = {"state": state, "finished_at": now, "lease_until": None, "error": error}
    if result is not None:
        values["result"] = orjson.dumps(result).decode()
    return _rowcount(session.execute(update(J).where(*_held(lease)).values(**values))) == 1


def release(session: Session, lease: Lease, now: datetime, *, not_before: datetime | None = None,
            error: str | None = None, count_attempt: bool = False) -> bool:
    """Put the job back in the queue (its worker stops, or a transient fault: retried at `not_before`); the run
    gives its attempt back unless `count_attempt`. False when the lease no longer held it."""
    return _rowcount(session.execute(update(J).where(*_held(lease)).values(
        state="queued", worker=None, lease_until=None, not_before=not_before or now, error=error,
        attempts=lease.attempt if count_attempt else lease.attempt - 1))) == 1


def cancel(session: Session | Connection, job_id: str, now: datetime) -> bool:
    """Cancel a queued or running job (its holder notices at its next heartbeat); False when it had ended."""
    return _rowcount(session.execute(update(J).where(J.c.id == job_id, J.c.state.in_(("queued", "running")))
                                     .values(state="cancelled", finished_at=now, lease_until=None))) == 1


@dataclass(frozen=True)
class Reaped:
    job_id: str
    kind: str
    payload: Any
    state: str  # queued (it runs again) or failed (no attempt left)
    error: str


def reap(session: Session, now: datetime, backoff_s: float) -> list[Reaped]:
    """Running jobs whose lease ran out (their worker died, hung or lost the database): back to the queue, due in
    `backoff_s`; failed when they had their last attempt. The caller commits (with whatever the kinds do about
    the failed ones, in the same transaction)."""
    expired = (select(J.c.id, J.c.kind, J.c.payload, J.c.attempts, J.c.max_attempts, J.c.lease_until, J.c.worker)
               .where(J.c.state == "running", J.c.lease_until < now).order_by(J.c.lease_until).limit(100))
    if session.get_bind().dialect.name == "postgresql":
        expired = expired.with_for_update(skip_locked=True)
    reaped = []
    for row in session.execute(expired).all():
        lost = (f"attempt {row.attempts} of {row.max_attempts} lost its worker (no heartbeat since its lease ran out "
                f"at {row.lease_until.isoformat(timespec='seconds')})")
        if row.attempts >= row.max_attempts:
            state, error = "failed", f"{lost}; no attempt left"
            values: dict[str, Any] = {"state": state, "finished_at": now, "lease_until": None, "error": error}
        else:
            state, error = "queued", f"{lost}; it runs again"
            values = {"state": state, "worker": None, "lease_until": None, "error": error,
                      "not_before": now + timedelta(seconds=backoff_s)}
        done = _rowcount(session.execute(update(J).where(J.c.id == row.id, J.c.state == "running",
                                                         J.c.attempts == row.attempts, J.c.lease_until < now)
                                         .values(**values)))
        if done == 1:
            reaped.append(Reaped(row.id, row.kind, orjson.loads(row.payload), state, error))
    return reaped


def purge(session: Session, finished_before: datetime) -> int:
    """Remove ended jobs that finished before `finished_before`; how many."""
    return _rowcount(session.execute(delete(J).where(J.c.state.in_(FINISHED), J.c.finished_at < finished_before)))
