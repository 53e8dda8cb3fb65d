"""The hash chain: appended in the caller's transaction, gap-free under concurrent writers, and every change, removal
or insertion found by `verify`, on SQLite and PostgreSQL."""

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from service.audit import chain
from service.audit.events import build_event
from service.audit.log import commit_now
from service.db import make_engine, read_session, write_session
from tests.conftest import ON_POSTGRES

T0 = datetime(2024, 5, 1, tzinfo=UTC)


@pytest.fixture
def engine(database_url):
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def event(n: int = 0, **kw):
    args = {"subtype": "read", "outcome": 0, "client": f"client-{n % 3}", "patients": [f"p{n % 5}"],
            "resources": [f"Observation/o{n}/_history/1"], "recorded": T0 + timedelta(minutes=n)}
    return build_event(**{**args, **kw})


def rows(engine, sql: str, **params):
    with engine.connect() as conn:
        return conn.execute(text(sql), params).all()


def test_append_links_each_event_to_the_one_before(engine):
    records = [event(n) for n in range(5)]
    commit_now(engine, records[:2])
    commit_now(engine, records[2:])
    found = rows(engine, "SELECT seq, id, prev_hash, hash FROM audit_event ORDER BY seq")
    assert [r.seq for r in found] == [1, 2, 3, 4, 5]
    assert [r.id for r in found] == [r.id for r in records]
    assert found[0].prev_hash == chain.GENESIS
    assert all(b.prev_hash == a.hash for a, b in zip(found, found[1:], strict=False))
    assert found[0].hash == chain.link_hash(chain.GENESIS, 1, records[0].digest)
    stored = rows(engine, "SELECT content FROM resource WHERE resource_type = 'AuditEvent' AND id = :id",
                  id=records[0].id)
    assert stored[0].content == records[0].content
    linked = rows(engine, "SELECT resource_type, resource_id FROM audit_entity WHERE seq = 1 ORDER BY resource_type")
    assert [tuple(r) for r in linked] == [("Observation", "o0"), ("Patient", "p0")]
    result = chain.verify(engine)
    assert result.ok and result.count == 5 and str(result) == "audit chain intact: 5 events"
    assert (result.head_seq, result.head_hash) == (5, found[-1].hash)


def test_an_empty_chain_is_intact(engine):
    result = chain.verify(engine)
    assert result.ok and result.count == 0 and result.head_hash == chain.GENESIS


def test_a_rolled_back_transaction_leaves_no_event(engine):
    with write_session(engine) as session:
        chain.append(session, [event(1)])
        session.rollback()
    assert chain.verify(engine).count == 0
    commit_now(engine, [event(2)])
    assert [r.seq for r in rows(engine, "SELECT seq FROM audit_event")] == [1]
    assert chain.verify(engine).ok


@pytest.mark.skipif(ON_POSTGRES, reason="SQLite: only a write session holds the lock that orders the chain")
def test_append_refuses_a_session_without_the_write_lock(engine):
    with read_session(engine) as session, pytest.raises(ValueError, match="write_session"):
        chain.append(session, [event(1)])


def tampered(engine, sql: str, **params):
    with engine.begin() as conn:
        conn.execute(text(sql), params)
    return chain.verify(engine)


@pytest.fixture
def chained(engine):
    records = [event(n) for n in range(6)]
    commit_now(engine, records)
    return records


def test_a_changed_content_is_named(engine, chained):
    victim = chained[2]
    result = tampered(engine, "UPDATE resource SET content = replace(content, '\"R\"', '\"E\"') WHERE id = :id",
                      id=victim.id)
    assert not result.ok and (result.seq, result.id, result.problem) == (3, victim.id, "content changed")
    assert result.count == 2 and f"AuditEvent/{victim.id}" in str(result)


def test_a_changed_history_copy_is_named(engine, chained):
    victim = chained[1]
    result = tampered(engine, "UPDATE resource_version SET content = replace(content, '\"R\"', '\"E\"') "
                      "WHERE id = :id", id=victim.id)
    assert (result.seq, result.id, result.problem) == (2, victim.id, "content changed")


def test_a_changed_indexed_field_is_named(engine, chained):
    result = tampered(engine, "UPDATE audit_event SET client = 'someone-else' WHERE seq = 4")
    assert (result.seq, result.id, result.problem) == (4, chained[3].id, "content changed")


def test_a_changed_entity_row_is_named(engine, chained):
    result = tampered(engine, "UPDATE audit_entity SET resource_id = 'p99' WHERE seq = 5 AND resource_type = 'Patient'")
    assert (result.seq, result.problem) == (5, "content changed")


def test_a_removed_row_is_named(engine, chained):
    result = tampered(engine, "DELETE FROM audit_event WHERE seq = 3")
    assert not result.ok and (result.seq, result.problem) == (3, "row missing")
    assert chained[3].id in str(result)  # the row after the gap


def test_a_removed_first_row_is_named(engine, chained):
    result = tampered(engine, "DELETE FROM audit_event WHERE seq = 1")
    assert (result.seq, result.problem) == (1, "row missing")


def test_a_removed_resource_is_named(engine, chained):
    result = tampered(engine, "DELETE FROM resource WHERE id = :id", id=chained[4].id)
    assert (result.seq, result.id, result.problem) == (5, chained[4].id, "row missing")


def test_a_removed_and_renumbered_row_is_named(engine, chained):
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_entity WHERE seq = 3"))
        conn.execute(text("DELETE FROM audit_event WHERE seq = 3"))
        for seq in (4, 5, 6):
            conn.execute(text("UPDATE audit_entity SET seq = :new WHERE seq = :old"), {"new": seq - 1, "old": seq})
            conn.execute(text("UPDATE audit_event SET seq = :new WHERE seq = :old"), {"new": seq - 1, "old": seq})
    result = chain.verify(engine)
    assert (result.seq, result.id, result.problem) == (3, chained[3].id, "row inserted")


def test_an_inserted_row_is_named(engine, chained):
    """A well-forged row slipped in at seq 3 (the later ones moved up): its own link holds, the next one's doesn't."""
    forged = event(99)
    with engine.begin() as conn:
        for seq in (6, 5, 4, 3):
            conn.execute(text("UPDATE audit_entity SET seq = :new WHERE seq = :old"), {"new": seq + 1, "old": seq})
            conn.execute(text("UPDATE audit_event SET seq = :new WHERE seq = :old"), {"new": seq + 1, "old": seq})
        prev = conn.execute(text("SELECT hash FROM audit_event WHERE seq = 2")).scalar_one()
        conn.execute(text("INSERT INTO audit_event (seq, id, recorded, client, subtype, action, outcome, prev_hash, "
                          "hash) VALUES (3, :id, :recorded, :client, 'read', 'R', '0', :prev, :hash)"),
                     {"id": forged.id, "recorded": forged.recorded, "client": forged.client, "prev": prev,
                      "hash": chain.link_hash(prev, 3, forged.digest)})
        for rtype, rid in forged.entities:
            conn.execute(text("INSERT INTO audit_entity (seq, resource_type, resource_id, recorded) "
                              "VALUES (3, :t, :i, :recorded)"), {"t": rtype, "i": rid, "recorded": forged.recorded})
        for table, extra in (("resource", ("deleted", ":f")), ("resource_version", ("method", "'POST'"))):
            conn.execute(text(f"INSERT INTO {table} (resource_type, id, version_id, last_updated, content, {extra[0]}) "
                              f"VALUES ('AuditEvent', :id, 1, :recorded, :content, {extra[1]})"),
                         {"id": forged.id, "recorded": forged.recorded, "content": forged.content, "f": False})
    result = chain.verify(engine)
    assert (result.seq, result.id, result.problem) == (4, chained[2].id, "row inserted")
    assert result.count == 3  # the forged row itself passed


def test_an_event_outside_the_chain_is_named(engine, chained):
    stray = event(50)
    result = tampered(engine, "INSERT INTO resource (resource_type, id, version_id, last_updated, deleted, content) "
                      "VALUES ('AuditEvent', :id, 1, :recorded, :f, :content)",
                      id=stray.id, recorded=stray.recorded, f=False, content=stray.content)
    assert (result.id, result.problem) == (stray.id, "row inserted")


def test_an_update_of_an_event_is_named(engine, chained):
    victim = chained[0]
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO resource_version (resource_type, id, version_id, last_updated, method, content) "
                          "VALUES ('AuditEvent', :id, 2, :t, 'PUT', '{}')"), {"id": victim.id, "t": T0})
    result = chain.verify(engine)
    assert (result.seq, result.id, result.problem) == (1, victim.id, "content changed")


def test_verify_reports_progress_in_batches(engine):
    commit_now(engine, [event(n) for n in range(25)])
    seen = []
    result = chain.verify(engine, progress=lambda done, total: seen.append((done, total)), batch=10)
    assert result.ok and seen == [(10, 25), (20, 25), (25, 25)]


def test_concurrent_appends_make_one_gap_free_chain(engine):
    """Many writers at once (threads, each on its own pooled connection): one chain, no gap, no fork."""
    writers, each = 8, 10
    errors = []

    def write(w: int) -> None:
        try:
            for n in range(each):
                commit_now(engine, [event(w * 100 + n), event(w * 100 + n + 50)])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    result = chain.verify(engine)
    assert result.ok and result.count == writers * each * 2
    assert rows(engine, "SELECT min(seq), max(seq), count(*) FROM audit_event")[0] == (1, 160, 160)


def test_a_write_and_its_audit_event_commit_or_roll_back_together(engine):
    """How the write path uses it: the event appended last in the write's own transaction."""
    from service.core import resources
    from service.errors import Conflict
    from service.store.unit_of_work import UnitOfWork

    def write(fail: bool) -> str:
        with write_session(engine) as session:
            uow = UnitOfWork(session)
            stored = resources.create(uow, "Patient", {"resourceType": "Patient", "gender": "female"})
            uow.flush()
            chain.append(session, [build_event(subtype="create", outcome=0, client="ehr", patients=[stored.id],
                                               resources=[stored.location])])
            if fail:
                session.rollback()
                raise Conflict("a failure after the audit row was written")
            session.commit()
            return stored.id

    with pytest.raises(Conflict):
        write(fail=True)
    assert rows(engine, "SELECT count(*) FROM resource")[0][0] == 0
    patient = write(fail=False)
    assert [tuple(r) for r in rows(engine, "SELECT resource_type, resource_id FROM audit_entity ORDER BY 1")] == \
        [("Patient", patient)]
    assert chain.verify(engine).count == 1


def test_appends_in_writes_and_through_the_audit_log_share_one_chain(engine):
    from service.audit.log import AuditLog

    audit = AuditLog(engine)
    audit.start_sync()
    errors = []

    def writer(w: int) -> None:
        try:
            for n in range(10):
                if w % 2:
                    audit.submit([event(w * 100 + n)]).result()
                else:
                    with write_session(engine) as session:
                        chain.append(session, [event(w * 100 + n)])
                        if n % 3 == 0:
                            session.rollback()  # a failed write: its event goes with it
                        else:
                            session.commit()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    audit.stop_sync()
    assert not errors
    result = chain.verify(engine)
    assert result.ok and result.count == 3 * 10 + 3 * 6  # the rolled-back ones left nothing, and no gap


def test_a_recorded_head_finds_a_cut_or_a_rewritten_chain(engine, chained):
    head = chain.verify(engine)
    kept = (head.head_seq, head.head_hash)
    assert chain.verify(engine, head=kept).ok
    commit_now(engine, [event(10)])
    assert chain.verify(engine, head=kept).ok  # grown since: still holds the link
    with engine.begin() as conn:  # the last rows cut off, carefully: the chain alone can't tell
        for table in ("resource", "resource_version"):
            conn.execute(text(f"DELETE FROM {table} WHERE id IN (SELECT id FROM audit_event WHERE seq >= 6)"))
        conn.execute(text("DELETE FROM audit_entity WHERE seq >= 6"))
        conn.execute(text("DELETE FROM audit_event WHERE seq >= 6"))
    assert chain.verify(engine).ok
    cut = chain.verify(engine, head=kept)
    assert (cut.seq, cut.problem) == (6, "row missing") and "recorded head is seq 6" in str(cut)
    assert chain.verify(engine, head=(5, "0" * 64)).problem == "content changed"
