"""Group commit: many requests' events go in few transactions, each caller returns once its events are committed,
a failure reaches only the callers it concerns, and stop() writes whatever is queued."""

import asyncio
import threading

import pytest
from sqlalchemy import text

from service.audit import chain
from service.audit.events import build_event
from service.audit.log import AuditLog
from service.db import make_engine


@pytest.fixture
def engine(database_url):
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def event(n: int, **kw):
    return build_event(subtype="search-type", outcome=0, client=f"c{n}", patients=[f"p{n}"], **kw)


def committed_ids(engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT id FROM audit_event ORDER BY seq")).scalars())


def test_concurrent_commits_are_grouped_and_each_returns_once_committed(engine):
    async def main():
        audit = AuditLog(engine)
        await audit.start()
        batches = [[event(n), event(n + 1000)] for n in range(200)]

        async def one(records):
            await audit.commit(records)
            ids = committed_ids(engine)  # committed before commit() returned
            assert all(r.id in ids for r in records)

        await asyncio.gather(*(one(b) for b in batches))
        await audit.stop()
        return audit, batches

    audit, batches = asyncio.run(main())
    ids = committed_ids(engine)
    assert len(ids) == 400 and len(set(ids)) == 400  # each once
    for records in batches:  # a request's events stay together, in order
        first = ids.index(records[0].id)
        assert ids[first + 1] == records[1].id
    assert audit.transactions < 200  # grouped: fewer transactions than requests
    assert chain.verify(engine).ok


def test_stop_writes_what_is_queued(engine):
    audit = AuditLog(engine)
    audit.start_sync()
    futures = [audit.submit([event(n)]) for n in range(50)]
    audit.stop_sync()
    assert all(f.done() and f.exception() is None for f in futures)
    assert len(committed_ids(engine)) == 50
    with pytest.raises(RuntimeError):
        audit.submit([event(99)])


def test_commit_from_many_threads(engine):
    audit = AuditLog(engine)
    audit.start_sync()
    records = [event(n) for n in range(64)]
    threads = [threading.Thread(target=lambda r=r: audit.submit([r]).result()) for r in records]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    audit.stop_sync()
    assert sorted(committed_ids(engine)) == sorted(r.id for r in records)
    assert chain.verify(engine).count == 64


def test_a_failure_reaches_only_its_own_callers(engine):
    audit = AuditLog(engine)
    good = [event(n) for n in range(3)]
    bad = event(7)
    duplicate = event(8, id=bad.id)  # the same AuditEvent id twice: its insert fails
    # queued before the writer starts, so that they are tried together in one transaction first
    audit._pending = []
    audit._thread = threading.Thread()  # let submit() queue without a writer
    futures = [audit.submit([good[0]]), audit.submit([bad, duplicate]), audit.submit(good[1:])]
    audit._thread = None
    audit.start_sync()
    audit.stop_sync()
    assert futures[0].exception() is None and futures[2].exception() is None
    assert futures[1].exception() is not None
    assert sorted(committed_ids(engine)) == sorted(r.id for r in good)
    assert chain.verify(engine).ok


def test_nothing_to_commit_returns_at_once(engine):
    audit = AuditLog(engine)  # not even started
    asyncio.run(audit.commit([]))
    assert audit.submit([]).done()
