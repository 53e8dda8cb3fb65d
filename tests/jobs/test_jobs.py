"""The durable job table (service/jobs) as pure units on SQLite and PostgreSQL: enqueue in the caller's transaction,
claim, lease renewal, the reaper, attempts, a lost lease (two runners in one process), clean stops, failures."""

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import DisconnectionError
from sqlmodel import Session

from service.db import write_session
from service.jobs import repository
from service.jobs.runner import Done, JobContext, JobError, JobKind, JobRunner, enqueue, utcnow
from service.settings import Settings

J = repository.J


@pytest.fixture
def engine(database_url):
    from service.db import make_engine
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def add(engine, kind: str = "echo", payload: Any = None, **options) -> str:
    with write_session(engine) as session:
        job_id = enqueue(session, kind, payload if payload is not None else {"n": 1}, **options)
        session.commit()
    return job_id


def job(engine, job_id: str):
    with Session(engine) as session:
        return repository.get(session, job_id)


def expire(engine, job_id: str) -> None:
    """The lease of `job_id` ran out (as if its holder stopped renewing a while ago): no waiting in tests."""
    with write_session(engine) as session:
        session.execute(update(J).where(J.c.id == job_id).values(lease_until=utcnow() - timedelta(seconds=1)))
        session.commit()


class Recorder:
    """Kinds for the tests: `echo` returns its payload; `flaky` does what `self.plan` says for its attempt."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, int, str]] = []  # (job id, attempt, worker)
        self.failed: list[tuple[str, str]] = []
        self.plan: dict[int, Any] = {}

    def echo(self, ctx: JobContext) -> Done:
        self.ran.append((ctx.job_id, ctx.attempt, ctx.worker))
        ctx.heartbeat(force=True)
        return Done(result=ctx.payload)

    def flaky(self, ctx: JobContext) -> Done | None:
        self.ran.append((ctx.job_id, ctx.attempt, ctx.worker))
        step = self.plan.get(ctx.attempt)
        if isinstance(step, BaseException):
            raise step
        if callable(step):
            return step(ctx)
        return Done(result={"attempt": ctx.attempt})

    def on_failed(self, session: Session, job_id: str, payload: Any, error: str) -> None:
        # written in the transaction that fails the job: it is there exactly when the failure is
        enqueue(session, "echo", {"failed": job_id})
        self.failed.append((job_id, error))

    def kinds(self) -> list[JobKind]:
        return [JobKind("echo", self.echo), JobKind("flaky", self.flaky, on_failed=self.on_failed)]


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


def runner(engine, settings: Settings, rec: Recorder, name: str, **options) -> JobRunner:
    return JobRunner(engine, settings, rec.kinds(), name=name, **options)


def test_a_job_exists_only_once_the_callers_transaction_commits(engine, settings, rec):
    with write_session(engine) as session:
        dropped = enqueue(session, "echo", {"n": 1})
        session.rollback()
    assert job(engine, dropped) is None
    kept = add(engine, payload={"n": 2})
    assert (job(engine, kept).state, job(engine, kept).attempts) == ("queued", 0)
    worker = runner(engine, settings, rec, "w1")
    assert worker.run_once() is True
    done = job(engine, kept)
    assert (done.state, done.attempts, done.worker, done.result) == ("completed", 1, "w1", '{"n":2}')
    assert done.lease_until is None and done.finished_at is not None
    assert worker.run_once() is False  # nothing left


def test_claim_takes_due_jobs_of_its_kinds_oldest_first(engine, settings, rec):
    first = add(engine)
    time.sleep(0.005)
    second = add(engine)
    other_kind = add(engine, "unknown-kind")
    with write_session(engine) as session:
        session.execute(update(J).where(J.c.id == first).values(not_before=utcnow() + timedelta(minutes=5)))
        session.commit()
    worker = runner(engine, settings, rec, "w1")
    assert worker.claim().job_id == second  # the first is not due yet
    assert worker.claim() is None  # neither the first nor a kind this runner does not know
    assert job(engine, other_kind).state == "queued" and job(engine, first).state == "queued"


def test_claims_from_many_threads_give_each_job_to_one_worker(engine, settings, rec):
    ids = {add(engine) for _ in range(12)}
    claimed: list[str] = []
    lock = threading.Lock()

    def claim_all(name: str) -> None:
        worker = runner(engine, settings, rec, name)
        while (lease := worker.claim()) is not None:
            with lock:
                claimed.append(lease.job_id)

    threads = [threading.Thread(target=claim_all, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids)


def test_a_heartbeat_renews_the_lease_and_writes_beside_it(engine, settings, rec):
    job_id = add(engine)
    worker = runner(engine, settings, rec, "w1", lease_s=30, heartbeat_s=0)
    lease = worker.claim()
    claimed = job(engine, job_id)
    first = claimed.lease_until
    noted = []
    JobContext(worker, lease).heartbeat(also=lambda session: noted.append(session.execute(
        select(J.c.lease_until).where(J.c.id == job_id)).scalar_one()))
    renewed = job(engine, job_id)
    assert renewed.lease_until > first and noted == [renewed.lease_until]  # `also` ran in the renewing transaction
    assert renewed.heartbeat > claimed.heartbeat


def test_the_reaper_runs_a_job_again_until_its_attempts_are_spent(engine, settings, rec):
    job_id = add(engine, "flaky", max_attempts=2)
    dead = runner(engine, settings, rec, "dead")
    assert dead.claim().attempt == 1  # … and its process dies
    expire(engine, job_id)
    reaped = runner(engine, settings, rec, "w2").maintain()
    assert [(r.job_id, r.state) for r in reaped] == [(job_id, "queued")]
    again = job(engine, job_id)
    assert (again.state, again.attempts, again.worker) == ("queued", 1, None)
    assert "attempt 1 of 2 lost its worker" in again.error
    assert dead.claim().attempt == 2  # … and dies again
    expire(engine, job_id)
    runner(engine, settings, rec, "w3").maintain()
    failed = job(engine, job_id)
    assert (failed.state, failed.attempts) == ("failed", 2)
    assert "attempt 2 of 2 lost its worker" in failed.error and "no attempt left" in failed.error
    assert [j for j, _ in rec.failed] == [job_id]
    with Session(engine) as session:  # on_failed wrote in the reaper's transaction
        assert session.execute(select(J.c.id).where(J.c.payload == f'{{"failed":"{job_id}"}}')).first() is not None
    assert rec.ran == []  # no handler ran: the claims above stood for dead workers


def test_a_live_lease_is_not_reaped(engine, settings, rec):
    job_id = add(engine)
    runner(engine, settings, rec, "w1", lease_s=60).claim()
    assert runner(engine, settings, rec, "w2").maintain() == []
    assert job(engine, job_id).state == "running"


def test_a_run_that_lost_its_lease_stops_at_its_heartbeat_and_writes_nothing(engine, settings, rec):
    """Two runners in one process: A is slow (its lease runs out while it works); B reaps the job and runs it to the
    end; A's next heartbeat tells it the job is not its any more, so its result is never written."""
    job_id = add(engine, "flaky")
    a = runner(engine, settings, rec, "A", lease_s=30, heartbeat_s=0)
    b = runner(engine, settings, rec, "B")
    in_a, go_on = threading.Event(), threading.Event()
    outcome: list[str] = []

    def slow(ctx: JobContext) -> Done:
        in_a.set()
        go_on.wait(30)
        ctx.heartbeat()  # raises LeaseLost
        return Done(result={"by": "A"})

    rec.plan[1] = slow
    lease = a.claim()
    thread = threading.Thread(target=lambda: outcome.append(a.run(lease)))
    thread.start()
    assert in_a.wait(30)
    expire(engine, job_id)
    assert b.run_once() is True  # reaps, claims (attempt 2), completes
    go_on.set()
    thread.join(30)
    assert outcome == ["lost"]
    done = job(engine, job_id)
    assert (done.state, done.attempts, done.worker, done.result) == ("completed", 2, "B", '{"attempt":2}')
    assert [(attempt, worker) for _, attempt, worker in rec.ran] == [(1, "A"), (2, "B")]


def test_a_run_that_lost_its_lease_without_noticing_discards_its_work(engine, settings, rec):
    """A finishes without a heartbeat after B took the job: its completion finds the lease gone; its commit never
    runs, its discard does."""
    job_id = add(engine, "flaky")
    a = runner(engine, settings, rec, "A")
    b = runner(engine, settings, rec, "B")
    published, discarded = [], []

    def late(ctx: JobContext) -> Done:
        expire(engine, job_id)
        assert b.run_once() is True  # B reaps and completes it meanwhile
        return Done(result={"by": "A"}, commit=lambda s: published.append("A"), discard=lambda: discarded.append("A"))

    rec.plan[1] = late
    assert a.run(a.claim()) == "lost"
    assert (published, discarded) == ([], ["A"])
    assert job(engine, job_id).result == '{"attempt":2}'


def test_a_cancelled_job_is_not_run_and_its_holder_stops(engine, settings, rec):
    queued = add(engine)
    running = add(engine, "flaky")
    with write_session(engine) as session:
        assert repository.cancel(session, queued, utcnow()) is True
        session.commit()
    worker = runner(engine, settings, rec, "w1", heartbeat_s=0)

    def cancelled_meanwhile(ctx: JobContext) -> Done:
        with write_session(engine) as session:
            repository.cancel(session, ctx.job_id, utcnow())
            session.commit()
        ctx.heartbeat()
        raise AssertionError("the heartbeat should have raised LeaseLost")

    rec.plan[1] = cancelled_meanwhile
    lease = worker.claim()
    assert lease.job_id == running
    assert worker.run(lease) == "lost"
    assert job(engine, running).state == "cancelled" and job(engine, queued).state == "cancelled"
    assert worker.claim() is None
    with write_session(engine) as session:
        assert repository.cancel(session, running, utcnow()) is False  # it had ended


def test_a_clean_stop_gives_the_job_back_without_spending_an_attempt(engine, settings, rec):
    job_id = add(engine, "flaky", max_attempts=1)
    worker = runner(engine, settings, rec, "w1")

    def stopped(ctx: JobContext) -> Done:
        del rec.plan[1]  # the next run of attempt 1 completes
        worker.stop()
        ctx.heartbeat()  # raises Stopping
        raise AssertionError("unreachable")

    rec.plan[1] = stopped
    assert worker.run(worker.claim()) == "queued"
    back = job(engine, job_id)
    assert (back.state, back.attempts, back.worker, back.lease_until) == ("queued", 0, None, None)
    assert runner(engine, settings, rec, "w2").run_once() is True  # its one attempt is still there
    assert job(engine, job_id).state == "completed"


def test_a_failure_is_recorded_in_the_services_words(engine, settings, rec):
    said = add(engine, "flaky")
    unexpected = add(engine, "flaky")
    worker = runner(engine, settings, rec, "w1")
    rec.plan[1] = JobError("the study's catalogue is missing")
    assert worker.run(worker.claim()) == "failed"
    rec.plan[1] = RuntimeError("SELECT * FROM patient WHERE mrn = 'MRN-SECRET'")
    assert worker.run(worker.claim()) == "failed"
    assert job(engine, said).error == "the study's catalogue is missing"
    error = job(engine, unexpected).error
    assert "SELECT" not in error and "MRN-SECRET" not in error and "server log" in error
    assert [j for j, _ in rec.failed] == [said, unexpected]


def test_a_database_fault_runs_the_job_again_later_then_fails_it(engine, settings, rec):
    job_id = add(engine, "flaky", max_attempts=2)
    worker = runner(engine, settings, rec, "w1")
    rec.plan[1] = rec.plan[2] = DisconnectionError("connection lost")
    assert worker.run(worker.claim()) == "queued"
    later = job(engine, job_id)
    assert (later.state, later.attempts) == ("queued", 1) and later.not_before > utcnow()
    assert worker.claim() is None  # not due yet
    with write_session(engine) as session:
        session.execute(update(J).where(J.c.id == job_id).values(not_before=utcnow()))
        session.commit()
    assert worker.run(worker.claim()) == "failed"  # its last attempt
    assert job(engine, job_id).state == "failed" and rec.failed[0][0] == job_id


def test_ended_jobs_are_purged_after_the_retention(engine, settings, rec):
    old = add(engine)
    runner(engine, settings, rec, "w1").run_once()
    waiting = add(engine, "unknown-kind")
    with write_session(engine) as session:
        session.execute(update(J).where(J.c.id == old).values(finished_at=utcnow() - timedelta(days=30)))
        session.commit()
    runner(engine, settings, rec, "w1").maintain()
    assert job(engine, old) is None and job(engine, waiting) is not None


def test_the_runner_thread_runs_what_is_enqueued_and_stops(engine, settings, rec):
    worker = runner(engine, settings.model_copy(update={"export_poll_interval_s": 30.0}), rec, "w1").start()
    try:
        job_id = add(engine)
        worker.wake()  # no poll interval to wait for
        deadline = time.monotonic() + 30
        while job(engine, job_id).state != "completed":
            assert time.monotonic() < deadline, "the runner did not run the job"
            time.sleep(0.02)
    finally:
        worker.stop()
    assert not worker._thread.is_alive()


def test_the_lease_setting_keeps_its_former_name(monkeypatch):
    monkeypatch.setenv("TRIAL_FHIR_EXPORT_STALE_AFTER_S", "45")
    assert Settings(_env_file=None).job_lease_s == 45
    monkeypatch.setenv("TRIAL_FHIR_JOB_LEASE_S", "12")
    assert Settings(_env_file=None).job_lease_s == 12
    assert Settings(job_lease_s=7, _env_file=None).job_lease_s == 7


def test_a_heartbeat_as_long_as_the_lease_is_refused():
    from pydantic import ValidationError
    with pytest.raises(ValidationError, match="JOB_HEARTBEAT_S"):
        Settings(job_lease_s=2, job_heartbeat_s=2, _env_file=None)


@pytest.mark.parametrize("error, traceback", [(DisconnectionError("connection lost"), False),
                                              (RuntimeError("a bug"), True)])
def test_a_poll_the_database_did_not_answer_is_a_warning_a_bug_a_traceback(engine, settings, rec, monkeypatch,
                                                                           caplog, error, traceback):
    """The soak (bench/soak.py) saw a traceback at ERROR for every poll while PostgreSQL restarted: an expected,
    answered fault is one warning line; anything else keeps its traceback."""
    worker = runner(engine, settings.model_copy(update={"export_poll_interval_s": 30.0}), rec, "w1")
    polls: list[int] = []

    def run_once() -> bool:
        polls.append(1)
        if len(polls) > 1:
            worker._stop.set()
            return False
        raise error

    monkeypatch.setattr(worker, "run_once", run_once)
    monkeypatch.setattr(worker._wake, "wait", lambda timeout=None: True)  # no poll interval to wait for
    with caplog.at_level("WARNING", logger="trial_fhir"):
        worker._loop()
    [record] = [r for r in caplog.records if "polling" in r.getMessage() or "not answering" in r.getMessage()]
    assert (record.levelname, record.exc_info is not None) == (("ERROR", True) if traceback else ("WARNING", False))
