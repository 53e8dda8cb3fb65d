"""The core audits every interaction (service/core/interactions.py with service/audit): a write's AuditEvent is in
the write's own transaction (both or neither), reads and searches are committed before they answer, refusals and
failures are recorded with their outcome, and the chain stays intact under concurrent writers and readers. Both
databases."""

import asyncio
import base64

import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from service.audit.chain import verify
from service.auth.scopes import parse_scopes
from service.core import resources
from service.core.context import Caller, Context
from service.errors import Forbidden, NotFound, RuleViolation
from tests.factories import observation, patient, subject

BASE = "https://fhir.example.org/fhir"


def ctx(name: str = "portal", scopes: str | None = None, **extra) -> Context:
    caller = Caller(name, parse_scopes(scopes) if scopes else None)
    return Context(BASE, caller, request_id=f"req-{name}", client_address="10.0.0.7", **extra)


def run(coroutine):
    return asyncio.run(coroutine)


def events(core, **where) -> list[dict]:
    """The AuditEvents recorded, oldest first, optionally of one client (`agent`)."""
    with core.engine.connect() as conn:
        rows = conn.execute(text("SELECT r.content FROM resource r JOIN audit_event a ON a.id = r.id "
                                 "WHERE r.resource_type = 'AuditEvent' ORDER BY a.seq")).scalars().all()
    found = [orjson.loads(r) for r in rows]
    agent = where.get("agent")
    return [e for e in found if agent is None or e["agent"][0]["who"]["identifier"]["value"] == agent]


def whats(event: dict) -> set[str]:
    return {e["what"]["reference"] for e in event.get("entity", []) if "reference" in e.get("what", {})}


def test_a_write_carries_its_event_in_its_own_transaction(core, enrolled):
    made = run(core.create(ctx("ehr"), "Observation", observation(enrolled["patient"])))
    [event] = events(core, agent="ehr")
    assert event["subtype"][0]["code"] == "create" and event["action"] == "C" and event["outcome"] == "0"
    assert {f"Observation/{made.id}/_history/1", f"Patient/{enrolled['patient']}"} <= whats(event)
    client = event["agent"][0]
    assert client["network"] == {"address": "10.0.0.7", "type": "2"} and client["requestor"] is True
    assert any(e.get("what", {}).get("identifier", {}).get("value") == "req-ehr" for e in event["entity"])


def test_a_refused_write_stores_nothing_and_is_recorded_as_refused(core, enrolled):
    bad = observation(enrolled["patient"], value=500)  # EASI is 0–72
    with pytest.raises(RuleViolation):
        run(core.create(ctx("ehr"), "Observation", bad))
    [event] = events(core, agent="ehr")
    assert event["outcome"] == "4" and event["subtype"][0]["code"] == "create"
    assert "outcomeDesc" in event and "500" not in event["outcomeDesc"]  # no value of the request copied
    with core.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM measurement")).scalar() == 0
    with pytest.raises(Forbidden):
        run(core.create(ctx("reader", "system/Observation.rs"), "Observation", observation(enrolled["patient"])))
    [refused] = events(core, agent="reader")
    assert refused["outcome"] == "4"


def test_a_write_whose_event_cant_be_appended_is_rolled_back(core, enrolled, monkeypatch):
    def broken(session, records):
        raise RuntimeError("the audit table is gone")
    # SQLite appends through chain.append; PostgreSQL sends the append in the COMMIT's round trip: there, a statement
    # that fails in the database (division by zero) stands for the append
    monkeypatch.setattr(resources, "append", broken)
    monkeypatch.setattr(resources, "APPEND_SQL", "SELECT 1 / 0 WHERE %(events)s::jsonb IS NOT NULL")
    with pytest.raises((RuntimeError, DBAPIError)):
        run(core.create(ctx("ehr"), "Observation", observation(enrolled["patient"])))
    with core.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM resource WHERE resource_type = 'Observation'")).scalar() == 0


def test_a_failed_transaction_leaves_only_its_refusal(core, enrolled):
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": observation(enrolled["patient"]), "request": {"method": "POST", "url": "Observation"}},
        {"resource": observation(enrolled["patient"], value=-1), "request": {"method": "POST", "url": "Observation"}}]}
    with pytest.raises(RuleViolation):
        run(core.transaction(ctx("ehr"), bundle))
    assert [e["outcome"] for e in events(core, agent="ehr")] == ["4"]
    ok = {**bundle, "entry": bundle["entry"][:1] * 3}
    run(core.transaction(ctx("ehr"), ok))
    last = events(core, agent="ehr")[-1]
    assert last["subtype"][0]["code"] == "transaction" and last["outcome"] == "0"
    assert len([w for w in whats(last) if w.startswith("Observation/")]) == 3  # one event, every entry named


def test_reads_and_searches_are_committed_before_they_answer(core, enrolled):
    pid = enrolled["patient"]
    made = run(core.create(ctx("ehr"), "Observation", observation(pid)))
    run(core.read(ctx("portal"), "Observation", made.id))
    [read] = events(core, agent="portal")
    assert read["subtype"][0]["code"] == "read" and f"Patient/{pid}" in whats(read)

    other = run(core.create(ctx("admin"), "Patient", patient())).id
    run(core.create(ctx("admin"), "ResearchSubject", subject(enrolled["study"], other)))
    run(core.create(ctx("ehr"), "Observation", observation(other)))
    run(core.search(ctx("portal", query="code=EASI"), "Observation", [("code", "EASI")]))
    search = events(core, agent="portal")[-1]
    assert search["subtype"][0]["code"] == "search-type" and search["action"] == "E"
    assert {f"Patient/{pid}", f"Patient/{other}"} <= whats(search)  # every patient the page showed
    # "who saw this patient": the one event of a search that showed several patients is found by each of them
    for someone in (pid, other):
        saw = orjson.loads(run(core.search(ctx("officer"), "AuditEvent", [("patient", f"Patient/{someone}"),
                                                                          ("subtype", "search-type")])))
        assert search["id"] in {e["resource"]["id"] for e in saw["entry"]}
    query = next(e["query"] for e in search["entity"] if "query" in e)
    assert base64.b64decode(query) == b"code=EASI"  # the query as sent, base64 (BALP Query)
    with pytest.raises(NotFound):
        run(core.read(ctx("portal"), "Observation", "nope"))
    assert events(core, agent="portal")[-1]["outcome"] == "4"


def test_the_chain_holds_under_concurrent_writers_and_readers(core, enrolled):
    async def load() -> None:
        writes = [core.create(ctx(f"ehr-{i % 3}"), "Observation", observation(enrolled["patient"], value=i % 70))
                  for i in range(24)]
        reads = [core.search(ctx(f"portal-{i % 2}"), "Observation", [("subject", enrolled["patient"])])
                 for i in range(24)]
        await asyncio.gather(*writes, *reads)
        await core.stop()
    run(load())
    result = verify(core.engine)
    assert result.ok, result
    assert result.count == len(events(core)) >= 48 + 3
